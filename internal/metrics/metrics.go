// Package metrics exports tokenbroker's Prometheus metrics.
//
// The broker's own counters and gauges (broker.Stats) are read once per
// scrape and exported as constant metrics, so the broker stays the one
// source of truth for them. What the broker does not count — upstream
// latency, the lead time of refreshes, the remaining life of served tokens,
// the state of the Redis tier — is observed through the hooks of Metrics.
// RPC metrics come from go-grpc-middleware's Prometheus provider (GRPC).
//
// Label values are bounded: provider names (configured, and capped at
// MaxProviders distinct values), the Outcome* constants and the Shared*
// states. Only when enabled (WithClientIDLabel, WithKeyIDLabel) does the
// upstream request histogram also carry the client id or the key id, each
// capped at MaxLabelValues distinct values. No secret or token is ever a
// label or a value.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// The outcomes of an upstream fetch, as the `outcome` label shows them:
// the names of the upstream.Outcome values (upstream.OutcomeOf classifies).
const (
	// OutcomeOK: the endpoint issued a token.
	OutcomeOK = "ok"
	// OutcomeInvalidClient: the endpoint rejected the client credentials.
	OutcomeInvalidClient = "invalid_client"
	// OutcomeInvalidScope: a requested scope is unknown or not allowed.
	OutcomeInvalidScope = "invalid_scope"
	// OutcomeUnauthorizedClient: the client may not use the grant.
	OutcomeUnauthorizedClient = "unauthorized_client"
	// OutcomeThrottled: the endpoint throttled the fetch (429, or 400
	// TooManyRequestsException): the provider's own quota answer.
	OutcomeThrottled = "throttled"
	// OutcomeUnavailable: 5xx, network failure or a malformed answer.
	OutcomeUnavailable = "unavailable"
	// OutcomeRejected: any other rejection by the endpoint.
	OutcomeRejected = "rejected"
	// OutcomeError: anything else (a context error, an internal failure).
	OutcomeError = "error"
	// OutcomeBudgetRefused: our own request budget (the replica's or the
	// fleet's) refused the fetch; nothing was sent.
	OutcomeBudgetRefused = "budget_refused"
)

// The states of the Redis tier, as the `state` label shows them.
const (
	// SharedDisabled: no Redis tier is configured.
	SharedDisabled = "disabled"
	// SharedClosed: the circuit breaker is closed; Redis is in use.
	SharedClosed = "closed"
	// SharedHalfOpen: the breaker is probing Redis after an outage.
	SharedHalfOpen = "half_open"
	// SharedOpen: the breaker is open; Redis is skipped.
	SharedOpen = "open"
)

// MaxProviders is the most distinct provider label values the hooks
// record. Hook calls for further providers (which a valid configuration
// does not have) are recorded under OtherProvider, so a caller bug cannot
// blow up the number of series.
const MaxProviders = 64

// OtherProvider is the provider label value of hook calls for an empty
// provider name or for providers beyond MaxProviders. Configured provider
// names cannot start with an underscore, so it never names a real one.
// It is also the overflow value of the optional client_id and key_id
// labels.
const OtherProvider = "_other"

// MaxLabelValues is the most distinct values each optional label
// (client_id, key_id) records; further values are recorded as
// OtherProvider.
const MaxLabelValues = 100

// Option adds an optional label to the upstream request histogram.
type Option func(*options)

type options struct{ clientID, keyID bool }

// WithClientIDLabel adds a client_id label (the OAuth client id, which is
// not a secret) to tokenbroker_upstream_request_duration_seconds.
func WithClientIDLabel() Option { return func(o *options) { o.clientID = true } }

// WithKeyIDLabel adds a key_id label (the cache entry's non-secret id) to
// tokenbroker_upstream_request_duration_seconds.
func WithKeyIDLabel() Option { return func(o *options) { o.keyID = true } }

const namespace = "tokenbroker"

