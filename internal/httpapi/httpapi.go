// Package httpapi is tokenbroker's HTTP face: a drop-in OAuth 2.0 token
// endpoint for the client-credentials grant (RFC 6749 sections 2.3.1, 4.4,
// 5.1 and 5.2, with the RFC 8707 resource parameter), served from the same
// broker as the gRPC API, next to /healthz, /readyz and /metrics.
//
// An application that already fetches tokens from a provider's token
// endpoint switches to the broker by changing only its token URL: it
// authenticates with client_secret_basic or client_secret_post exactly as
// before, and the broker files the token under a key that includes the
// secret, so a caller with a wrong secret never gets a cached token.
//
// Routes:
//
//	POST /oauth2/token             the token endpoint of the default provider
//	POST /oauth2/{provider}/token  the token endpoint of a named provider
//	GET  /healthz                  200 "ok" while the process serves HTTP
//	GET  /readyz                   200 "ok" when Config.Ready says so, else 503
//	GET  /metrics                  Config.Metrics (404 when nil)
//
// Every other path is 404. Answers of the token endpoint carry
// Cache-Control: no-store and Pragma: no-cache; a successful one reports
// expires_in as the token's remaining life at the time of the answer, not
// the lifetime the provider first announced.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Paths served by the handler.
const (
	// TokenPath is the token endpoint of the default provider.
	TokenPath = "/oauth2/token"
	// HealthPath answers 200 while the process serves HTTP.
	HealthPath = "/healthz"
	// ReadyPath answers 200 when the broker is ready to serve, else 503.
	ReadyPath = "/readyz"
	// MetricsPath serves Config.Metrics.
	MetricsPath = "/metrics"
)

// providerPathPrefix and providerPathSuffix enclose the provider's name in
// a per-provider token path: /oauth2/{provider}/token.
const (
	providerPathPrefix = "/oauth2/"
	providerPathSuffix = "/token"
)

// Broker is the part of the broker the token endpoint uses.
// *broker.Broker implements it.
type Broker interface {
	// GetToken returns a token for req under the broker's serving rule.
	GetToken(ctx context.Context, req broker.Request) (broker.Token, error)
}

// Config configures the handler returned by New.
type Config struct {
	// Broker serves the tokens. Required.
	Broker Broker
	// Providers are the names of the configured providers. A per-provider
	// path must name one of them.
	Providers []string
	// DefaultProvider is the provider of /oauth2/token. When empty and
	// exactly one provider is configured, that one is the default; when
	// several are, /oauth2/token answers 400 invalid_request pointing at
	// /oauth2/{provider}/token. When set, it must be one of Providers.
	DefaultProvider string
	// Authorize, when set, is asked before the broker whether the request
	// may have the token sel describes. An error for which
	// errors.Is(err, access.ErrPermissionDenied) holds (the one
	// permission-denied error) is 403 access_denied with that error's own
	// (sanitised) text as error_description, which must therefore name only
	// what the caller may know, never a secret or the policy's source; any
	// other error is a failure of the policy itself: 500 server_error. Nil
	// allows every request (the caller still proves it
	// holds the credentials: the upstream checks them, and the secret is
	// part of the cache key).
	Authorize func(r *http.Request, sel broker.Selector) error
	// Caller, when set, names the caller of a request (its typed identity,
	// "anonymous" for a caller without one) for the broker's per-caller
	// pass-through limits; nil counts every caller as one.
	Caller func(r *http.Request) string
	// Ready reports whether the broker is ready to serve (the gRPC health
	// status is SERVING). Nil means always ready.
	Ready func() bool
	// ReadyDetail, when set, returns lines appended to the /readyz body
	// (after "ok" or "not ready"): the state of parts whose failure does
	// not make the broker unready, such as the Redis tier. "" adds none.
	ReadyDetail func() string
	// Metrics is served at /metrics; nil answers 404.
	Metrics http.Handler
	// Logger receives one line per token request (method, path, status,
	// duration, provider, key id, error code) and never a client secret,
	// a token or an Authorization header: at info for a refused request,
	// and for a token sent at info with LogSuccesses, else at debug. Nil
	// means slog.Default().
	Logger *slog.Logger
	// LogSuccesses logs the line of a request answered with a token at
	// info, like a refusal's (configuration log.access: all).
	LogSuccesses bool
	// MaxBodyBytes bounds a token request's body; a longer one is refused
	// with 413. Required: greater than 0 (the default is the
	// configuration's http_max_body_bytes).
	MaxBodyBytes int64
}

