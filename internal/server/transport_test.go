package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// startTCPServer serves cfg on a loopback TCP port (port 0) through Serve
// and returns a client connection; both end at cleanup.
func startTCPServer(t *testing.T, cfg Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(serveTCP(t, cfg), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: got error %v, want nil", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// serveTCP serves cfg on a loopback TCP port (port 0) through Serve until
// cleanup, and returns its address.
func serveTCP(t *testing.T, cfg Config) string {
	t.Helper()
	srv, err := New(configured(cfg))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	t.Cleanup(srv.Close)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &serving{done: make(chan error, 1)}
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	go func() { s.done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { s.stop(t) })
	return lis.Addr().String()
}

// TestMaxHeaderListSize: a call carrying 32 KiB of metadata is refused by
// the transport (its handler and interceptors never run), while an
// ordinary call, and one with a few KiB of metadata, pass.
func TestMaxHeaderListSize(t *testing.T) {
	var reached atomic.Int32
	cfg := Config{
		Broker: okBroker(broker.Token{TokenType: "Bearer", KeyID: "k1"}),
		UnaryInterceptors: []grpc.UnaryServerInterceptor{
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				reached.Add(1)
				return h(ctx, req)
			},
		},
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	client := tokenbrokerv1.NewTokenBrokerServiceClient(startTCPServer(t, cfg))
	req := &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "orders"}}}

	if _, err := client.GetToken(rpcContext(t), req); err != nil {
		t.Fatalf("ordinary call: got %v, want success", err)
	}
	small := metadata.AppendToOutgoingContext(rpcContext(t), "x-padding", strings.Repeat("a", 4<<10))
	if _, err := client.GetToken(small, req); err != nil {
		t.Fatalf("call with 4 KiB of metadata: got %v, want success", err)
	}
	before := reached.Load()
	big := metadata.AppendToOutgoingContext(rpcContext(t), "x-padding", strings.Repeat("a", 32<<10))
	_, err := client.GetToken(big, req)
	if code := status.Code(err); code == codes.OK || code == codes.DeadlineExceeded {
		t.Fatalf("call with 32 KiB of metadata: got %v, want it refused at once", err)
	}
	if got := reached.Load(); got != before {
		t.Errorf("interceptor calls after the oversized call: got %d, want %d (refused before it)", got, before)
	}
	// The connection stays usable.
	if _, err := client.GetToken(rpcContext(t), req); err != nil {
		t.Fatalf("call after the refused one: got %v, want success", err)
	}
}

// blockingBroker answers GetToken only when the call's context ends, with
// its error, as the broker does for a caller whose token does not come in
// time.
func blockingBroker() *stubBroker {
	return &stubBroker{getToken: func(ctx context.Context, _ broker.Request) (broker.Token, error) {
		<-ctx.Done()
		return broker.Token{}, ctx.Err()
	}}
}

// TestDeadlineExceededLoggedAndCounted: calls whose deadline passes while
// the broker waits are DeadlineExceeded in the access log and in the gRPC
// metrics, although the client's cancellation (RST_STREAM) usually reaches
// the server before the server's own copy of the deadline passes.
func TestDeadlineExceededLoggedAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, func() broker.Stats { return broker.Stats{} })
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.LogBuffer{}
	cfg := Config{
		Broker:             blockingBroker(),
		Logger:             slog.New(slog.NewJSONHandler(logs, nil)),
		UnaryInterceptors:  []grpc.UnaryServerInterceptor{m.GRPC().UnaryServerInterceptor()},
		StreamInterceptors: []grpc.StreamServerInterceptor{m.GRPC().StreamServerInterceptor()},
	}
	client := tokenbrokerv1.NewTokenBrokerServiceClient(startTCPServer(t, cfg))
	req := &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "orders"}}}

	const calls = 20
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			if _, err := client.GetToken(ctx, req); status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("client: got %v, want DeadlineExceeded", err)
			}
		})
	}
	wg.Wait()

	// The server logs each call when its handler returns, which may be
	// after the client gave up: wait for all of them.
	var records []map[string]any
	for wait := time.Now().Add(rpcTimeout); ; time.Sleep(10 * time.Millisecond) {
		records = logs.Records(t)
		if len(records) >= calls || time.Now().After(wait) {
			break
		}
	}
	if len(records) != calls {
		t.Fatalf("access log: got %d records, want %d", len(records), calls)
	}
	for _, r := range records {
		if r[logCode] != codes.DeadlineExceeded.String() {
			t.Errorf("access log record: got %s %v, want DeadlineExceeded", logCode, r[logCode])
		}
	}
	want := fmt.Sprintf(`
# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="DeadlineExceeded",grpc_method="GetToken",grpc_service="tokenbroker.v1.TokenBrokerService",grpc_type="unary"} %d
`, calls)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "grpc_server_handled_total"); err != nil {
		t.Errorf("metrics: %v", err)
	}
}

