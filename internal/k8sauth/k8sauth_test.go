package k8sauth_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/k8sauth"
	"github.com/tokenbroker/tokenbroker/internal/k8sauth/k8stest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }

// testConfig returns a Config for issuer whose settings are the
// configuration's defaults (config.Default's auth.kubernetes and verifier
// sections): the tests take the defaults from their one home.
func testConfig(issuer string) k8sauth.Config {
	d := config.Default()
	return k8sauth.Config{
		Issuer:             issuer,
		Audience:           d.Auth.Kubernetes.Audience,
		Leeway:             time.Duration(d.Auth.Kubernetes.Leeway),
		RefreshInterval:    time.Duration(d.Verifier.JWKSRefreshInterval),
		MinRefreshInterval: time.Duration(d.Verifier.JWKSMinRefreshInterval),
	}
}

func newVerifier(t *testing.T, cfg k8sauth.Config) (*k8sauth.Verifier, *testkit.LogBuffer) {
	t.Helper()
	logs := &testkit.LogBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	v, err := k8sauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v, logs
}

// TestVerify: an accepted projected token gives k8s:NS:SA; each refusal
// says why, and neither the error nor the log holds the token.
func TestVerify(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	cfg := testConfig(iss.URL)
	cfg.MinRefreshInterval = time.Nanosecond
	v, logs := newVerifier(t, cfg)
	ctx := context.Background()

	good := iss.Mint(t, k8stest.Token{Namespace: "payments", ServiceAccount: "worker"})
	if got, err := v.Verify(ctx, good); err != nil || got != "k8s:payments:worker" {
		t.Fatalf("Verify(good) = %q, %v; want k8s:payments:worker", got, err)
	}
	ec := iss.AddKey(t, jose.ES256)
	if got, err := v.Verify(ctx, iss.Mint(t, k8stest.Token{Namespace: "billing", ServiceAccount: "api"})); err != nil || got != "k8s:billing:api" {
		t.Fatalf("Verify(ES256 token, new key %s) = %q, %v; want k8s:billing:api", ec, got, err)
	}

	past := time.Now().Add(-2 * time.Hour)
	future := time.Now().Add(time.Hour)
	tests := []struct {
		name   string
		tok    k8stest.Token
		raw    string
		reason verifier.Reason
		msg    string
	}{
		{name: "expired", tok: k8stest.Token{IssuedAt: past, NotBefore: past, Expiry: past.Add(time.Hour)}, reason: verifier.ReasonExpired, msg: "expired at"},
		{name: "not yet valid", tok: k8stest.Token{NotBefore: future}, reason: verifier.ReasonNotYetValid, msg: "not valid before"},
		{name: "issued in the future", tok: k8stest.Token{IssuedAt: future}, reason: verifier.ReasonNotYetValid, msg: "issued in the future"},
		{name: "wrong audience", tok: k8stest.Token{Audience: []string{"vault", "https://kubernetes.default.svc"}}, reason: verifier.ReasonWrongAudience, msg: `does not include "tokenbroker"`},
		{name: "wrong issuer", tok: k8stest.Token{Issuer: "https://other.example"}, reason: verifier.ReasonWrongIssuer, msg: "issuer"},
		{name: "unknown key", tok: k8stest.Token{Key: k8stest.ForeignKey(t)}, reason: verifier.ReasonUnknownKey, msg: "does not publish the key"},
		{name: "bad signature", tok: k8stest.Token{Key: iss.KeyAs(t)}, reason: verifier.ReasonBadSignature, msg: "signature does not verify"},
		{name: "no pod", tok: k8stest.Token{NoPod: true}, reason: verifier.ReasonMalformed, msg: "pod"},
		{name: "subject mismatch", tok: k8stest.Token{Subject: "system:serviceaccount:kube-system:admin"}, reason: verifier.ReasonMalformed, msg: `"sub"`},
		{name: "not a JWT", raw: "eyJhbGciOi.e30.c2ln", reason: verifier.ReasonMalformed},
		{name: "HS256", raw: hs256(t), reason: verifier.ReasonDisallowedAlgorithm, msg: "RS256 or ES256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if raw == "" {
				tc.tok.Namespace, tc.tok.ServiceAccount = "payments", "worker"
				raw = iss.Mint(t, tc.tok)
			}
			got, err := v.Verify(ctx, raw)
			var re *verifier.RefusedError
			if !errors.As(err, &re) || re.Reason != tc.reason || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Verify = %q, %v; want a %s refusal containing %q", got, err, tc.reason, tc.msg)
			}
			if strings.Contains(err.Error(), raw) || strings.Contains(err.Error(), strings.Split(raw, ".")[2]) {
				t.Errorf("error %q holds the token", err)
			}
			if !strings.Contains(logs.String(), `"reason":"`+tc.reason.String()+`"`) {
				t.Errorf("log lacks reason %s:\n%s", tc.reason, logs)
			}
		})
	}
	for _, tok := range []string{good} {
		if strings.Contains(logs.String(), strings.Split(tok, ".")[2]) {
			t.Errorf("log holds a token's signature")
		}
	}
}