// sharedStates are the values of the `state` label, in a fixed order; the
// index of the current one is what Metrics keeps.
var sharedStates = [...]string{SharedDisabled, SharedClosed, SharedHalfOpen, SharedOpen}

// sharedReasons are the values of the `reason` label of
// tokenbroker_shared_errors_total: the Redis tier's failure reasons
// (shared.Reasons), in a fixed order; the last one, "error", also counts
// any value outside the set.
var sharedReasons = [...]string{"auth_failed", "connection_refused", "timeout", "unreachable", "tls", "error"}

// Histogram buckets, in seconds.
var (
	// upstreamBuckets span a fast token endpoint (5 ms) to a fetch that
	// retried with backoff up to its deadline (30 s).
	upstreamBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// lifeBuckets span 1 s to a day on a roughly exponential ladder of
	// human time units: tokens live 5 min to 1 day, min_remaining is 30 s
	// by default and a refresh normally leads expiry by a quarter of the
	// token's life.
	lifeBuckets = []float64{1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, 7200, 21600, 43200, 86400}
	// grpcBuckets span a cache hit (sub-millisecond) to a GetToken that
	// waited for a slow upstream. WatchToken streams, which last as long
	// as the subscription, land in +Inf.
	grpcBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// Metrics holds tokenbroker's metrics and the hooks the broker calls.
// Its methods are safe for concurrent use, and a nil *Metrics ignores
// every hook, so that code paths without metrics need no checks.
type Metrics struct {
	upstream *prometheus.HistogramVec
	refresh  *prometheus.HistogramVec
	served   prometheus.Histogram
	grpc     *grpcprom.ServerMetrics
	stats    *statsCollector
	sds      *sdsMetrics
	budget   *budgetMetrics
	savings  *savings
	opts     options

	// observers caches the histogram series per label values, so that the
	// hooks neither allocate nor hash labels. It is copied on write: the
	// hooks load it without locking.
	observers atomic.Pointer[seriesCache]
	mu        sync.Mutex // serialises writers of observers
}

// seriesKey identifies one labelled series of one histogram.
type seriesKey struct {
	vec      *prometheus.HistogramVec
	provider string
	outcome  string
	clientID string // "" unless the client_id label is enabled
	keyID    string // "" unless the key_id label is enabled
}

// New creates tokenbroker's metrics and registers them, and the gRPC
// server metrics, on reg. stats is called once per scrape; the counters
// and gauges of the broker.Stats it returns are exported as they are.
//
// New fails when reg or stats is nil or when a metric cannot be
// registered (for example because New already ran with the same reg); it
// then leaves nothing registered.
func New(reg prometheus.Registerer, stats func() broker.Stats, opts ...Option) (*Metrics, error) {
	switch {
	case reg == nil:
		return nil, errors.New("metrics: registerer is nil, want a prometheus.Registerer")
	case stats == nil:
		return nil, errors.New("metrics: stats is nil, want a function returning the broker's statistics")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	upstreamLabels := []string{"provider", "outcome"}
	if o.clientID {
		upstreamLabels = append(upstreamLabels, "client_id")
	}
	if o.keyID {
		upstreamLabels = append(upstreamLabels, "key_id")
	}
	m := &Metrics{
		opts: o,
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "upstream_request_duration_seconds",
			Help:      "Time taken by upstream token fetches (retries and backoff included), by provider and outcome (and client_id, key_id when enabled).",
			Buckets:   upstreamBuckets,
		}, upstreamLabels),
		refresh: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "refresh_lead_seconds",
			Help:      "Remaining life of the token a refresh replaced, when the new token was installed, by provider.",
			Buckets:   lifeBuckets,
		}, []string{"provider"}),
		served: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "served_token_remaining_seconds",
			Help:      "Remaining life of the tokens served to callers, when served.",
			Buckets:   lifeBuckets,
		}),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(grpcBuckets),
		)),
		stats:   newStatsCollector(stats),
		sds:     newSDSMetrics(),
		budget:  newBudgetMetrics(),
		savings: newSavings(),
	}
	m.observers.Store(&seriesCache{series: map[seriesKey]prometheus.Observer{}})

	cs := []prometheus.Collector{m.stats, m.upstream, m.refresh, m.served, m.grpc}
	cs = append(cs, m.sds.collectors()...)
	cs = append(cs, m.budget.collectors()...)
	cs = append(cs, savingsCollector{m})
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// UpstreamDone records an upstream fetch u that ended with outcome (one
// of the Outcome* constants; see Outcome) after d. An outcome outside that
// set is recorded as OutcomeError. u's client id and key id are recorded
// only when their labels are enabled.
func (m *Metrics) UpstreamDone(u broker.Fetch, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	if !validOutcome(outcome) {
		outcome = OutcomeError
	}
	k := seriesKey{vec: m.upstream, provider: u.Provider, outcome: outcome}
	if m.opts.clientID {
		k.clientID = orOther(u.ClientID)
	}
	if m.opts.keyID {
		k.keyID = orOther(u.KeyID)
	}
	m.observer(k).Observe(d.Seconds())
}