// handler serves the routes of the package comment.
type handler struct {
	cfg       Config
	providers map[string]bool
	// now reads the clock for expires_in and durations; tests replace it.
	now func() time.Time
}

// New checks cfg and returns the handler. Its error names the offending
// Config field.
func New(cfg Config) (http.Handler, error) {
	if cfg.Broker == nil {
		return nil, errors.New("httpapi: Config.Broker is required")
	}
	if cfg.MaxBodyBytes <= 0 {
		return nil, fmt.Errorf("httpapi: Config.MaxBodyBytes: must be greater than 0, got %d", cfg.MaxBodyBytes)
	}
	providers := make(map[string]bool, len(cfg.Providers))
	for i, p := range cfg.Providers {
		switch {
		case p == "":
			return nil, fmt.Errorf("httpapi: Config.Providers[%d]: must not be empty", i)
		case providers[p]:
			return nil, fmt.Errorf("httpapi: Config.Providers[%d]: %q is listed twice", i, p)
		}
		providers[p] = true
	}
	switch {
	case cfg.DefaultProvider != "" && !providers[cfg.DefaultProvider]:
		return nil, fmt.Errorf("httpapi: Config.DefaultProvider: %q is not one of Config.Providers", cfg.DefaultProvider)
	case cfg.DefaultProvider == "" && len(cfg.Providers) == 1:
		cfg.DefaultProvider = cfg.Providers[0]
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Providers = append([]string(nil), cfg.Providers...)
	return &handler{cfg: cfg, providers: providers, now: time.Now}, nil
}

// ServeHTTP routes a request.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; p {
	case TokenPath:
		h.serveToken(w, r, "")
		return
	case HealthPath:
		serveText(w, r, http.StatusOK, "ok\n")
		return
	case ReadyPath:
		detail := ""
		if h.cfg.ReadyDetail != nil {
			if d := h.cfg.ReadyDetail(); d != "" {
				detail = d + "\n"
			}
		}
		if h.cfg.Ready == nil || h.cfg.Ready() {
			serveText(w, r, http.StatusOK, "ok\n"+detail)
		} else {
			serveText(w, r, http.StatusServiceUnavailable, "not ready\n"+detail)
		}
		return
	case MetricsPath:
		if h.cfg.Metrics == nil {
			http.NotFound(w, r)
			return
		}
		h.cfg.Metrics.ServeHTTP(w, r)
		return
	}
	if name, ok := providerFromPath(r.URL.EscapedPath()); ok {
		h.serveToken(w, r, name)
		return
	}
	http.NotFound(w, r)
}

// providerFromPath returns the provider named by an escaped path of the
// form /oauth2/{provider}/token, unescaped. It reports false for any other
// path, including an empty or multi-segment name.
func providerFromPath(escaped string) (string, bool) {
	rest, ok := strings.CutPrefix(escaped, providerPathPrefix)
	if !ok {
		return "", false
	}
	seg, ok := strings.CutSuffix(rest, providerPathSuffix)
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return "", false
	}
	name, err := url.PathUnescape(seg)
	if err != nil || name == "" {
		return "", false
	}
	return name, true
}

// serveText answers GET and HEAD with a short plain-text body; other
// methods get 405.
func serveText(w http.ResponseWriter, r *http.Request, status int, body string) {
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if r.Method == http.MethodGet {
		_, _ = w.Write([]byte(body))
	}
}
