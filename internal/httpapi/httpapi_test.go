package httpapi

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// nopBroker fails every request; routing tests never reach it.
var nopBroker = &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
	return broker.Token{}, broker.ErrPassthroughDisabled
}}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for success
	}{
		{"no broker", Config{Providers: []string{"a"}}, "Config.Broker"},
		{"negative body limit", Config{Broker: nopBroker, MaxBodyBytes: -1}, "Config.MaxBodyBytes"},
		{"no body limit", Config{Broker: nopBroker}, "Config.MaxBodyBytes"},
		{"empty provider", Config{Broker: nopBroker, MaxBodyBytes: 1024, Providers: []string{"a", ""}}, "Config.Providers[1]"},
		{"duplicate provider", Config{Broker: nopBroker, MaxBodyBytes: 1024, Providers: []string{"a", "a"}}, "Config.Providers[1]"},
		{"unknown default", Config{Broker: nopBroker, MaxBodyBytes: 1024, Providers: []string{"a"}, DefaultProvider: "b"}, "Config.DefaultProvider"},
		{"no providers", Config{Broker: nopBroker, MaxBodyBytes: 1024}, ""},
		{"several without default", Config{Broker: nopBroker, MaxBodyBytes: 1024, Providers: []string{"a", "b"}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(tc.cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got error %v, want one naming %s", err, tc.wantErr)
			case tc.wantErr == "" && h == nil:
				t.Fatalf("got a nil handler, want one")
			}
		})
	}
}

func TestSingleProviderIsDefault(t *testing.T) {
	h, err := New(Config{Broker: nopBroker, Providers: []string{"only"}, MaxBodyBytes: 1024})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got, want := h.(*handler).cfg.DefaultProvider, "only"; got != want {
		t.Errorf("default provider: got %q, want %q", got, want)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	var ready atomic.Bool
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("tokenbroker_up 1\n"))
	})
	_, srv := serveStub(t, Config{Broker: nopBroker, Ready: ready.Load, Metrics: metrics})
	_, bare := serveStub(t, Config{Broker: nopBroker})

	check := func(name, method, u string, wantStatus int, wantBody string) {
		t.Helper()
		a := do(t, method, u, nil, "")
		if a.status != wantStatus || (wantBody != "" && a.body != wantBody) {
			t.Errorf("%s: got %d %q, want %d %q", name, a.status, a.body, wantStatus, wantBody)
		}
	}
	check("healthz", http.MethodGet, srv.URL+HealthPath, 200, "ok\n")
	check("healthz HEAD", http.MethodHead, srv.URL+HealthPath, 200, "")
	check("readyz not ready", http.MethodGet, srv.URL+ReadyPath, 503, "not ready\n")
	ready.Store(true)
	check("readyz ready", http.MethodGet, srv.URL+ReadyPath, 200, "ok\n")
	ready.Store(false)
	check("readyz not ready again", http.MethodGet, srv.URL+ReadyPath, 503, "not ready\n")
	check("readyz without Ready", http.MethodGet, bare.URL+ReadyPath, 200, "ok\n")

	// ReadyDetail adds lines to the body without changing the status.
	var detail atomic.Value
	detail.Store("")
	_, det := serveStub(t, Config{Broker: nopBroker, ReadyDetail: func() string { return detail.Load().(string) }})
	check("readyz with an empty detail", http.MethodGet, det.URL+ReadyPath, 200, "ok\n")
	detail.Store("redis tier: open (auth_failed)")
	check("readyz with a detail", http.MethodGet, det.URL+ReadyPath, 200, "ok\nredis tier: open (auth_failed)\n")
	check("metrics", http.MethodGet, srv.URL+MetricsPath, 200, "tokenbroker_up 1\n")
	check("metrics without handler", http.MethodGet, bare.URL+MetricsPath, 404, "")

	a := do(t, http.MethodPost, srv.URL+HealthPath, nil, "")
	if a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST healthz: got %d Allow %q, want 405 Allow %q", a.status, a.header.Get("Allow"), "GET, HEAD")
	}
}

func TestUnknownPaths(t *testing.T) {
	_, srv := serveStub(t, Config{Broker: nopBroker})
	for _, p := range []string{"/", "/oauth2", "/oauth2/", "/oauth2//token", "/oauth2/a/b/token", "/oauth2/dev/tokens", "/token", "/healthz/x"} {
		a := do(t, http.MethodPost, srv.URL+p, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, "grant_type=client_credentials")
		if a.status != http.StatusNotFound {
			t.Errorf("%s: got %d, want 404", p, a.status)
		}
	}
}

func TestProviderFromPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string
		ok   bool
	}{
		{"/oauth2/dev/token", "dev", true},
		{"/oauth2/my%20idp/token", "my idp", true},
		{"/oauth2/a%2Fb/token", "a/b", true},
		{"/oauth2/token", "", false},
		{"/oauth2//token", "", false},
		{"/oauth2/a/b/token", "", false},
		{"/oauth2/%zz/token", "", false},
		{"/other/dev/token", "", false},
	} {
		got, ok := providerFromPath(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("providerFromPath(%q): got %q, %v, want %q, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}