// orOther returns v, or OtherProvider for an empty v.
func orOther(v string) string {
	if v == "" {
		return OtherProvider
	}
	return v
}

// Refreshed records a background refresh for provider whose new token was
// installed leadBeforeExpiry before the old one expired. A negative lead
// (the old token had already expired) is recorded as zero.
func (m *Metrics) Refreshed(provider string, leadBeforeExpiry time.Duration) {
	if m == nil {
		return
	}
	m.observer(seriesKey{vec: m.refresh, provider: provider}).Observe(max(leadBeforeExpiry, 0).Seconds())
}

// Served records the remaining life of a token served to a caller of
// f's provider and client (f.Client, else f.ClientID), and counts the
// call in that client's cost accounting. A negative duration is recorded
// as zero.
func (m *Metrics) Served(f broker.Fetch, remaining time.Duration) {
	if m == nil {
		return
	}
	m.served.Observe(max(remaining, 0).Seconds())
	m.savings.counts(f.Provider, m.clientOf(f)).served.Add(1)
}

// SetSharedState sets the state of the Redis tier: SharedDisabled,
// SharedClosed, SharedHalfOpen or SharedOpen ("half-open" is accepted for
// SharedHalfOpen). The tokenbroker_shared_state series of that state is 1,
// the others 0. An unknown state is ignored. The state is SharedDisabled
// until the first call.
func (m *Metrics) SetSharedState(state string) {
	if m == nil {
		return
	}
	if state == "half-open" {
		state = SharedHalfOpen
	}
	for i, s := range sharedStates {
		if s == state {
			m.stats.state.Store(int32(i))
			return
		}
	}
}

// SharedFailed counts a failed Redis operation of the tier by its reason
// (auth_failed, connection_refused, timeout, unreachable, tls or error; any
// other value counts as error), exported as
// tokenbroker_shared_errors_total{reason}.
func (m *Metrics) SharedFailed(reason string) {
	if m == nil {
		return
	}
	i := len(sharedReasons) - 1
	for j, r := range sharedReasons {
		if r == reason {
			i = j
			break
		}
	}
	m.stats.failures[i].Add(1)
}

// GRPC returns the gRPC server metrics (go-grpc-middleware's Prometheus
// provider, with the handling-time histogram), already registered. Add its
// UnaryServerInterceptor and StreamServerInterceptor to the server, and
// call InitializeMetrics with the server once its services are registered.
func (m *Metrics) GRPC() *grpcprom.ServerMetrics {
	if m == nil {
		return nil
	}
	return m.grpc
}

// seriesCache is one copy-on-write state of Metrics.observers: the series
// created so far and the distinct values of each capped label among them.
type seriesCache struct {
	series    map[seriesKey]prometheus.Observer
	providers map[string]bool
	clientIDs map[string]bool
	keyIDs    map[string]bool
}

