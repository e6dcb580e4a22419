package tokensource

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// TestServiceAccountToken: every call over real gRPC carries the file's
// token; after the kubelet-style swap (rename over the file) the next call
// carries the new one; without transport security the credentials refuse
// unless allowed.
func TestServiceAccountToken(t *testing.T) {
	seen := make(chan string, 10)
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		seen <- strings.Join(metadata.ValueFromIncomingContext(ctx, "authorization"), ",")
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()

	dir := t.TempDir()
	path := filepath.Join(dir, "tokenbroker")
	write := func(tok string) {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("eyJfirst.a.b")
	sa, err := NewServiceAccountToken(path, true)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(sa))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func() string {
		t.Helper()
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		return <-seen
	}
	if got := call(); got != "Bearer eyJfirst.a.b" {
		t.Fatalf("first call: authorization %q, want the file's token", got)
	}
	write("eyJsecond-rotated.a.b")
	if got := call(); got != "Bearer eyJsecond-rotated.a.b" {
		t.Fatalf("after rotation: authorization %q, want the new token", got)
	}
	// A vanished file keeps the token held.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := call(); got != "Bearer eyJsecond-rotated.a.b" {
		t.Fatalf("file removed: authorization %q, want the held token", got)
	}

	// Without WithInsecure-like permission, plaintext is refused by gRPC.
	write("eyJthird.a.b")
	strict, err := NewServiceAccountToken(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strict.RequireTransportSecurity() {
		t.Fatal("RequireTransportSecurity() = false by default")
	}
	if _, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(strict)); err == nil {
		t.Error("grpc.NewClient with plaintext and credentials requiring security: nil error")
	}

	// Errors name the file, never its content.
	if _, err := NewServiceAccountToken(filepath.Join(dir, "missing"), true); err == nil {
		t.Error("missing file: nil error")
	}
	if err := os.WriteFile(path, []byte("eyJsecret part\nmore"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServiceAccountToken(path, true); err == nil || strings.Contains(err.Error(), "eyJsecret") {
		t.Errorf("two-line file: %v, want an error without the content", err)
	}
}
