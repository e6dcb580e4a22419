package metrics

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// The cost accounting: per provider and per client (a broker-held
// client's name, or for pass-through the client id), the calls served and
// the upstream requests made; their difference is the requests saved, and
// at the provider's price per 1,000 requests the cost saved. Clients are
// capped at MaxLabelValues per provider (further ones are counted under
// OtherProvider), so the accounting's size is bounded whatever callers
// send. The hit path (Served) does one lookup in a copy-on-write map and
// two atomic adds; it never allocates once the client is known.

// ClientSavings is the cost accounting of one client of one provider.
type ClientSavings struct {
	// Provider is the provider's name.
	Provider string
	// Client is the broker-held client's name, the pass-through client id,
	// or OtherProvider for the clients beyond the cap.
	Client string
	// Served counts calls served: GetToken answers, WatchToken initial
	// tokens, and each new token pushed to a watcher (one per watcher:
	// a call the watcher would otherwise have made).
	Served int64
	// Upstream counts the HTTP requests sent to the token endpoint for
	// the client: every attempt of a retried fetch; none for a fetch the
	// request budget refused (never sent), nor for a token adopted from
	// another replica (counted by the replica that fetched it).
	Upstream int64
}

// Saved is the requests saved: calls served less upstream requests made,
// never below zero (refreshes nobody was served, retries and failed
// fetches can outnumber the calls: the broker then saved nothing).
func (c ClientSavings) Saved() int64 { return max(0, c.Served-c.Upstream) }

// SavingsStore keeps the fleet's cost accounting (the Redis tier);
// *shared.Tier implements it.
type SavingsStore interface {
	// AddSavings adds the counts of d (deltas since the last call) to the
	// fleet's figures.
	AddSavings(ctx context.Context, d []ClientSavings) error
	// LoadSavings returns the fleet's figures.
	LoadSavings(ctx context.Context) ([]ClientSavings, error)
}

// clientKey names one client of one provider.
type clientKey struct{ provider, client string }

// clientCounts are the replica's counts of one client, and what of them
// was already added to the fleet's figures.
type clientCounts struct {
	served, upstream   atomic.Int64
	flushedS, flushedU int64 // guarded by savings.flushMu
}

// savingsState is one copy-on-write state of savings.clients.
type savingsState struct {
	counts  map[clientKey]*clientCounts
	clients map[string]map[string]bool // per provider, for the cap
}

// savings is the replica's cost accounting.
type savings struct {
	state   atomic.Pointer[savingsState]
	mu      sync.Mutex // serialises writers of state
	flushMu sync.Mutex // serialises flushes
	prices  atomic.Pointer[map[string]float64]
	store   atomic.Pointer[storeRef]

	served, upstream, saved, cost *prometheus.Desc
}

type storeRef struct{ s SavingsStore }

func newSavings() *savings {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, []string{"provider", "client", "scope"}, nil)
	}
	s := &savings{
		served: desc("savings_calls_served_total",
			"Calls served (GetToken answers, WatchToken initial tokens and tokens pushed to each watcher), by provider and client (held client name or pass-through client id, at most 100 per provider, further ones under _other); scope fleet (every replica, from Redis) or replica."),
		upstream: desc("savings_upstream_requests_total",
			"Upstream token requests sent (HTTP requests, retries included), by provider and client; scope fleet or replica."),
		saved: desc("savings_requests_saved",
			"Requests saved: calls served less upstream requests made (never below 0), by provider and client; scope fleet or replica."),
		cost: desc("savings_cost_saved",
			"Estimated cost saved: requests saved times the provider's price_per_1000_requests / 1000 (only for providers with a price); scope fleet or replica."),
	}
	s.state.Store(&savingsState{counts: map[clientKey]*clientCounts{}, clients: map[string]map[string]bool{}})
	s.prices.Store(&map[string]float64{})
	return s
}

