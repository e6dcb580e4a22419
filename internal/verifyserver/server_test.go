package verifyserver

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// env is a dev issuer, a verifier for it, and a gRPC server with the
// verify services on loopback.
type env struct {
	issuerURL string
	verify    tokenbrokerv1.TokenVerifierServiceClient
	authz     authv3.AuthorizationClient
}

const (
	clientID = "orders-client"
	secret   = "orders-secret"
)

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	is, err := devissuer.New(devissuer.Config{Clients: []devissuer.Client{{ID: clientID, Secret: secret, Scopes: []string{"orders/read", "orders/write"}}}})
	if err != nil {
		t.Fatal(err)
	}
	il, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	issuerDone := make(chan error, 1)
	go func() { issuerDone <- is.Serve(ctx, il) }()
	issuerURL := "http://" + il.Addr().String()

	// Every setting is the configuration's default (its one home).
	vd, timeout := config.Default().Verifier, time.Duration(config.DefaultProvider().Timeout)
	v, err := verifier.New(verifier.Config{
		Providers: []verifier.Provider{
			{Name: "dev", Issuer: issuerURL, Timeout: timeout},
			{Name: "down", Issuer: "http://127.0.0.1:1/down", JWKSURI: "http://127.0.0.1:1/jwks", Timeout: timeout},
		},
		CacheMaxCost:          int64(vd.CacheMaxCost),
		MaxTokenSize:          int(vd.MaxTokenSize),
		RefreshInterval:       time.Duration(vd.JWKSRefreshInterval),
		MinRefreshInterval:    time.Duration(vd.JWKSMinRefreshInterval),
		IntrospectionCacheTTL: time.Duration(vd.IntrospectionCacheTTL),
		ClockSkew:             time.Duration(vd.ClockSkew),
		Logger:                slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Verifier = v
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(gl) }()
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		v.Close()
		cancel()
		<-issuerDone
	})
	return &env{issuerURL: issuerURL, verify: tokenbrokerv1.NewTokenVerifierServiceClient(conn), authz: authv3.NewAuthorizationClient(conn)}
}

// token gets a token for scope from the dev issuer.
func (e *env) token(t *testing.T, scope string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}
	req, err := http.NewRequest(http.MethodPost, e.issuerURL+devissuer.TokenPath, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		t.Fatalf("token endpoint: status %d, %v", resp.StatusCode, err)
	}
	return body.AccessToken
}

func rpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestVerifyTokenEndToEnd verifies a dev issuer token over gRPC.
func TestVerifyTokenEndToEnd(t *testing.T) {
	e := newEnv(t, Config{})
	tok := e.token(t, "orders/read")
	resp, err := e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: tok, RequiredScopes: []string{"orders/read"}, ExpectedClientId: clientID})
	if err != nil {
		t.Fatalf("VerifyToken: %v", err)
	}
	c := resp.GetClaims()
	if c == nil || c.GetProvider() != "dev" || c.GetClientId() != clientID || c.GetIssuer() != e.issuerURL || !slices.Equal(c.GetScopes(), []string{"orders/read"}) || c.GetTokenUse() != "access" || !c.GetExpiresAt().AsTime().After(time.Now()) {
		t.Fatalf("VerifyToken = %v, want the dev token's claims", resp)
	}

	// A refusal is an answer.
	resp, err = e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: tok, RequiredScopes: []string{"orders/write"}})
	if err != nil {
		t.Fatalf("VerifyToken: %v", err)
	}
	if r := resp.GetRefusal(); r.GetReason() != tokenbrokerv1.RefusalReason_REFUSAL_REASON_INSUFFICIENT_SCOPE || strings.Contains(r.GetMessage(), tok) {
		t.Fatalf("VerifyToken = %v, want refusal INSUFFICIENT_SCOPE", resp)
	}
	resp, err = e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: tok[:len(tok)-4] + "AAAA"})
	if err != nil || resp.GetRefusal().GetReason() != tokenbrokerv1.RefusalReason_REFUSAL_REASON_BAD_SIGNATURE {
		t.Fatalf("VerifyToken(tampered) = %v, %v; want refusal BAD_SIGNATURE", resp, err)
	}
}

// TestReasonEnumAligned: verifier.Reason values are the API's enum values.
func TestReasonEnumAligned(t *testing.T) {
	for _, r := range verifier.Reasons() {
		want := "REFUSAL_REASON_" + strings.ToUpper(r.String())
		if got := tokenbrokerv1.RefusalReason(r).String(); got != want {
			t.Errorf("RefusalReason(%d) = %s, want %s", r, got, want)
		}
	}
}

