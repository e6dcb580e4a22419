package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// TestHTTPListener: an unmodified golang.org/x/oauth2 client gets its
// token from the broker's drop-in endpoint with only the token URL
// changed, sharing the key (and the one upstream request) with gRPC
// callers; /metrics shows the broker's and the RPCs' metrics without a
// secret or a token; /healthz and /readyz answer.
func TestHTTPListener(t *testing.T) {
	issuer, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	oc := clientcredentials.Config{
		ClientID:     passID,
		ClientSecret: passSecret,
		TokenURL:     "http://" + httpAddr + "/oauth2/token",
		Scopes:       []string{"api/read"},
	}
	first, err := oc.Token(ctx)
	if err != nil {
		t.Fatalf("x/oauth2 through the broker: %v", err)
	}
	again, err := oc.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{issuer: issuer, addr: addr}
	resp, err := s.dial(t).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil {
		t.Fatal(err)
	}
	if again.AccessToken != first.AccessToken || resp.GetToken().GetAccessToken() != first.AccessToken {
		t.Error("the HTTP endpoint and GetToken did not share one cached token")
	}
	if got := issuer.Requests(); got != 1 {
		t.Errorf("got %d upstream requests, want 1", got)
	}
	if left := time.Until(first.Expiry); left > time.Hour || left < 59*time.Minute {
		t.Errorf("token expires in %v, want about an hour", left)
	}

	get := func(path string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+path, nil)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d", code)
	}
	for _, want := range []string{
		"tokenbroker_cache_hits_total 2",
		`tokenbroker_upstream_requests_total{outcome="ok",provider="test"} 1`,
		`tokenbroker_upstream_request_duration_seconds_count{outcome="ok",provider="test"} 1`,
		"tokenbroker_served_token_remaining_seconds_count 3",
		`tokenbroker_shared_state{state="disabled"} 1`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetToken",grpc_service="tokenbroker.v1.TokenBrokerService",grpc_type="unary"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, secret := range []string{passSecret, first.AccessToken, passID} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics shows a secret, token or client id")
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("%s: status %d, want 200", path, code)
		}
	}
}

// TestHTTPListenerAppliesPolicy: a policy that grants pass-through to no
// identity an HTTP caller can have refuses it with 403 access_denied,
// before any upstream request.
func TestHTTPListenerAppliesPolicy(t *testing.T) {
	issuer, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Policy = []config.PolicyRule{{Identity: "spiffe://prod/ns/payments/sa/worker", Passthrough: true, Scopes: []string{"*"}}}
	_, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oc := clientcredentials.Config{ClientID: passID, ClientSecret: passSecret, TokenURL: "http://" + httpAddr + "/oauth2/token"}
	_, err := oc.Token(ctx)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response.StatusCode != http.StatusForbidden || re.ErrorCode != "access_denied" {
		t.Fatalf("got %v, want 403 access_denied", err)
	}
	if got := issuer.Requests(); got != 0 {
		t.Errorf("got %d upstream requests, want 0", got)
	}
}

// TestMetricsOptionalLabels: metrics.client_id_label and key_id_label add
// the fetch's client id and key id to the upstream histogram on /metrics.
func TestMetricsOptionalLabels(t *testing.T) {
	_, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Metrics.ClientIDLabel, cfg.Metrics.KeyIDLabel = true, true
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := (&stack{addr: addr}).dial(t).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	body, _ := io.ReadAll(r.Body)
	want := fmt.Sprintf(`tokenbroker_upstream_request_duration_seconds_count{client_id=%q,key_id=%q,outcome="ok",provider="test"} 1`, heldID, resp.GetToken().GetKeyId())
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}
