package verifier

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// signingKey is a test issuer's key.
type signingKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv any
	pub  jose.JSONWebKey
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// newKey makes a key for alg (RSA keys are made once per test binary).
func newKey(t testing.TB, alg jose.SignatureAlgorithm, kid string) signingKey {
	t.Helper()
	var priv, pub any
	switch alg {
	case jose.ES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv, pub = k, &k.PublicKey
	default:
		rsaOnce.Do(func() {
			var err error
			if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
				panic(err)
			}
		})
		priv, pub = rsaKey, &rsaKey.PublicKey
	}
	return signingKey{kid: kid, alg: alg, priv: priv, pub: jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: string(alg), Use: "sig"}}
}

// sign signs claims with k, adding the extra header fields.
func (k signingKey) sign(t testing.TB, claims any, extra map[jose.HeaderKey]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	for h, v := range extra {
		opts = opts.WithHeader(h, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: k.kid}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// issuerServer is a test provider: OpenID discovery and a JWKS whose keys,
// status and body a test controls, counting the JWKS requests.
type issuerServer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	status  int
	garbage bool
	hits    atomic.Int64
	// hold, when set, makes JWKS requests wait until it is closed.
	hold chan struct{}
}

func newIssuerServer(t testing.TB, keys ...signingKey) *issuerServer {
	s := &issuerServer{}
	for _, k := range keys {
		s.keys = append(s.keys, k.pub)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(DiscoveryPath, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": s.srv.URL, "jwks_uri": s.srv.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		hold, status, garbage, keys := s.hold, s.status, s.garbage, s.keys
		s.mu.Unlock()
		if hold != nil {
			<-hold
		}
		switch {
		case status != 0:
			w.WriteHeader(status)
		case garbage:
			_, _ = w.Write([]byte(`<html>not a key set</html>`))
		default:
			_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: keys})
		}
	})
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

// URL is the issuer.
func (s *issuerServer) URL() string { return s.srv.URL }

// setKeys replaces the published keys.
func (s *issuerServer) setKeys(keys ...signingKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = nil
	for _, k := range keys {
		s.keys = append(s.keys, k.pub)
	}
}

// fail makes the JWKS answer status (0: answer normally) or garbage.
func (s *issuerServer) fail(status int, garbage bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.garbage = status, garbage
}

// recorder is an Observer that remembers what it saw.
type recorder struct {
	mu       sync.Mutex
	verified []string // provider/outcome/source
	fetches  []error
}

func (r *recorder) Verified(p, o string, s Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verified = append(r.verified, p+"/"+o+"/"+string(s))
}

func (r *recorder) KeysFetched(p string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fetches = append(r.fetches, err)
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.verified) == 0 {
		return ""
	}
	return r.verified[len(r.verified)-1]
}

func (r *recorder) failures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.fetches {
		if e != nil {
			n++
		}
	}
	return n
}

// testConfig returns a Config of providers whose settings are the
// configuration's defaults (config.Default's verifier section, and
// config.DefaultProvider's timeout for a provider without one): the tests
// take the defaults from their one home.
func testConfig(providers ...Provider) Config {
	d := config.Default().Verifier
	providers = slices.Clone(providers)
	for i := range providers {
		if providers[i].Timeout == 0 {
			providers[i].Timeout = time.Duration(config.DefaultProvider().Timeout)
		}
	}
	return Config{
		Providers:             providers,
		CacheMaxCost:          int64(d.CacheMaxCost),
		MaxTokenSize:          int(d.MaxTokenSize),
		RefreshInterval:       time.Duration(d.JWKSRefreshInterval),
		MinRefreshInterval:    time.Duration(d.JWKSMinRefreshInterval),
		IntrospectionCacheTTL: time.Duration(d.IntrospectionCacheTTL),
		ClockSkew:             time.Duration(d.ClockSkew),
		Logger:                slog.New(slog.DiscardHandler),
	}
}

// newTestVerifier builds a verifier for providers and closes it at the
// end of the test.
func newTestVerifier(t testing.TB, obs Observer, providers ...Provider) *Verifier {
	t.Helper()
	cfg := testConfig(providers...)
	cfg.Observer = obs
	v, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// claimsFor are claims valid now for issuer.
func claimsFor(issuer string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":       issuer,
		"sub":       "client-1",
		"client_id": "client-1",
		"scope":     "orders/read orders/write",
		"token_use": "access",
		"aud":       "orders-api",
		"iat":       now.Unix(),
		"exp":       now.Add(time.Hour).Unix(),
		"jti":       "id-1",
	}
}

// with returns a copy of m with k set to v (deleted when v is nil).
func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// verify calls v.Verify with a timeout.
func verify(t testing.TB, v *Verifier, req Request) (*Claims, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return v.Verify(ctx, req)
}

// reasonOf returns the refusal reason of err, 0 if it is not a refusal.
func reasonOf(err error) Reason {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return 0
}

// jsonMarshal marshals v.
func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// unsigned returns an "alg": "none" token of claims.
func unsigned(claims any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	b, _ := json.Marshal(claims)
	return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
}

// hmacSigned returns an HS256 token of claims signed with secret (the
// algorithm-confusion attack: the secret is the provider's public key).
func hmacSigned(t testing.TB, secret []byte, kid string, claims any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: secret, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// sha256Sum is the cache key of token.
func sha256Sum(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// errorsIsUnavailable reports errors.Is(err, ErrUnavailable).
func errorsIsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// writeJWKS writes a JWKS file of keys.
func writeJWKS(t testing.TB, keys ...signingKey) string {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.pub)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