// TestVerifyTokenErrors: invalid requests, policy, rate limit and keys that
// were never fetched are RPC errors.
func TestVerifyTokenErrors(t *testing.T) {
	e := newEnv(t, Config{
		RateLimit: 0.001, RateBurst: 2,
		Caller: func(context.Context) string { return "one" },
	})
	tok := e.token(t, "orders/read")
	for _, c := range []struct {
		name string
		req  *tokenbrokerv1.VerifyTokenRequest
		code codes.Code
		msg  string
	}{
		{"no token", &tokenbrokerv1.VerifyTokenRequest{}, codes.InvalidArgument, "token: must be set"},
		{"bad scope", &tokenbrokerv1.VerifyTokenRequest{Token: tok, RequiredScopes: []string{"a b"}}, codes.InvalidArgument, "required_scopes[0]"},
		{"keys never fetched", &tokenbrokerv1.VerifyTokenRequest{Token: forge(t, "http://127.0.0.1:1/down")}, codes.Unavailable, "could not be fetched"},
	} {
		_, err := e.verify.VerifyToken(rpcCtx(t), c.req)
		if st := status.Convert(err); st.Code() != c.code || !strings.Contains(st.Message(), c.msg) {
			t.Errorf("%s: VerifyToken = %v, want %s containing %q", c.name, err, c.code, c.msg)
		}
	}
	// Invalid requests are refused before the rate limit: the burst of 2
	// is spent by the "keys never fetched" call and one more.
	if _, err := e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: tok}); err != nil {
		t.Fatalf("third call: %v", err)
	}
	if _, err := e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: tok}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth call: %v, want ResourceExhausted", err)
	}
}

// TestPolicyRefuses: a caller the policy refuses gets PERMISSION_DENIED from
// VerifyToken, and from Check a denied response (HTTP 403) with an OK RPC
// status: an RPC error would let Envoy's failure_mode_allow pass the
// request.
func TestPolicyRefuses(t *testing.T) {
	e := newEnv(t, Config{Authorize: func(context.Context) error { return errors.New("identity may not verify tokens") }})
	_, err := e.verify.VerifyToken(rpcCtx(t), &tokenbrokerv1.VerifyTokenRequest{Token: "x"})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "identity may not verify tokens" {
		t.Errorf("VerifyToken = %v, want PermissionDenied", err)
	}
	resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer x", "/", nil))
	if err != nil {
		t.Fatalf("Check: RPC error %v, want a denied response", err)
	}
	d := resp.GetDeniedResponse()
	if d == nil || d.GetStatus().GetCode() != http.StatusForbidden || codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied {
		t.Fatalf("Check = %v, want denied with HTTP 403 and status PERMISSION_DENIED", resp)
	}
	if resp.GetStatus().GetMessage() != "identity may not verify tokens" || strings.Contains(d.GetBody(), "identity") {
		t.Errorf("Check: status message %q, body %q; want the policy's message in the status only", resp.GetStatus().GetMessage(), d.GetBody())
	}
}

// TestCheckOverRateLimit: a caller over verifier.rate_limit gets from Check
// a denied response (HTTP 429 with Retry-After) with an OK RPC status.
func TestCheckOverRateLimit(t *testing.T) {
	e := newEnv(t, Config{RateLimit: 0.001, RateBurst: 1})
	tok := e.token(t, "orders/read")
	resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer "+tok, "/", nil))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("first Check = %v, %v; want OK", resp, err)
	}
	for i := range 2 {
		resp, err = e.authz.Check(rpcCtx(t), checkReq("Bearer "+tok, "/", nil))
		if err != nil {
			t.Fatalf("Check %d over the limit: RPC error %v, want a denied response", i, err)
		}
		d := resp.GetDeniedResponse()
		if d == nil || d.GetStatus().GetCode() != http.StatusTooManyRequests || codes.Code(resp.GetStatus().GetCode()) != codes.ResourceExhausted {
			t.Fatalf("Check %d over the limit = %v, want denied with HTTP 429 and status RESOURCE_EXHAUSTED", i, resp)
		}
		// One token per 1000 s: the next one is due in (0, 1000] seconds.
		if n, err := strconv.Atoi(headerOf(d.GetHeaders(), "retry-after")); err != nil || n < 1 || n > 1000 {
			t.Errorf("Retry-After = %q, want 1-1000 seconds", headerOf(d.GetHeaders(), "retry-after"))
		}
	}
}

// forge signs nothing: a JWT-shaped token claiming issuer, whose key cannot
// be fetched.
func forge(t *testing.T, issuer string) string {
	t.Helper()
	h := `eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ` // {"alg":"ES256","kid":"k"}
	b, _ := json.Marshal(map[string]any{"iss": issuer, "exp": time.Now().Add(time.Hour).Unix()})
	return h + "." + b64(b) + ".c2ln"
}
