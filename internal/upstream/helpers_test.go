package upstream

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// testTimeout bounds every Fetch in the tests.
const testTimeout = 10 * time.Second

// seen is what the test endpoint recorded of one request.
type seen struct {
	method      string
	contentType string
	accept      string
	authz       string
	basicUser   string
	basicPass   string
	basicOK     bool
	form        url.Values
	bodyErr     error
}

// endpoint is a real HTTP token endpoint whose answers a test scripts.
type endpoint struct {
	srv *httptest.Server

	mu   sync.Mutex
	reqs []seen
}

// newEndpoint starts an endpoint. handle answers request number n (from 1).
func newEndpoint(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, n int)) *endpoint {
	t.Helper()
	e := &endpoint{}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seen{
			method:      r.Method,
			contentType: r.Header.Get("Content-Type"),
			accept:      r.Header.Get("Accept"),
			authz:       r.Header.Get("Authorization"),
		}
		s.basicUser, s.basicPass, s.basicOK = r.BasicAuth()
		body, err := io.ReadAll(r.Body)
		if err == nil {
			s.form, err = url.ParseQuery(string(body))
		}
		s.bodyErr = err
		e.mu.Lock()
		e.reqs = append(e.reqs, s)
		n := len(e.reqs)
		e.mu.Unlock()
		handle(w, r, n)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) requests() []seen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seen(nil), e.reqs...)
}

func (e *endpoint) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.reqs)
}

// writeJSON answers with status and v encoded as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// okToken answers with a valid token response.
func okToken(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": "tok-123", "token_type": "Bearer", "expires_in": 3600,
	})
}

func testProvider(tokenURL string) Provider {
	return Provider{
		Name:            "test",
		TokenURL:        tokenURL,
		AuthMethod:      AuthBasic,
		Timeout:         5 * time.Second,
		RateLimit:       1000,
		Burst:           100,
		DefaultLifetime: time.Hour,

		PassthroughShare:       0.5,
		PassthroughCallerShare: 0.25,
		PassthroughClientShare: 0.25,
	}
}

// testMaxAttempts is the MaxAttempts of newTestClient when the test sets
// none: the configuration's default (config.DefaultProvider).
const testMaxAttempts = 4

// testOptions returns valid Options with the configuration's defaults.
func testOptions() Options {
	return Options{MaxAttempts: testMaxAttempts, BaseBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second}
}

func testRequest() Request {
	return Request{ClientID: "client-1", ClientSecret: secret.String("s3cr3t-value")}
}

// waits records the delays a Client asked to wait for, without waiting.
type waits struct {
	mu sync.Mutex
	ds []time.Duration
}

func (w *waits) wait(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	w.ds = append(w.ds, d)
	w.mu.Unlock()
	return ctx.Err()
}

func (w *waits) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.ds...)
}

// fakeClock is a clock that moves only when the Client waits.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
	ds  []time.Duration
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) wait(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.ds = append(f.ds, d)
	f.mu.Unlock()
	return ctx.Err()
}

// newTestClient returns a Client for p whose waits are recorded, not slept.
func newTestClient(t *testing.T, p Provider, o Options) (*Client, *waits) {
	t.Helper()
	if o.MaxAttempts == 0 {
		o.MaxAttempts = testMaxAttempts
	}
	if o.BaseBackoff == 0 {
		o.BaseBackoff = time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 4 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := New(p, o)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	w := &waits{}
	c.wait = w.wait
	return c, w
}

func fetch(t *testing.T, c *Client, r Request) (Token, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return c.Fetch(ctx, r)
}

// makeJWT returns a real ES256-signed JWT with the given claims (zero times
// are left out).
func makeJWT(t testing.TB, iat, exp time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	claims := jwt.Claims{Subject: "client-1", Issuer: "https://issuer.example"}
	if !iat.IsZero() {
		claims.IssuedAt = jwt.NewNumericDate(iat)
	}
	if !exp.IsZero() {
		claims.Expiry = jwt.NewNumericDate(exp)
	}
	s, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatalf("Serialize: %v", err)
	}
	return s
}
