package server

import (
	"context"
	"errors"
	"math"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const serviceName = "tokenbroker.v1.TokenBrokerService"

func TestNewRejectsBadConfig(t *testing.T) {
	b := okBroker(broker.Token{})
	for _, tt := range []struct {
		name      string
		cfg       Config
		expectErr string
	}{
		{"no broker", Config{}, "Broker is required"},
		{"negative keepalive", Config{Broker: b, KeepaliveMinTime: -time.Second}, "server: Config.KeepaliveMinTime is -1s, want at least 0 (0: no minimum) (configuration server.keepalive_min_time)"},
		{"negative shutdown timeout", Config{Broker: b, ShutdownTimeout: -time.Second}, "server: Config.ShutdownTimeout is -1s, want more than 0"},
		{"negative max connection age", Config{Broker: b, MaxConnectionAge: -time.Second}, "server: Config.MaxConnectionAge is -1s, want more than 0"},
		{"negative max connection age grace", Config{Broker: b, MaxConnectionAgeGrace: -time.Second}, "server: Config.MaxConnectionAgeGrace is -1s, want more than 0"},
		{"negative max watches", Config{Broker: b, MaxWatchesPerCaller: -1}, "server: Config.MaxWatchesPerCaller is -1, want at least 1"},
		{"negative open burst", Config{Broker: b, WatchOpenBurst: -1}, "server: Config.WatchOpenBurst is -1, want at least 1"},
		{"negative open rate", Config{Broker: b, WatchOpensPerSecond: -1}, "server: Config.WatchOpensPerSecond is -1, want a finite number more than 0"},
		{"NaN open rate", Config{Broker: b, WatchOpensPerSecond: math.NaN()}, "server: Config.WatchOpensPerSecond is NaN, want a finite number more than 0"},
		{"infinite open rate", Config{Broker: b, WatchOpensPerSecond: math.Inf(1)}, "server: Config.WatchOpensPerSecond is +Inf, want a finite number more than 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(configured(tt.cfg))
			if err == nil || !strings.Contains(err.Error(), tt.expectErr) {
				t.Fatalf("New: got error %v, want one containing %q", err, tt.expectErr)
			}
		})
	}
}

// TestNewRefusesZeroValues: the defaults live in the configuration only,
// so a limit left zero is an error naming the field, the rule and the
// configuration key, not a silent default.
func TestNewRefusesZeroValues(t *testing.T) {
	for _, tt := range []struct {
		name      string
		zero      func(*Config)
		expectErr string
	}{
		{"MaxConcurrentStreams", func(c *Config) { c.MaxConcurrentStreams = 0 }, "server: Config.MaxConcurrentStreams is 0, want at least 1 (configuration server.max_concurrent_streams)"},
		{"ShutdownTimeout", func(c *Config) { c.ShutdownTimeout = 0 }, "server: Config.ShutdownTimeout is 0s, want more than 0 (configuration server.shutdown_timeout)"},
		{"MaxConnectionAge", func(c *Config) { c.MaxConnectionAge = 0 }, "server: Config.MaxConnectionAge is 0s, want more than 0 (configuration server.max_connection_age)"},
		{"MaxConnectionAgeGrace", func(c *Config) { c.MaxConnectionAgeGrace = 0 }, "server: Config.MaxConnectionAgeGrace is 0s, want more than 0 (configuration server.max_connection_age_grace)"},
		{"MaxWatchesPerCaller", func(c *Config) { c.MaxWatchesPerCaller = 0 }, "server: Config.MaxWatchesPerCaller is 0, want at least 1 (configuration server.max_watches_per_caller)"},
		{"WatchOpensPerSecond", func(c *Config) { c.WatchOpensPerSecond = 0 }, "server: Config.WatchOpensPerSecond is 0, want a finite number more than 0 (configuration server.watch_opens_per_second)"},
		{"WatchOpenBurst", func(c *Config) { c.WatchOpenBurst = 0 }, "server: Config.WatchOpenBurst is 0, want at least 1 (configuration server.watch_open_burst)"},
		{"MaxHeaderListSize", func(c *Config) { c.MaxHeaderListSize = 0 }, "server: Config.MaxHeaderListSize is 0, want at least 1 (configuration server.max_header_list_size)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := configured(Config{Broker: okBroker(broker.Token{})})
			tt.zero(&cfg)
			srv, err := New(cfg)
			if err == nil || err.Error() != tt.expectErr {
				t.Fatalf("New: got error %v, want %q", err, tt.expectErr)
			}
			if srv != nil {
				t.Fatalf("New: got a server with error %v, want none", err)
			}
		})
	}
}

