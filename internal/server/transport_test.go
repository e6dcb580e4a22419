package server

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// startTCPServer serves cfg on a loopback TCP port (port 0) through Serve
// and returns a client connection; both end at cleanup.
func startTCPServer(t *testing.T, cfg Config) *grpc.ClientConn {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &serving{done: make(chan error, 1)}
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	go func() { s.done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { s.stop(t) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: got error %v, want nil", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
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
