package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// listenAddrs is a slog.Handler that passes on the address of the
// "tokenbroker listening" record (on addrs) and of the "http listening"
// record (on httpAddrs), so a test learns the ports Run chose for
// "127.0.0.1:0" without polling its log.
type listenAddrs struct {
	slog.Handler
	addrs, httpAddrs chan string
}

// Handle passes the address of a listening record on, then hands every
// record to the wrapped handler.
func (h listenAddrs) Handle(ctx context.Context, r slog.Record) error {
	var to chan string
	switch {
	case r.Message == "tokenbroker listening":
		to = h.addrs
	case strings.HasPrefix(r.Message, "http listening"):
		to = h.httpAddrs
	}
	if to != nil {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "addr" {
				to <- a.Value.String()
				return false
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

// TestAdminListenOnUnixSocket runs the whole product (Run) with
// admin.listen on a unix socket that an earlier run left behind: the
// AdminService, with health, answers there and only there, and the
// TokenBrokerService only on the main listener.
//
// It also checks that the gRPC and HTTP addresses Run bound are not the
// defaults: a test that inherited a default listen address would fail
// whenever `make run` holds it in another terminal.
func TestAdminListenOnUnixSocket(t *testing.T) {
	_, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	cfg.Admin.Listen = "unix:" + sock

	// A socket file left behind by a run that did not clean up.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	logs := listenAddrs{Handler: slog.NewJSONHandler(io.Discard, nil), addrs: make(chan string, 1), httpAddrs: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = Run(ctx, cfg, Keys{}, slog.New(logs), io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("Run: %v", runErr)
		}
	})
	var addr, httpAddr string
	for addr == "" || httpAddr == "" {
		select {
		case addr = <-logs.addrs:
		case httpAddr = <-logs.httpAddrs:
		case <-done:
			t.Fatal("Run returned before listening")
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not log its listening addresses")
		}
	}
	def := config.Default()
	for _, bound := range []struct{ name, got, def string }{
		{"listen", addr, def.Listen},
		{"http_listen", httpAddr, def.HTTPListen},
	} {
		if bound.got == bound.def {
			t.Errorf("%s: Run bound %s, the default address; a test must listen on port 0", bound.name, bound.got)
		}
	}

	dial := func(target string) *grpc.ClientConn {
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	main, admin := dial(addr), dial("unix:"+sock)
	call, cancelCall := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelCall()

	req := &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(main).GetToken(call, req); err != nil {
		t.Fatalf("GetToken on the main listener: %v", err)
	}
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(admin).GetToken(call, req); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetToken on the admin socket: got %v, want Unimplemented", err)
	}
	if _, err := tokenbrokerv1.NewAdminServiceClient(main).GetStats(call, &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetStats on the main listener: got %v, want Unimplemented", err)
	}

	adminClient := tokenbrokerv1.NewAdminServiceClient(admin)
	stats, err := adminClient.GetStats(call, &tokenbrokerv1.GetStatsRequest{})
	if err != nil || stats.GetMisses() != 1 || stats.GetEntries() != 1 {
		t.Fatalf("GetStats on the admin socket: got %v, %v; want 1 miss and 1 entry", stats, err)
	}
	inv, err := adminClient.InvalidateTokens(call, &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_All{All: true}})
	if err != nil || inv.GetInvalidated() != 1 {
		t.Errorf("InvalidateTokens on the admin socket: got %v, %v; want 1 invalidated", inv, err)
	}
	health, err := healthpb.NewHealthClient(admin).Check(call, &healthpb.HealthCheckRequest{})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health on the admin socket: got %v, %v; want SERVING", health, err)
	}
}