// TestPanicIsInternal checks that a panicking broker gives the caller a
// bare Internal status, is logged without its value, and that the server
// keeps serving.
func TestPanicIsInternal(t *testing.T) {
	var calls atomic.Int32
	ts := startServer(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		if calls.Add(1) == 1 {
			panic("boom with " + leakyText)
		}
		return broker.Token{AccessToken: "tok", KeyID: "k2"}, nil
	}}})

	_, err := ts.client.GetToken(rpcContext(t), heldReq())
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("first call: got %v %q, want Internal %q", st.Code(), st.Message(), "internal error")
	}
	resp, err := ts.client.GetToken(rpcContext(t), heldReq())
	if err != nil || resp.GetToken().GetKeyId() != "k2" {
		t.Fatalf("second call: got %v, %v; want key id k2 and no error", resp, err)
	}

	logs := ts.logs.String()
	if strings.Contains(logs, "hunter2") {
		t.Errorf("logs contain the panic value:\n%s", logs)
	}
	var found, finished bool
	for _, rec := range ts.logs.Records(t) {
		if rec["msg"] == "finished call" && rec["grpc.code"] == "Internal" {
			finished = true
			if rec["level"] != "ERROR" {
				t.Errorf("finished call of the panicking call: level %v, want ERROR", rec["level"])
			}
		}
		if rec["msg"] == "panic in grpc handler" {
			found = true
			if rec["panic_type"] != "string" {
				t.Errorf("panic_type: got %v, want string", rec["panic_type"])
			}
			if s, _ := rec["stack"].(string); !strings.Contains(s, "TestPanicIsInternal") {
				t.Errorf("stack: got %q, want one naming the panicking function", s)
			}
		}
	}
	if !found {
		t.Errorf("no panic log record in:\n%s", logs)
	}
	if !finished {
		t.Errorf("no finished call record with code Internal in:\n%s", logs)
	}
}

// TestCallLog checks the per-call log line: method, code, duration and key
// id, and never the payload, the secret, the token or an error text.
func TestCallLog(t *testing.T) {
	const (
		accessToken  = "at-VERY-SECRET-TOKEN"
		clientSecret = "cs-VERY-SECRET-VALUE"
	)
	var fail atomic.Bool
	ts := startServer(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		if fail.Load() {
			return broker.Token{}, &fakeUpstreamError{kind: upstream.ErrInvalidClient, text: "bad secret " + clientSecret}
		}
		return broker.Token{AccessToken: accessToken, KeyID: "k-77"}, nil
	}}})

	req := passReq()
	req.Selector.GetClientCredentials().ClientSecret = clientSecret
	resp, err := ts.client.GetToken(rpcContext(t), req)
	if err != nil || resp.GetToken().GetAccessToken() != accessToken {
		t.Fatalf("GetToken: got %v, %v; want the token", resp, err)
	}
	fail.Store(true)
	if _, err := ts.client.GetToken(rpcContext(t), req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetToken: got %v, want Unauthenticated", err)
	}

	logs := ts.logs.String()
	for _, s := range []string{accessToken, clientSecret, "cognito", "abc123"} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	var calls []map[string]any
	for _, rec := range ts.logs.Records(t) {
		if rec["msg"] == "finished call" {
			calls = append(calls, rec)
		}
	}
	if len(calls) != 2 {
		t.Fatalf("finished call records: got %d, want 2:\n%s", len(calls), logs)
	}
	for i, want := range []map[string]any{
		{"grpc.service": serviceName, "grpc.method": "GetToken", "grpc.code": "OK", "key_id": "k-77"},
		{"grpc.service": serviceName, "grpc.method": "GetToken", "grpc.code": "Unauthenticated"},
	} {
		rec := calls[i]
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("call %d field %s: got %v, want %v", i, k, rec[k], v)
			}
		}
		if ms, ok := rec["grpc.time_ms"].(float64); !ok || ms < 0 {
			t.Errorf("call %d: grpc.time_ms is %v, want a number of milliseconds, in %v", i, rec["grpc.time_ms"], rec)
		}
		var keys []string
		for k := range rec {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			switch k {
			case "time", "level", "msg", "grpc.service", "grpc.method", "grpc.code", "grpc.time_ms", "key_id":
			default:
				t.Errorf("call %d: unexpected log field %q (fields %v)", i, k, keys)
			}
		}
	}
}