// TestLeewayAndAudience: a token expired within the leeway passes; the
// configured audience replaces the default.
func TestLeewayAndAudience(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	now := time.Now()
	cfg := testConfig(iss.URL)
	cfg.Audience, cfg.Leeway, cfg.Now = "broker.example", time.Minute, func() time.Time { return now }
	v, _ := newVerifier(t, cfg)
	tok := iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b", Audience: []string{"broker.example"}, IssuedAt: now.Add(-time.Hour), NotBefore: now.Add(-time.Hour), Expiry: now.Add(-30 * time.Second)})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("token expired 30s ago with a 1m leeway: %v, want accepted", err)
	}
	tok = iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b"})
	var re *verifier.RefusedError
	if _, err := v.Verify(context.Background(), tok); !errors.As(err, &re) || re.Reason != verifier.ReasonWrongAudience {
		t.Errorf("token for tokenbroker, audience broker.example: %v, want wrong_audience", err)
	}
}

// TestUnknownKeyRefresh: a token signed with a key added after the last
// fetch makes the verifier fetch the JWKS again once, however many such
// tokens arrive within the minimum interval.
func TestUnknownKeyRefresh(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	cfg := testConfig(iss.URL)
	cfg.MinRefreshInterval = time.Hour
	v, _ := newVerifier(t, cfg)
	ctx := context.Background()
	if _, err := v.Verify(ctx, iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b"})); err != nil {
		t.Fatal(err)
	}
	if n := iss.JWKSFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetches after the first token: %d, want 1", n)
	}
	// Rate limit: an hour has not passed since the first fetch, so an
	// unknown key is refused without a fetch.
	iss.AddKey(t, jose.RS256)
	rotated := iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b"})
	var re *verifier.RefusedError
	if _, err := v.Verify(ctx, rotated); !errors.As(err, &re) || re.Reason != verifier.ReasonUnknownKey {
		t.Fatalf("rotated key within the min interval: %v, want unknown_key", err)
	}
	if n := iss.JWKSFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetches within the min interval: %d, want 1", n)
	}

	// Without the rate limit in the way, the rotated key is fetched.
	cfg.MinRefreshInterval = time.Nanosecond
	v2, _ := newVerifier(t, cfg)
	iss2Before := iss.JWKSFetches.Load()
	if _, err := v2.Verify(ctx, iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b"})); err != nil {
		t.Fatal(err)
	}
	iss.AddKey(t, jose.ES256)
	if got, err := v2.Verify(ctx, iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b"})); err != nil || got != "k8s:a:b" {
		t.Fatalf("token with a key published after the last fetch: %q, %v; want accepted after a refetch", got, err)
	}
	if n := iss.JWKSFetches.Load() - iss2Before; n != 2 {
		t.Errorf("JWKS fetches: %d, want 2 (first token, then the unknown key)", n)
	}
}