// capped returns k with every value that is new to its label, once the
// label has reached its cap (MaxProviders, MaxLabelValues), replaced by
// OtherProvider. Disabled labels ("") stay as they are.
func (c *seriesCache) capped(k seriesKey) seriesKey {
	k.provider = capValue(c.providers, orOther(k.provider), MaxProviders)
	if k.clientID != "" {
		k.clientID = capValue(c.clientIDs, k.clientID, MaxLabelValues)
	}
	if k.keyID != "" {
		k.keyID = capValue(c.keyIDs, k.keyID, MaxLabelValues)
	}
	return k
}

// capValue returns v, or OtherProvider when v is not among seen and seen
// already holds limit values.
func capValue(seen map[string]bool, v string, limit int) string {
	if !seen[v] && len(seen) >= limit {
		return OtherProvider
	}
	return v
}

// with returns a copy of c with series k added.
func (c *seriesCache) with(k seriesKey, o prometheus.Observer) *seriesCache {
	next := &seriesCache{
		series:    maps.Clone(c.series),
		providers: withValue(c.providers, k.provider),
		clientIDs: withValue(c.clientIDs, k.clientID),
		keyIDs:    withValue(c.keyIDs, k.keyID),
	}
	next.series[k] = o
	return next
}

// withValue returns seen, or a copy of it with v added when v is a new
// value (not "").
func withValue(seen map[string]bool, v string) map[string]bool {
	if v == "" || seen[v] {
		return seen
	}
	next := maps.Clone(seen)
	if next == nil {
		next = map[string]bool{}
	}
	next[v] = true
	return next
}

// observer returns the series k (its values capped), creating it on first
// use.
func (m *Metrics) observer(k seriesKey) prometheus.Observer {
	c := m.observers.Load()
	k = c.capped(k)
	if o, ok := c.series[k]; ok {
		return o
	}
	return m.addObserver(k)
}

// addObserver creates the series of k, whose values observer capped, and
// adds it to m.observers.
func (m *Metrics) addObserver(k seriesKey) prometheus.Observer {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.observers.Load()
	// Cap again: another series may have filled a label meanwhile.
	k = c.capped(k)
	if o, ok := c.series[k]; ok {
		return o
	}
	var o prometheus.Observer
	if k.vec == m.upstream {
		values := []string{k.provider, k.outcome}
		if m.opts.clientID {
			values = append(values, k.clientID)
		}
		if m.opts.keyID {
			values = append(values, k.keyID)
		}
		o = k.vec.WithLabelValues(values...)
	} else {
		o = k.vec.WithLabelValues(k.provider)
	}
	m.observers.Store(c.with(k, o))
	return o
}

// validOutcome reports whether s is the name of an upstream.Outcome (the
// Outcome* constants).
func validOutcome(s string) bool {
	for _, o := range upstream.Outcomes {
		if o.String() == s {
			return true
		}
	}
	return false
}

// Outcome maps the error of an upstream fetch (nil for success) to its
// outcome label: upstream.OutcomeOf(err).String(), the classification the
// broker's per-provider statistics use too. The error's text is never
// looked at.
func Outcome(err error) string {
	return upstream.OutcomeOf(err).String()
}

// Handler returns an HTTP handler that serves the metrics g gathers in the
// Prometheus exposition formats. A metric that fails to gather is left out
// and logged (with slog's default logger); the others are still served.
func Handler(g prometheus.Gatherer) http.Handler {
	if g == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "metrics: no gatherer configured", http.StatusInternalServerError)
		})
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            slogPrinter{},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		// A scraper that asks for OpenMetrics gets it, with the request
		// histograms' exemplars (trace ids, when tracing is on).
		EnableOpenMetrics: true,
	})
}

// slogPrinter logs promhttp's errors with slog.
type slogPrinter struct{}

// Println implements promhttp.Logger.
func (slogPrinter) Println(v ...any) {
	slog.Default().Log(context.Background(), slog.LevelWarn, "metrics: "+fmt.Sprint(v...))
}