func TestHealth(t *testing.T) {
	ts := startServer(t, Config{Broker: okBroker(broker.Token{})})
	hc := healthpb.NewHealthClient(ts.conn)
	for _, svc := range []string{"", serviceName} {
		resp, err := hc.Check(rpcContext(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q): got %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

func TestReflection(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(map[bool]string{true: "enabled", false: "disabled"}[enabled], func(t *testing.T) {
			ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Reflection: enabled})
			stream, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(rpcContext(t))
			if err != nil {
				t.Fatalf("ServerReflectionInfo: got error %v, want nil", err)
			}
			if err := stream.Send(&reflectionpb.ServerReflectionRequest{
				MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
			}); err != nil {
				t.Fatalf("Send: got error %v, want nil", err)
			}
			resp, err := stream.Recv()
			if !enabled {
				if status.Code(err) != codes.Unimplemented {
					t.Fatalf("Recv: got %v, want Unimplemented", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Recv: got error %v, want nil", err)
			}
			_ = stream.CloseSend()
			var names []string
			for _, s := range resp.GetListServicesResponse().GetService() {
				names = append(names, s.GetName())
			}
			if !slices.Contains(names, serviceName) {
				t.Errorf("services: got %v, want %s among them", names, serviceName)
			}
		})
	}
}

// TestServeShutdown checks that cancelling Serve's context turns health
// NOT_SERVING and that Serve then returns nil.
func TestServeShutdown(t *testing.T) {
	ts := startServer(t, Config{Broker: okBroker(broker.Token{})})
	watchCtx, cancelWatch := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancelWatch()
	watch, err := healthpb.NewHealthClient(ts.conn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: serviceName})
	if err != nil {
		t.Fatalf("Watch: got error %v, want nil", err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch status: got %v, %v; want SERVING", resp.GetStatus(), err)
	}

	ts.cancel()
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch status after shutdown: got %v, %v; want NOT_SERVING", resp.GetStatus(), err)
	}
	// The watch never ends by itself; ending it lets GracefulStop finish.
	cancelWatch()
	ts.stop(t)

	if _, err := ts.client.GetToken(rpcContext(t), heldReq()); status.Code(err) != codes.Unavailable {
		t.Errorf("GetToken after shutdown: got %v, want Unavailable", err)
	}
}

// TestServeWaitsForCalls checks that a call in progress at shutdown
// completes.
func TestServeWaitsForCalls(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	ts := startServer(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		close(entered)
		<-release
		return broker.Token{AccessToken: "tok", KeyID: "k3"}, nil
	}}})

	type result struct {
		resp *tokenbrokerv1.GetTokenResponse
		err  error
	}
	got := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		resp, err := ts.client.GetToken(ctx, heldReq())
		got <- result{resp, err}
	}()
	waitFor(t, entered, "the call to reach the broker")
	ts.cancel()
	close(release)
	select {
	case r := <-got:
		if r.err != nil || r.resp.GetToken().GetKeyId() != "k3" {
			t.Fatalf("call in progress at shutdown: got %v, %v; want key id k3", r.resp, r.err)
		}
	case <-time.After(rpcTimeout):
		t.Fatal("call in progress at shutdown did not finish")
	}
	ts.stop(t)
}

// TestServeStopsStuckCalls checks that ShutdownTimeout bounds the graceful
// part: a call that does not finish is cut off and Serve still returns nil.
func TestServeStopsStuckCalls(t *testing.T) {
	entered := make(chan struct{})
	ts := startServer(t, Config{
		ShutdownTimeout: 50 * time.Millisecond,
		Broker: &stubBroker{getToken: func(ctx context.Context, _ broker.Request) (broker.Token, error) {
			close(entered)
			<-ctx.Done() // only Stop ends this call
			return broker.Token{}, ctx.Err()
		}},
	})
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		_, err := ts.client.GetToken(ctx, heldReq())
		got <- err
	}()
	waitFor(t, entered, "the call to reach the broker")
	ts.stop(t)
	select {
	case err := <-got:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("stuck call: got %v, want Unavailable", err)
		}
	case <-time.After(rpcTimeout):
		t.Fatal("stuck call did not end")
	}
}

// TestServeListenerFailure checks that Serve reports a listener that fails.
func TestServeListenerFailure(t *testing.T) {
	srv, err := New(configured(Config{Broker: okBroker(broker.Token{})}))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	t.Cleanup(srv.Close)
	l := &failingListener{err: errors.New("accept exploded")}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "accept exploded") {
			t.Fatalf("Serve: got %v, want the listener's error", err)
		}
	case <-time.After(rpcTimeout):
		t.Fatal("Serve did not return after its listener failed")
	}
}

// failingListener fails every Accept.
type failingListener struct{ err error }

func (l *failingListener) Accept() (net.Conn, error) { return nil, l.err }
func (l *failingListener) Close() error              { return nil }
func (l *failingListener) Addr() net.Addr            { return &net.TCPAddr{} }

// waitFor waits for ch to close, failing the test after rpcTimeout.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(rpcTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}
