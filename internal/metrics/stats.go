package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// statsCollector exports a broker.Stats, read once per scrape, and the
// state of the Redis tier.
type statsCollector struct {
	stats    func() broker.Stats
	state    atomic.Int32                     // index in sharedStates of the current state
	failures [len(sharedReasons)]atomic.Int64 // failed Redis operations, by index in sharedReasons

	hits, misses, coalesced, refreshes, invalidations, evictions *prometheus.Desc
	entries, watchers, costUsed, maxCost                         *prometheus.Desc
	upstream, sharedState, sharedErrors                          *prometheus.Desc
}

// providerOutcomes maps the outcome label values of
// tokenbroker_upstream_requests_total to the broker's per-provider
// counters. The broker counts invalid_client, invalid_scope and
// unauthorized_client as rejected.
var providerOutcomes = [...]struct {
	outcome string
	count   func(broker.ProviderStats) int64
}{
	{OutcomeOK, func(p broker.ProviderStats) int64 { return p.OK }},
	{OutcomeThrottled, func(p broker.ProviderStats) int64 { return p.Throttled }},
	{OutcomeUnavailable, func(p broker.ProviderStats) int64 { return p.Unavailable }},
	{OutcomeRejected, func(p broker.ProviderStats) int64 { return p.Rejected }},
	{OutcomeError, func(p broker.ProviderStats) int64 { return p.Other }},
	{OutcomeBudgetRefused, func(p broker.ProviderStats) int64 { return p.BudgetRefused }},
}

func newStatsCollector(stats func() broker.Stats) *statsCollector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &statsCollector{
		stats: stats,
		hits: desc("cache_hits_total",
			"Token requests served from the cache."),
		misses: desc("cache_misses_total",
			"Token requests that needed an upstream fetch, their own or one already under way."),
		coalesced: desc("cache_coalesced_waits_total",
			"Cache misses that waited for a fetch another request had started instead of starting one."),
		refreshes: desc("refreshes_total",
			"Background token refreshes the broker started (retries after a failure included)."),
		invalidations: desc("invalidations_total",
			"Cache entries invalidated by operators, on this replica or announced by the fleet."),
		evictions: desc("cache_evictions_total",
			"Tokens the cache evicted to make room for others."),
		entries: desc("entries",
			"Keys the broker tracks: fetches in flight, watched keys and recently used keys."),
		watchers: desc("watchers",
			"Open token subscriptions (WatchToken streams)."),
		costUsed: desc("cache_used_bytes",
			"Bytes the cached tokens are charged for."),
		maxCost: desc("cache_capacity_bytes",
			"The token cache's capacity in bytes."),
		upstream: desc("upstream_requests_total",
			"Upstream token fetches by provider and outcome (rejected includes invalid_client, invalid_scope and unauthorized_client; throttled counts the provider's own throttling answers, budget_refused the fetches our request budget refused, which were never sent).",
			"provider", "outcome"),
		sharedState: desc("shared_state",
			"State of the Redis tier: 1 for the current state, 0 for the others.",
			"state"),
		sharedErrors: desc("shared_errors_total",
			"Failed operations of the Redis tier, by reason (auth_failed, connection_refused, timeout, unreachable, tls, error).",
			"reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.hits, c.misses, c.coalesced, c.refreshes, c.invalidations, c.evictions,
		c.entries, c.watchers, c.costUsed, c.maxCost, c.upstream, c.sharedState, c.sharedErrors,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	send := func(d *prometheus.Desc, t prometheus.ValueType, v int64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, t, float64(v), labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	send(c.hits, prometheus.CounterValue, s.Hits)
	send(c.misses, prometheus.CounterValue, s.Misses)
	send(c.coalesced, prometheus.CounterValue, s.CoalescedWaits)
	send(c.refreshes, prometheus.CounterValue, s.Refreshes)
	send(c.invalidations, prometheus.CounterValue, s.Invalidations)
	send(c.evictions, prometheus.CounterValue, s.Evictions)
	send(c.entries, prometheus.GaugeValue, s.Entries)
	send(c.watchers, prometheus.GaugeValue, s.Watchers)
	send(c.costUsed, prometheus.GaugeValue, s.CostUsed)
	send(c.maxCost, prometheus.GaugeValue, s.MaxCost)
	for name, p := range s.Providers {
		for _, o := range providerOutcomes {
			send(c.upstream, prometheus.CounterValue, o.count(p), name, o.outcome)
		}
	}
	current := int(c.state.Load())
	for i, state := range sharedStates {
		v := int64(0)
		if i == current {
			v = 1
		}
		send(c.sharedState, prometheus.GaugeValue, v, state)
	}
	for i, reason := range sharedReasons {
		send(c.sharedErrors, prometheus.CounterValue, c.failures[i].Load(), reason)
	}
}