// TestDeadlineCode: a Canceled result counts as DeadlineExceeded when the
// call's deadline has passed or is within deadlineSlack, and stays
// Canceled when the caller gave up well before its deadline or had none.
func TestDeadlineCode(t *testing.T) {
	canceled := status.Error(codes.Canceled, "context canceled")
	soon, cancelSoon := context.WithDeadline(context.Background(), time.Now().Add(deadlineSlack/2))
	cancelSoon()
	later, cancelLater := context.WithTimeout(context.Background(), time.Hour)
	cancelLater()
	none, cancelNone := context.WithCancel(context.Background())
	cancelNone()
	passed, cancelPassed := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelPassed()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want codes.Code
	}{
		{"cancelled just before the deadline", soon, canceled, codes.DeadlineExceeded},
		{"deadline passed", passed, canceled, codes.DeadlineExceeded},
		{"cancelled long before the deadline", later, canceled, codes.Canceled},
		{"cancelled without a deadline", none, canceled, codes.Canceled},
		{"other codes untouched", soon, status.Error(codes.Unavailable, "x"), codes.Unavailable},
		{"success untouched", soon, nil, codes.OK},
	}
	for _, tc := range tests {
		if got := status.Code(deadlineCode(tc.ctx, tc.err)); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestAccessLogCause: a call failed by the token endpoint carries, on its
// access-log line, the same non-secret cause as the HTTP endpoint's line
// (the broker's error text: provider, OAuth code, status, scrubbed
// description), on GetToken and WatchToken alike; calls that succeed or
// fail by the caller's own mistake carry none.
func TestAccessLogCause(t *testing.T) {
	upstreamErr := fmt.Errorf("fetch: %w", &upstream.Error{
		Provider: "cognito", Kind: upstream.ErrUnavailable, Code: "server_error", Status: 503, Description: "down for maintenance",
	})
	const wantCause = `fetch: provider "cognito": server_error (503): down for maintenance`
	fail := true
	var mu sync.Mutex
	logs := &testkit.LogBuffer{}
	b := &stubBroker{
		getToken: func(context.Context, broker.Request) (broker.Token, error) {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return broker.Token{}, upstreamErr
			}
			return broker.Token{TokenType: "Bearer", KeyID: "k1"}, nil
		},
		watch: func(context.Context, broker.Request) (Subscription, error) { return nil, upstreamErr },
	}
	conn := startTCPServer(t, Config{Broker: b, Logger: slog.New(slog.NewJSONHandler(logs, nil)), LogSuccesses: true})
	client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	sel := &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "orders"}}

	if _, err := client.GetToken(rpcContext(t), &tokenbrokerv1.GetTokenRequest{Selector: sel}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetToken: got %v, want Unavailable", err)
	}
	stream, err := client.WatchToken(rpcContext(t), &tokenbrokerv1.WatchTokenRequest{Selector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("WatchToken: got %v, want Unavailable", err)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	if _, err := client.GetToken(rpcContext(t), &tokenbrokerv1.GetTokenRequest{Selector: sel}); err != nil {
		t.Fatalf("GetToken: got %v, want success", err)
	}
	if _, err := client.GetToken(rpcContext(t), &tokenbrokerv1.GetTokenRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetToken without selector: got %v, want InvalidArgument", err)
	}

	// The stream's record is written when its handler returns, which
	// may come after the client saw the status.
	var records []map[string]any
	for wait := time.Now().Add(rpcTimeout); ; time.Sleep(10 * time.Millisecond) {
		if records = logs.Records(t); len(records) >= 4 || time.Now().After(wait) {
			break
		}
	}
	want := map[string]any{
		"GetToken/Unavailable":     wantCause,
		"WatchToken/Unavailable":   wantCause,
		"GetToken/OK":              nil,
		"GetToken/InvalidArgument": nil,
	}
	if len(records) != len(want) {
		t.Fatalf("access log: got %d records, want %d", len(records), len(want))
	}
	for _, r := range records {
		k := fmt.Sprint(r[logMethod], "/", r[logCode])
		w, ok := want[k]
		if !ok {
			t.Errorf("unexpected record %v", r)
			continue
		}
		if got := r[logCause]; got != w {
			t.Errorf("%s: got cause %v, want %v", k, got, w)
		}
	}
}

// TestAccessLogSuccessesAtDebug: by default (log.access: failures) a
// successful call's line is at debug, so a logger at info writes lines
// only for failed calls; with LogSuccesses (log.access: all) every call
// has its line at info. Over real gRPC on loopback.
func TestAccessLogSuccessesAtDebug(t *testing.T) {
	b := &stubBroker{
		getToken: func(context.Context, broker.Request) (broker.Token, error) {
			return broker.Token{TokenType: "Bearer", KeyID: "k1"}, nil
		},
	}
	sel := &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "orders"}}
	for _, tc := range []struct {
		name      string
		successes bool
		level     slog.Level
		want      []string // method/code of the records, in order
	}{
		{"failures at info", false, slog.LevelInfo, []string{"GetToken/InvalidArgument"}},
		{"failures at debug", false, slog.LevelDebug, []string{"GetToken/OK", "GetToken/InvalidArgument"}},
		{"all at info", true, slog.LevelInfo, []string{"GetToken/OK", "GetToken/InvalidArgument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &testkit.LogBuffer{}
			l := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: tc.level}))
			conn := startTCPServer(t, Config{Broker: b, Logger: l, LogSuccesses: tc.successes})
			client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
			if _, err := client.GetToken(rpcContext(t), &tokenbrokerv1.GetTokenRequest{Selector: sel}); err != nil {
				t.Fatalf("GetToken: %v", err)
			}
			if _, err := client.GetToken(rpcContext(t), &tokenbrokerv1.GetTokenRequest{}); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("GetToken without selector: got %v, want InvalidArgument", err)
			}
			var got []string
			for _, r := range logs.Records(t) {
				if r["msg"] == logFinished {
					got = append(got, fmt.Sprint(r[logMethod], "/", r[logCode]))
					if r[logCode] == "OK" && r["level"] != map[bool]string{true: "INFO", false: "DEBUG"}[tc.successes] {
						t.Errorf("success logged at %v", r["level"])
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("access-log records: got %v, want %v", got, tc.want)
			}
		})
	}
}
