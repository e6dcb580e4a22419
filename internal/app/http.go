package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/httpapi"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// newMetrics builds the Prometheus registry: the Go runtime and process
// collectors and the broker's metrics, whose counters stats reads at
// scrape time.
func newMetrics(cfg config.Metrics, stats func() broker.Stats) (*prometheus.Registry, *metrics.Metrics, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, err
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, err
	}
	var opts []metrics.Option
	if cfg.ClientIDLabel {
		opts = append(opts, metrics.WithClientIDLabel())
	}
	if cfg.KeyIDLabel {
		opts = append(opts, metrics.WithKeyIDLabel())
	}
	m, err := metrics.New(reg, stats, opts...)
	if err != nil {
		return nil, nil, err
	}
	return reg, m, nil
}

// observer feeds the broker's measurements to the metrics.
type observer struct{ m *metrics.Metrics }

// UpstreamDone implements broker.Observer.
func (o observer) UpstreamDone(f broker.Fetch, err error, d time.Duration) {
	o.m.UpstreamDone(f, metrics.Outcome(err), d)
	o.m.UpstreamRequest(f, err)
}

// Refreshed implements broker.Observer.
func (o observer) Refreshed(provider string, lead time.Duration) { o.m.Refreshed(provider, lead) }

// Served implements broker.Observer.
func (o observer) Served(f broker.Fetch, remaining time.Duration) { o.m.Served(f, remaining) }

// adminBroker is the AdminService's broker, with the cost accounting of
// the metrics (server.SavingsSource).
type adminBroker struct {
	*broker.Broker
	m *metrics.Metrics
}

// Savings implements server.SavingsSource.
func (a adminBroker) Savings(ctx context.Context) ([]metrics.ClientSavings, bool) {
	return a.m.Savings(ctx)
}

// Price implements server.SavingsSource.
func (a adminBroker) Price(provider string) (float64, bool) { return a.m.Price(provider) }

// newHTTPServer builds the HTTP listener's server: the drop-in token
// endpoint over b, /metrics from reg, /healthz, and /readyz following
// ready, with readyDetail's lines (nil for none). It speaks HTTPS when
// tlsConfig is set.
func newHTTPServer(cfg config.Config, b *broker.Broker, guard *access.Authenticator, reg prometheus.Gatherer, ready func() bool, readyDetail func() string, tlsConfig *tls.Config, logger *slog.Logger) (*http.Server, error) {
	providers := make([]string, len(cfg.Providers))
	for i, p := range cfg.Providers {
		providers[i] = p.Name
	}
	h, err := httpapi.New(httpapi.Config{
		Broker:          b,
		Providers:       providers,
		DefaultProvider: cfg.HTTPDefaultProvider,
		Authorize:       httpAuthorize(guard),
		Caller:          httpCaller,
		Ready:           ready,
		ReadyDetail:     readyDetail,
		Metrics:         metrics.Handler(reg),
		Logger:          logger,
		LogSuccesses:    cfg.Log.Access == "all",
		MaxBodyBytes:    int64(cfg.HTTPMaxBodyBytes),
	})
	if err != nil {
		return nil, fmt.Errorf("http_listen: %w", err)
	}
	return &http.Server{
		Handler:   withHTTPIdentity(guard, h),
		TLSConfig: tlsConfig,
		// A request (headers and its small body) must arrive within
		// ReadTimeout. One read timeout rather than a header timeout and
		// a longer whole-request one: net/http sets the connection's
		// deadline once per request instead of twice (deadlines were
		// about a twentieth of a cache hit's CPU).
		ReadTimeout:    10 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}, nil
}

// httpIdentityKey keys a request's *httpIdentity in its context.
type httpIdentityKey struct{}

// httpIdentity is an HTTP caller's identity, resolved once per request
// (Authorize and Caller both ask for it) and only when asked.
type httpIdentity struct {
	once  sync.Once
	guard *access.Authenticator
	r     *http.Request
	id    access.Identity
	err   error
}

// withHTTPIdentity gives requests carrying "Authorization: Bearer" (a
// service-account token) a lazily verified identity; other requests are
// their client certificate's or anonymous, as before, at no cost.
func withHTTPIdentity(guard *access.Authenticator, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := access.HTTPBearer(r); ok {
			hi := &httpIdentity{guard: guard}
			r = r.WithContext(context.WithValue(r.Context(), httpIdentityKey{}, hi))
			hi.r = r
		}
		h.ServeHTTP(w, r)
	})
}

// callerOf returns the identity of an HTTP caller: its verified client
// certificate's over HTTPS, else its service-account token's
// ("Authorization: Bearer"; refused with an *access.UnauthenticatedError
// when it does not verify or auth.kubernetes is off), else anonymous.
func callerOf(r *http.Request) (access.Identity, error) {
	hi, ok := r.Context().Value(httpIdentityKey{}).(*httpIdentity)
	if !ok {
		return access.TLSIdentity(r.TLS), nil
	}
	hi.once.Do(func() { hi.id, hi.err = hi.guard.HTTPIdentity(hi.r) })
	return hi.id, hi.err
}

// httpAuthorize applies the policy to an HTTP caller (callerOf). The
// caller has also proved it holds the credentials it presents.
func httpAuthorize(guard *access.Authenticator) func(*http.Request, broker.Selector) error {
	return func(r *http.Request, sel broker.Selector) error {
		id, err := callerOf(r)
		if err != nil {
			// An *access.UnauthenticatedError: 401 invalid_client.
			return err
		}
		// A refusal is an *access.DeniedError (access.ErrPermissionDenied),
		// which the endpoint maps to 403 access_denied.
		return guard.Policy().Authorize(id, sel)
	}
}

// httpCaller names an HTTP caller for the pass-through limits (callerOf;
// every anonymous caller is one identity).
func httpCaller(r *http.Request) string {
	id, _ := callerOf(r)
	return id.Name
}

// serveHTTP serves s on l until ctx ends, then shuts it down within
// timeout.
func serveHTTP(ctx context.Context, s *http.Server, l net.Listener, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var err error
		if s.TLSConfig != nil {
			err = s.ServeTLS(l, "", "")
		} else {
			err = s.Serve(l)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := s.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
