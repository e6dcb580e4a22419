package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

const (
	heldID     = "held-client"
	heldSecret = "held-secret-value"
	passID     = "pass-client"
	passSecret = "pass-secret-value"
)

// stack is the whole product over real sockets: a devissuer token endpoint
// over HTTP and the broker's gRPC server on loopback TCP.
type stack struct {
	issuer *devissuer.Issuer
	client tokenbrokerv1.TokenBrokerServiceClient
}

func startStack(t *testing.T) *stack {
	t.Helper()
	issuer, err := devissuer.New(devissuer.Config{Lifetime: time.Hour, Clients: []devissuer.Client{
		{ID: heldID, Secret: heldSecret, Scopes: []string{"api/read", "api/write"}},
		{ID: passID, Secret: passSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(issuer.Handler())
	t.Cleanup(hs.Close)

	cfg := config.Default()
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", hs.URL+devissuer.TokenPath, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: "held", Provider: "test", ClientID: heldID, Secret: secret.String(heldSecret)}}
	cfg.Passthrough = true
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	a, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &stack{issuer: issuer, client: tokenbrokerv1.NewTokenBrokerServiceClient(conn)}
}

func heldSelector(scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: scopes}
}

func passSelector(sec string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
		ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: passID, ClientSecret: sec},
	}, Scopes: scopes}
}

// TestThousandConcurrentCallersOneUpstreamRequest: 1,000 concurrent
// GetToken calls for one cold key, with scopes in varying order, cause
// exactly one request at the real token endpoint and all get its token.
func TestThousandConcurrentCallersOneUpstreamRequest(t *testing.T) {
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 1000
	tokens := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			scopes := []string{"api/read", "api/write"}
			if i%2 == 1 {
				scopes = []string{"api/write", "api/read", "api/write"}
			}
			resp, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector(scopes...)})
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			tokens[i] = resp.GetToken().GetAccessToken()
		})
	}
	close(start)
	wg.Wait()
	if got := s.issuer.Requests(); got != 1 {
		t.Errorf("got %d upstream requests, want 1", got)
	}
	for i, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("call %d got a different token than call 0", i)
		}
	}
}

// TestWrongSecretNeverGetsTheCachedToken: the secret is part of the key, so
// a caller with a wrong secret asks the endpoint itself and is refused.
func TestWrongSecretNeverGetsTheCachedToken(t *testing.T) {
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		resp, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector("wrong-"+passSecret, "api/read")})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("wrong secret: got %v, %v; want Unauthenticated", resp, err)
		}
		if resp.GetToken().GetAccessToken() == good.GetToken().GetAccessToken() {
			t.Fatal("wrong secret got the cached token")
		}
	}
	// The right secret is still served from the cache; the wrong one's
	// rejection is remembered for negative_ttl (one upstream request).
	again, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil || again.GetToken().GetAccessToken() != good.GetToken().GetAccessToken() {
		t.Errorf("right secret again: got %v, %v; want the cached token", again, err)
	}
	if got := s.issuer.Requests(); got != 2 {
		t.Errorf("got %d upstream requests, want 2", got)
	}
	// A broker-held client with a revoked secret is the operator's problem,
	// not the caller's: FailedPrecondition.
	s2 := startStack(t)
	s2.issuer.AddClient(devissuer.Client{ID: heldID, Secret: "rotated", Scopes: []string{"api/read"}})
	if _, err := s2.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("broker-held invalid_client: got %v, want FailedPrecondition", err)
	}
}