// counts returns the counters of provider's client, creating them on
// first use (past the cap, those of OtherProvider).
func (s *savings) counts(provider, client string) *clientCounts {
	provider, client = orOther(provider), orOther(client)
	st := s.state.Load()
	if c, ok := st.counts[clientKey{provider, client}]; ok {
		return c
	}
	if len(st.clients[provider]) >= MaxLabelValues {
		// Past the cap: no lock on the hit path for clients beyond it.
		if c, ok := st.counts[clientKey{provider, OtherProvider}]; ok {
			return c
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st = s.state.Load()
	if c, ok := st.counts[clientKey{provider, client}]; ok {
		return c
	}
	client = capValue(st.clients[provider], client, MaxLabelValues)
	if c, ok := st.counts[clientKey{provider, client}]; ok {
		return c
	}
	// Providers are bounded by the configuration; MaxProviders guards
	// against a caller bug.
	if st.clients[provider] == nil && len(st.clients) >= MaxProviders {
		provider = OtherProvider
	}
	next := &savingsState{counts: maps.Clone(st.counts), clients: maps.Clone(st.clients)}
	next.clients[provider] = withValue(st.clients[provider], client)
	c := &clientCounts{}
	next.counts[clientKey{provider, client}] = c
	s.state.Store(next)
	return c
}

// local returns the replica's figures, sorted by provider and client.
func (s *savings) local() []ClientSavings {
	st := s.state.Load()
	out := make([]ClientSavings, 0, len(st.counts))
	for k, c := range st.counts {
		out = append(out, ClientSavings{Provider: k.provider, Client: k.client, Served: c.served.Load(), Upstream: c.upstream.Load()})
	}
	sortSavings(out)
	return out
}

func sortSavings(out []ClientSavings) {
	slices.SortFunc(out, func(a, b ClientSavings) int {
		return cmp.Or(cmp.Compare(a.Provider, b.Provider), cmp.Compare(a.Client, b.Client))
	})
}

// SetPrice sets provider's price per 1,000 upstream requests (0: none,
// no cost figure).
func (m *Metrics) SetPrice(provider string, per1000 float64) {
	if m == nil {
		return
	}
	for {
		old := m.savings.prices.Load()
		next := maps.Clone(*old)
		if per1000 > 0 {
			next[provider] = per1000
		} else {
			delete(next, provider)
		}
		if m.savings.prices.CompareAndSwap(old, &next) {
			return
		}
	}
}

// Price returns provider's price per 1,000 requests, and whether it has
// one.
func (m *Metrics) Price(provider string) (float64, bool) {
	if m == nil {
		return 0, false
	}
	p, ok := (*m.savings.prices.Load())[provider]
	return p, ok
}

// SetSavingsStore makes the fleet's figures (kept in store) those that
// Savings and the metrics report; FlushSavings (run by RunSavings) adds
// the replica's counts to them.
func (m *Metrics) SetSavingsStore(store SavingsStore) {
	if m == nil || store == nil {
		return
	}
	m.savings.store.Store(&storeRef{store})
}

// Savings returns the cost accounting, sorted by provider and client:
// the fleet's figures when a SavingsStore is set and answers (fleet
// true), else the replica's.
func (m *Metrics) Savings(ctx context.Context) (figures []ClientSavings, fleet bool) {
	if m == nil {
		return nil, false
	}
	if ref := m.savings.store.Load(); ref != nil {
		if out, err := ref.s.LoadSavings(ctx); err == nil {
			sortSavings(out)
			return out, true
		}
	}
	return m.savings.local(), false
}

// FlushSavings adds the replica's counts since the last flush to the
// fleet's figures. Counts a failed flush did not add are added by the
// next one.
func (m *Metrics) FlushSavings(ctx context.Context) error {
	if m == nil {
		return nil
	}
	ref := m.savings.store.Load()
	if ref == nil {
		return nil
	}
	m.savings.flushMu.Lock()
	defer m.savings.flushMu.Unlock()
	type pending struct {
		c    *clientCounts
		s, u int64
	}
	var deltas []ClientSavings
	var marks []pending
	for k, c := range m.savings.state.Load().counts {
		s, u := c.served.Load(), c.upstream.Load()
		if s == c.flushedS && u == c.flushedU {
			continue
		}
		deltas = append(deltas, ClientSavings{Provider: k.provider, Client: k.client, Served: s - c.flushedS, Upstream: u - c.flushedU})
		marks = append(marks, pending{c, s, u})
	}
	if len(deltas) == 0 {
		return nil
	}
	if err := ref.s.AddSavings(ctx, deltas); err != nil {
		return err
	}
	for _, p := range marks {
		p.c.flushedS, p.c.flushedU = p.s, p.u
	}
	return nil
}

// SavingsFlushInterval is how often RunSavings adds the replica's counts
// to the fleet's figures.
const SavingsFlushInterval = time.Second

// RunSavings flushes the replica's counts to the SavingsStore every
// SavingsFlushInterval, and once more when ctx ends; it returns nil then.
// Without a store it only waits for ctx.
func (m *Metrics) RunSavings(ctx context.Context) error {
	if m == nil {
		<-ctx.Done()
		return nil
	}
	tick := time.NewTicker(SavingsFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = m.FlushSavings(fctx)
			cancel()
			return nil
		case <-tick.C:
			_ = m.FlushSavings(ctx) // the Redis tier reports its own failures
		}
	}
}

// upstreamSent reports whether a fetch that ended with err sent a request
// to the endpoint: not when it was refused or stopped locally.
func upstreamSent(err error) bool {
	var ue *upstream.Error
	return err == nil || !errors.As(err, &ue) || !ue.Local
}

// UpstreamRequest counts the HTTP requests an upstream fetch f that ended
// with err sent (f.Requests, retries included) against its client's cost
// accounting. A fetch that does not say (f.Requests 0) counts one request
// unless it was refused locally.
func (m *Metrics) UpstreamRequest(f broker.Fetch, err error) {
	if m == nil {
		return
	}
	n := int64(f.Requests)
	if n <= 0 {
		if !upstreamSent(err) {
			return
		}
		n = 1
	}
	m.savings.counts(f.Provider, m.clientOf(f)).upstream.Add(n)
}

// PassthroughClient stands for every pass-through caller's client in the
// cost accounting unless client ids may be labels (WithClientIDLabel).
const PassthroughClient = "_passthrough"

// clientOf is f's client for the accounting: a held client's name; a
// pass-through client id only with WithClientIDLabel, else
// PassthroughClient.
func (m *Metrics) clientOf(f broker.Fetch) string {
	switch {
	case f.Passthrough && !m.opts.clientID:
		// A caller's client id is shown only where the operator chose to
		// label by client id (metrics.client_id_label).
		return PassthroughClient
	case f.Client != "":
		return f.Client
	}
	return f.ClientID
}

// Describe implements prometheus.Collector.
func (s *savings) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.served
	ch <- s.upstream
	ch <- s.saved
	ch <- s.cost
}

// collector exports the cost accounting of m.
type savingsCollector struct{ m *Metrics }

// Describe implements prometheus.Collector.
func (c savingsCollector) Describe(ch chan<- *prometheus.Desc) { c.m.savings.Describe(ch) }

// Collect implements prometheus.Collector.
func (c savingsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	figures, fleet := c.m.Savings(ctx)
	scope := "replica"
	if fleet {
		scope = "fleet"
	}
	s := c.m.savings
	send := func(d *prometheus.Desc, t prometheus.ValueType, v float64, f ClientSavings) {
		m, err := prometheus.NewConstMetric(d, t, v, f.Provider, f.Client, scope)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	for _, f := range figures {
		send(s.served, prometheus.CounterValue, float64(f.Served), f)
		send(s.upstream, prometheus.CounterValue, float64(f.Upstream), f)
		send(s.saved, prometheus.GaugeValue, float64(f.Saved()), f)
		if price, ok := c.m.Price(f.Provider); ok {
			send(s.cost, prometheus.GaugeValue, float64(f.Saved())*price/1000, f)
		}
	}
}
