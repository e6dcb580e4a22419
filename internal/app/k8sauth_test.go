package app

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/k8sauth/k8stest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestKubernetesServiceAccountIdentity: over real gRPC and HTTP, a caller
// presenting a projected service-account token is k8s:NAMESPACE:SA;
// policy grants by namespace pattern; each refusal says why
// (Unauthenticated / 401) and no token reaches the log. An API key still
// works beside it.
func TestKubernetesServiceAccountIdentity(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	logs := &testkit.LogBuffer{}
	issuer, tokenURL := startIssuer(t, nil)
	_ = issuer
	cfg := stackConfig(tokenURL)
	const apiKey = "batch-key-value"
	cfg.Auth.AllowUnauthenticated = false
	cfg.Auth.APIKeys = []config.APIKey{{Identity: "batch", SHA256: fmt.Sprintf("%x", sha256.Sum256([]byte(apiKey)))}}
	cfg.Auth.Kubernetes.IssuerURL = iss.URL
	cfg.Verifier.JWKSMinRefreshInterval = config.Duration(time.Second)
	cfg.Policy = []config.PolicyRule{
		{Identity: "k8s:payments:*", Clients: []string{"held"}, Scopes: []string{"api/read"}, Passthrough: true},
		{Identity: "apikey:batch", Clients: []string{"held"}, Scopes: []string{"api/read"}},
	}
	cfg.Admin.Identities = []string{"k8s:ops:admin"}
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(logs, nil)))

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, admin := tokenbrokerv1.NewTokenBrokerServiceClient(conn), tokenbrokerv1.NewAdminServiceClient(conn)
	as := func(bearer string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+bearer)
	}
	past := time.Now().Add(-3 * time.Hour)
	worker := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker"})
	billing := iss.Mint(t, k8stest.Token{Namespace: "billing", ServiceAccount: "worker"})
	expired := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker", IssuedAt: past, NotBefore: past, Expiry: past.Add(time.Hour)})
	wrongAud := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker", Audience: []string{"vault"}})
	unknownKey := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker", Key: k8stest.ForeignKey(t)})
	badSig := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker", Key: iss.KeyAs(t)})
	tokens := []string{worker, billing, expired, wrongAud, unknownKey, badSig}

	for _, tc := range []struct {
		name   string
		bearer string
		sel    *tokenbrokerv1.TokenSelector
		want   codes.Code
		msg    string
	}{
		{"namespace granted", worker, heldSelector("api/read"), codes.OK, ""},
		{"scope not granted", worker, heldSelector("api/write"), codes.PermissionDenied, "scope"},
		{"other namespace", billing, heldSelector("api/read"), codes.PermissionDenied, "client"},
		{"api key beside", apiKey, heldSelector("api/read"), codes.OK, ""},
		{"expired", expired, heldSelector("api/read"), codes.Unauthenticated, "expired"},
		{"wrong audience", wrongAud, heldSelector("api/read"), codes.Unauthenticated, "wrong_audience"},
		{"unknown key", unknownKey, heldSelector("api/read"), codes.Unauthenticated, "unknown_key"},
		{"bad signature", badSig, heldSelector("api/read"), codes.Unauthenticated, "bad_signature"},
	} {
		_, err := client.GetToken(as(tc.bearer), &tokenbrokerv1.GetTokenRequest{Selector: tc.sel})
		if got := status.Code(err); got != tc.want || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("gRPC %s: got %v, want %v containing %q", tc.name, err, tc.want, tc.msg)
		}
		for _, tok := range tokens {
			if err != nil && strings.Contains(err.Error(), tok[strings.LastIndexByte(tok, '.')+1:]) {
				t.Errorf("gRPC %s: error holds a token", tc.name)
			}
		}
	}
	if _, err := admin.GetStats(as(worker), &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("admin as k8s:payments:worker: got %v, want PermissionDenied", err)
	}
	if _, err := admin.GetStats(as(iss.Mint(t, k8stest.Token{Namespace: "ops", ServiceAccount: "admin"})), &tokenbrokerv1.GetStatsRequest{}); err != nil {
		t.Errorf("admin as k8s:ops:admin: %v", err)
	}

	// HTTP: the token travels in "Authorization: Bearer", the client's
	// credentials in the body (client_secret_post).
	post := func(bearer string) (int, map[string]any) {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {passID}, "client_secret": {passSecret}, "scope": {"api/read"}}
		req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/oauth2/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		return resp.StatusCode, m
	}
	for _, tc := range []struct {
		name   string
		bearer string
		want   int
		desc   string
	}{
		{"namespace granted", worker, http.StatusOK, ""},
		{"other namespace", billing, http.StatusForbidden, "own credentials"},
		{"anonymous refused by policy", "", http.StatusForbidden, ""},
		{"expired", expired, http.StatusUnauthorized, "expired"},
		{"wrong audience", wrongAud, http.StatusUnauthorized, "wrong_audience"},
		{"unknown key", unknownKey, http.StatusUnauthorized, "unknown_key"},
		{"bad signature", badSig, http.StatusUnauthorized, "bad_signature"},
		{"api key is no HTTP identity", apiKey, http.StatusUnauthorized, "service-account token"},
	} {
		code, body := post(tc.bearer)
		desc, _ := body["error_description"].(string)
		if code != tc.want || !strings.Contains(desc, tc.desc) {
			t.Errorf("HTTP %s: got %d %v, want %d containing %q", tc.name, code, body, tc.want, tc.desc)
		}
	}

	out := logs.String()
	for _, tok := range append(tokens, apiKey) {
		if strings.Contains(out, tok) || strings.Contains(out, tok[strings.LastIndexByte(tok, '.')+1:]) {
			t.Errorf("the log holds a presented token or key")
		}
	}
	for _, reason := range []string{"expired", "wrong_audience", "unknown_key", "bad_signature"} {
		if !strings.Contains(out, `"reason":"`+reason+`"`) {
			t.Errorf("the log does not say %s", reason)
		}
	}
}
