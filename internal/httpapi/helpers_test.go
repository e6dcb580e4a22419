package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// testTimeout bounds every request and wait in these tests.
const testTimeout = 10 * time.Second

// The client the test issuers know. The id and secret hold characters
// that client_secret_basic must form-encode (RFC 6749 section 2.3.1).
const (
	testClientID = "app:1 +x"
	testSecret   = "S3cret-p@ss:w rd+/&=%-never-shown"
	testLifetime = time.Hour
)

var testScopes = []string{"api/read", "api/write"}

// env is a real broker behind the handler, fetching from real devissuer
// token endpoints, all over loopback HTTP.
type env struct {
	issuers map[string]*devissuer.Issuer // by provider name
	broker  *broker.Broker
	handler *handler
	srv     *httptest.Server
	logs    *testkit.LogBuffer
}

// envOptions tune newEnv.
type envOptions struct {
	// providers are the provider names; each gets its own issuer. Default
	// {"dev"}.
	providers []string
	// defaultProvider is Config.DefaultProvider.
	defaultProvider string
	// maxBody is Config.MaxBodyBytes.
	maxBody int64
	// ready, metrics and authorize are the Config fields.
	ready     func() bool
	metrics   http.Handler
	authorize func(*http.Request, broker.Selector) error
	// logSuccesses is Config.LogSuccesses.
	logSuccesses bool
}

// newEnv starts the issuers, builds the broker the way internal/app does
// (upstream clients, a token cache, pass-through credentials) and serves
// the handler.
func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	if len(o.providers) == 0 {
		o.providers = []string{"dev"}
	}
	logs := new(testkit.LogBuffer)
	logger := testkit.TextLogger(logs)
	e := &env{issuers: map[string]*devissuer.Issuer{}, logs: logs}
	fetchers := map[string]broker.Fetcher{}
	for i, name := range o.providers {
		iss, err := devissuer.New(devissuer.Config{
			Lifetime: testLifetime,
			Clients:  []devissuer.Client{{ID: testClientID, Secret: testSecret, Scopes: testScopes}},
			Logger:   logger,
		})
		if err != nil {
			t.Fatalf("devissuer.New: %v", err)
		}
		isrv := httptest.NewServer(iss.Handler())
		t.Cleanup(isrv.Close)
		method := upstream.AuthBasic
		if i%2 == 1 {
			method = upstream.AuthPost
		}
		c, err := upstream.New(upstream.Provider{
			Name:       name,
			TokenURL:   isrv.URL + devissuer.TokenPath,
			AuthMethod: method,
			Timeout:    testTimeout,
			RateLimit:  1000,
			Burst:      100,

			DefaultLifetime:        time.Hour,
			PassthroughShare:       1,
			PassthroughCallerShare: 1,
			PassthroughClientShare: 1,
		}, upstream.Options{Logger: logger, MaxAttempts: 1, BaseBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second})
		if err != nil {
			t.Fatalf("upstream.New: %v", err)
		}
		e.issuers[name] = iss
		fetchers[name] = c
	}
	cache, err := tokencache.New(1<<20, tokencache.RandomKeyring())
	if err != nil {
		t.Fatalf("tokencache.New: %v", err)
	}
	t.Cleanup(cache.Close)
	b, err := broker.New(broker.Config{
		Providers:       fetchers,
		Passthrough:     true,
		Cache:           cache,
		Logger:          logger,
		RefreshFraction: 0.75,
		MinRemaining:    30 * time.Second,
		FetchTimeout:    30 * time.Second,
		RetryBase:       time.Second,
		RetryMax:        time.Minute,
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(b.Close)
	e.broker = b
	h, err := New(Config{
		Broker:          b,
		Providers:       o.providers,
		DefaultProvider: o.defaultProvider,
		Authorize:       o.authorize,
		Ready:           o.ready,
		Metrics:         o.metrics,
		Logger:          logger,
		LogSuccesses:    o.logSuccesses,
		MaxBodyBytes:    cmp.Or(o.maxBody, 64<<10),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.handler = h.(*handler)
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

// requests is the number of token requests the issuers received.
func (e *env) requests() int64 {
	var n int64
	for _, iss := range e.issuers {
		n += iss.Requests()
	}
	return n
}

// stubBroker is a Broker whose GetToken is a function field.
type stubBroker struct {
	getToken func(ctx context.Context, req broker.Request) (broker.Token, error)
}

func (s *stubBroker) GetToken(ctx context.Context, req broker.Request) (broker.Token, error) {
	return s.getToken(ctx, req)
}

// serveStub serves a handler for provider "dev" over a stub broker.
func serveStub(t *testing.T, cfg Config) (*handler, *httptest.Server) {
	t.Helper()
	if cfg.Providers == nil {
		cfg.Providers = []string{"dev"}
	}
	cfg.MaxBodyBytes = cmp.Or(cfg.MaxBodyBytes, 64<<10)
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h.(*handler), srv
}

// answer is a response read in full.
type answer struct {
	status int
	header http.Header
	body   string
	// json is the body decoded as an object (nil when it is not one).
	json map[string]any
}

// str returns the JSON member name as a string ("" when absent).
func (a answer) str(name string) string {
	s, _ := a.json[name].(string)
	return s
}

// do sends a request and reads the answer, within testTimeout.
func do(t *testing.T, method, u string, header http.Header, body string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	_ = json.Unmarshal(b, &a.json)
	return a
}

// postForm posts form to u as a token request, with extra headers.
func postForm(t *testing.T, u string, form url.Values, header http.Header) answer {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	for k, vs := range header {
		h[k] = vs
	}
	return do(t, http.MethodPost, u, h, form.Encode())
}

// basic returns an Authorization header for id and secret encoded as
// client_secret_basic requires.
func basic(id, secret string) http.Header {
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	return http.Header{"Authorization": req.Header.Values("Authorization")}
}

// checkNoStore fails unless a carries the headers of every token endpoint
// answer.
func checkNoStore(t *testing.T, a answer) {
	t.Helper()
	for k, want := range map[string]string{
		"Cache-Control": "no-store",
		"Pragma":        "no-cache",
		"Content-Type":  "application/json;charset=UTF-8",
	} {
		if got := a.header.Get(k); got != want {
			t.Errorf("header %s: got %q, want %q", k, got, want)
		}
	}
}