// TestJWKSFile: keys from a file, no discovery.
func TestJWKSFile(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, iss.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("https://kubernetes.default.svc.cluster.local")
	cfg.JWKSFile = path
	v, _ := newVerifier(t, cfg)
	tok := iss.Mint(t, k8stest.Token{Namespace: "ns", ServiceAccount: "sa", Issuer: "https://kubernetes.default.svc.cluster.local"})
	if got, err := v.Verify(context.Background(), tok); err != nil || got != "k8s:ns:sa" {
		t.Fatalf("Verify = %q, %v", got, err)
	}
	if n := iss.JWKSFetches.Load(); n != 0 {
		t.Errorf("JWKS fetched over HTTP %d times with a jwks_file", n)
	}
}

// TestNewErrors: a discovery issuer must be https (http on loopback).
func TestNewErrors(t *testing.T) {
	if _, err := k8sauth.New(k8sauth.Config{}); err == nil {
		t.Error("New without an issuer: nil error")
	}
	if _, err := k8sauth.New(testConfig("http://k8s.example")); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("New with a plain-http remote issuer: %v, want an https rule", err)
	}
}

// hs256 returns an HS256-signed token.
func hs256(t *testing.T) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign([]byte(`{"iss":"x","kubernetes.io":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestNewRefusesZeroValues: the defaults live in the configuration only,
// so a setting left zero (or negative) is an error naming the field, the
// rule and the configuration key, not a silent default.
func TestNewRefusesZeroValues(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*k8sauth.Config)
		want string
	}{
		{"Audience", func(c *k8sauth.Config) { c.Audience = "" }, `k8sauth: Config.Audience is "", want a non-empty audience (configuration auth.kubernetes.audience)`},
		{"Leeway", func(c *k8sauth.Config) { c.Leeway = -time.Second }, "k8sauth: Config.Leeway is -1s, want at least 0 (0: none) (configuration auth.kubernetes.leeway)"},
		{"RefreshInterval", func(c *k8sauth.Config) { c.RefreshInterval = 0 }, "k8sauth: Config.RefreshInterval is 0s, want more than 0 (configuration verifier.jwks_refresh_interval)"},
		{"MinRefreshInterval", func(c *k8sauth.Config) { c.MinRefreshInterval = 0 }, "k8sauth: Config.MinRefreshInterval is 0s, want more than 0 (configuration verifier.jwks_min_refresh_interval)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig("https://k8s.example")
			c.edit(&cfg)
			v, err := k8sauth.New(cfg)
			if err == nil || err.Error() != c.want {
				t.Fatalf("New: got error %v, want %q", err, c.want)
			}
			if v != nil {
				t.Fatalf("New: got a verifier with error %v, want none", err)
			}
		})
	}
}

// TestZeroLeewayIsNone: leeway 0 means none, as auth.kubernetes.leeway
// documents it (New used to turn it into 30s).
func TestZeroLeewayIsNone(t *testing.T) {
	iss := k8stest.NewIssuer(t)
	now := time.Now()
	cfg := testConfig(iss.URL)
	cfg.Leeway, cfg.Now = 0, func() time.Time { return now }
	v, _ := newVerifier(t, cfg)
	tok := iss.Mint(t, k8stest.Token{Namespace: "a", ServiceAccount: "b", IssuedAt: now.Add(-time.Hour), NotBefore: now.Add(-time.Hour), Expiry: now.Add(-5 * time.Second)})
	var re *verifier.RefusedError
	if _, err := v.Verify(context.Background(), tok); !errors.As(err, &re) || re.Reason != verifier.ReasonExpired {
		t.Errorf("token expired 5s ago with leeway 0: got %v, want expired", err)
	}
}
