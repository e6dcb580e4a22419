package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// fakeStats is a stats func whose answer the test sets.
type fakeStats struct {
	mu sync.Mutex
	s  broker.Stats
}

func (f *fakeStats) set(s broker.Stats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s = s
}

func (f *fakeStats) get() broker.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

// sampleStats has a distinct value in every field.
func sampleStats() broker.Stats {
	return broker.Stats{
		Hits: 101, Misses: 102, CoalescedWaits: 103, Refreshes: 104, Invalidations: 105,
		Entries: 106, CostUsed: 107, MaxCost: 108, Evictions: 109, Watchers: 110,
		Providers: map[string]broker.ProviderStats{
			"cognito": {OK: 11, Throttled: 12, Unavailable: 13, Rejected: 14, Other: 15},
			"okta":    {OK: 21},
		},
	}
}

// newTest returns Metrics registered on a fresh registry, fed by a
// fakeStats holding sampleStats.
func newTest(t *testing.T) (*Metrics, *prometheus.Registry, *fakeStats) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	fs := &fakeStats{s: sampleStats()}
	m, err := New(reg, fs.get)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	return m, reg, fs
}

// gather returns reg's metric families by name.
func gather(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: got error %v, want nil", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// series returns the metric of family name whose labels are exactly
// labels (name=value pairs), or nil.
func series(mfs map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		match := true
		for i, lp := range m.GetLabel() {
			if lp.GetName() != labels[2*i] || lp.GetValue() != labels[2*i+1] {
				match = false
				break
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// value returns the value of a counter or gauge series; it fails the test
// when the series is missing.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := series(mfs, name, labels...)
	switch {
	case m == nil:
		t.Fatalf("%s%v: got no series, want one", name, labels)
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%v: got neither counter nor gauge", name, labels)
	return 0
}

// histogram returns a histogram series; it fails the test when the series
// is missing.
func histogram(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) *dto.Histogram {
	t.Helper()
	m := series(mfs, name, labels...)
	if m == nil || m.Histogram == nil {
		t.Fatalf("%s%v: got no histogram series, want one", name, labels)
	}
	return m.Histogram
}

// bucket returns the cumulative count of h's bucket with upper bound le.
func bucket(t *testing.T, h *dto.Histogram, le float64) uint64 {
	t.Helper()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("got no bucket le=%v, want one", le)
	return 0
}

// exercise calls every hook once so that every histogram has a series.
func exercise(m *Metrics) {
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeOK, 120*time.Millisecond)
	m.Refreshed("cognito", 15*time.Minute)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, 45*time.Minute)
	m.SetSharedState(SharedClosed)
}

// healthServer returns a gRPC server with the health service registered,
// for InitializeMetrics.
func healthServer(t *testing.T) *grpc.Server {
	t.Helper()
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	t.Cleanup(s.Stop)
	return s
}

// ownMetrics are the metric families New registers besides the gRPC ones,
// with their types.
var ownMetrics = map[string]dto.MetricType{
	"tokenbroker_cache_hits_total":                  dto.MetricType_COUNTER,
	"tokenbroker_cache_misses_total":                dto.MetricType_COUNTER,
	"tokenbroker_cache_coalesced_waits_total":       dto.MetricType_COUNTER,
	"tokenbroker_refreshes_total":                   dto.MetricType_COUNTER,
	"tokenbroker_invalidations_total":               dto.MetricType_COUNTER,
	"tokenbroker_cache_evictions_total":             dto.MetricType_COUNTER,
	"tokenbroker_entries":                           dto.MetricType_GAUGE,
	"tokenbroker_watchers":                          dto.MetricType_GAUGE,
	"tokenbroker_cache_used_bytes":                  dto.MetricType_GAUGE,
	"tokenbroker_cache_capacity_bytes":              dto.MetricType_GAUGE,
	"tokenbroker_upstream_requests_total":           dto.MetricType_COUNTER,
	"tokenbroker_shared_state":                      dto.MetricType_GAUGE,
	"tokenbroker_shared_errors_total":               dto.MetricType_COUNTER,
	"tokenbroker_upstream_request_duration_seconds": dto.MetricType_HISTOGRAM,
	"tokenbroker_refresh_lead_seconds":              dto.MetricType_HISTOGRAM,
	"tokenbroker_served_token_remaining_seconds":    dto.MetricType_HISTOGRAM,
	"tokenbroker_savings_calls_served_total":        dto.MetricType_COUNTER,
	"tokenbroker_savings_upstream_requests_total":   dto.MetricType_COUNTER,
	"tokenbroker_savings_requests_saved":            dto.MetricType_GAUGE,
	"grpc_server_started_total":                     dto.MetricType_COUNTER,
	"grpc_server_handled_total":                     dto.MetricType_COUNTER,
	"grpc_server_msg_received_total":                dto.MetricType_COUNTER,
	"grpc_server_msg_sent_total":                    dto.MetricType_COUNTER,
	"grpc_server_handling_seconds":                  dto.MetricType_HISTOGRAM,
}

func TestEveryMetricPresentWithHelp(t *testing.T) {
	m, reg, _ := newTest(t)
	exercise(m)
	// The gRPC families appear once they have a series.
	m.GRPC().InitializeMetrics(healthServer(t))
	mfs := gather(t, reg)
	for name, typ := range ownMetrics {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("%s: got no family, want one", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s: got type %v, want %v", name, mf.GetType(), typ)
		}
		if strings.TrimSpace(mf.GetHelp()) == "" {
			t.Errorf("%s: got empty help, want some", name)
		}
	}
	for name := range mfs {
		if _, ok := ownMetrics[name]; !ok {
			t.Errorf("got unexpected family %s, want only the listed ones", name)
		}
	}
}

func TestLint(t *testing.T) {
	m, reg, _ := newTest(t)
	exercise(m)
	m.GRPC().InitializeMetrics(healthServer(t))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("GatherAndLint: got error %v, want nil", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestStatsExported(t *testing.T) {
	_, reg, fs := newTest(t)
	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenbroker_cache_hits_total", nil, 101},
		{"tokenbroker_cache_misses_total", nil, 102},
		{"tokenbroker_cache_coalesced_waits_total", nil, 103},
		{"tokenbroker_refreshes_total", nil, 104},
		{"tokenbroker_invalidations_total", nil, 105},
		{"tokenbroker_entries", nil, 106},
		{"tokenbroker_cache_used_bytes", nil, 107},
		{"tokenbroker_cache_capacity_bytes", nil, 108},
		{"tokenbroker_cache_evictions_total", nil, 109},
		{"tokenbroker_watchers", nil, 110},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "ok", "provider", "cognito"}, 11},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "throttled", "provider", "cognito"}, 12},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "unavailable", "provider", "cognito"}, 13},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "rejected", "provider", "cognito"}, 14},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "error", "provider", "cognito"}, 15},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "ok", "provider", "okta"}, 21},
		{"tokenbroker_upstream_requests_total", []string{"outcome", "throttled", "provider", "okta"}, 0},
		{"tokenbroker_shared_state", []string{"state", "disabled"}, 1},
		{"tokenbroker_shared_state", []string{"state", "closed"}, 0},
	}
	mfs := gather(t, reg)
	for _, tt := range tests {
		if got := value(t, mfs, tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v: got %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if got, want := len(mfs["tokenbroker_upstream_requests_total"].GetMetric()), 2*len(providerOutcomes); got != want {
		t.Errorf("tokenbroker_upstream_requests_total: got %d series, want %d", got, want)
	}

	// The next scrape reads the stats again.
	next := sampleStats()
	next.Hits, next.Watchers = 500, 3
	delete(next.Providers, "okta")
	fs.set(next)
	mfs = gather(t, reg)
	if got := value(t, mfs, "tokenbroker_cache_hits_total"); got != 500 {
		t.Errorf("tokenbroker_cache_hits_total after change: got %v, want 500", got)
	}
	if got := value(t, mfs, "tokenbroker_watchers"); got != 3 {
		t.Errorf("tokenbroker_watchers after change: got %v, want 3", got)
	}
	if s := series(mfs, "tokenbroker_upstream_requests_total", "outcome", "ok", "provider", "okta"); s != nil {
		t.Errorf("upstream requests of a provider gone from the stats: got a series, want none")
	}
}

func TestStatsReadOncePerScrape(t *testing.T) {
	var calls atomic.Int64
	reg := prometheus.NewRegistry()
	if _, err := New(reg, func() broker.Stats { calls.Add(1); return sampleStats() }); err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	if got := calls.Load(); got != 0 {
		t.Errorf("stats calls before a scrape: got %d, want 0", got)
	}
	gather(t, reg)
	if got := calls.Load(); got != 1 {
		t.Errorf("stats calls after one scrape: got %d, want 1", got)
	}
}

func TestUpstreamDone(t *testing.T) {
	m, reg, _ := newTest(t)
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeOK, 120*time.Millisecond)
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeOK, 3*time.Millisecond)
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeThrottled, 2*time.Second)
	m.UpstreamDone(broker.Fetch{Provider: "okta"}, OutcomeInvalidClient, 40*time.Millisecond)
	m.UpstreamDone(broker.Fetch{Provider: "okta"}, "no such outcome", time.Second)

	mfs := gather(t, reg)
	const name = "tokenbroker_upstream_request_duration_seconds"
	ok := histogram(t, mfs, name, "outcome", "ok", "provider", "cognito")
	if got := ok.GetSampleCount(); got != 2 {
		t.Errorf("ok count: got %d, want 2", got)
	}
	if got, want := ok.GetSampleSum(), 0.123; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("ok sum: got %v, want %v", got, want)
	}
	if got := bucket(t, ok, 0.005); got != 1 {
		t.Errorf("ok bucket le=0.005: got %d, want 1", got)
	}
	if got := bucket(t, ok, 0.1); got != 1 {
		t.Errorf("ok bucket le=0.1: got %d, want 1", got)
	}
	if got := bucket(t, ok, 0.25); got != 2 {
		t.Errorf("ok bucket le=0.25: got %d, want 2", got)
	}
	if got := bucket(t, ok, 30); got != 2 {
		t.Errorf("ok bucket le=30: got %d, want 2", got)
	}
	for _, tt := range []struct {
		provider, outcome string
		want              uint64
	}{
		{"cognito", OutcomeThrottled, 1},
		{"okta", OutcomeInvalidClient, 1},
		{"okta", OutcomeError, 1},
	} {
		h := histogram(t, mfs, name, "outcome", tt.outcome, "provider", tt.provider)
		if got := h.GetSampleCount(); got != tt.want {
			t.Errorf("%s/%s count: got %d, want %d", tt.provider, tt.outcome, got, tt.want)
		}
	}
	if got := len(mfs[name].GetMetric()); got != 4 {
		t.Errorf("%s: got %d series, want 4", name, got)
	}
}

func TestRefreshedAndServed(t *testing.T) {
	m, reg, _ := newTest(t)
	m.Refreshed("cognito", 15*time.Minute)
	m.Refreshed("cognito", -time.Second) // refreshed after expiry
	m.Refreshed("okta", 90*time.Second)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, 45*time.Minute)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, 20*time.Second)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, -time.Second)

	mfs := gather(t, reg)
	cognito := histogram(t, mfs, "tokenbroker_refresh_lead_seconds", "provider", "cognito")
	if got := cognito.GetSampleCount(); got != 2 {
		t.Errorf("refresh lead count (cognito): got %d, want 2", got)
	}
	if got := cognito.GetSampleSum(); got != 900 {
		t.Errorf("refresh lead sum (cognito): got %v, want 900 (negative lead counted as 0)", got)
	}
	if got := bucket(t, cognito, 1); got != 1 {
		t.Errorf("refresh lead bucket le=1 (cognito): got %d, want 1", got)
	}
	if got := bucket(t, cognito, 900); got != 2 {
		t.Errorf("refresh lead bucket le=900 (cognito): got %d, want 2", got)
	}
	okta := histogram(t, mfs, "tokenbroker_refresh_lead_seconds", "provider", "okta")
	if got := bucket(t, okta, 60); got != 0 {
		t.Errorf("refresh lead bucket le=60 (okta): got %d, want 0", got)
	}
	if got := bucket(t, okta, 120); got != 1 {
		t.Errorf("refresh lead bucket le=120 (okta): got %d, want 1", got)
	}

	served := histogram(t, mfs, "tokenbroker_served_token_remaining_seconds")
	if got := served.GetSampleCount(); got != 3 {
		t.Errorf("served count: got %d, want 3", got)
	}
	if got := served.GetSampleSum(); got != 2720 {
		t.Errorf("served sum: got %v, want 2720", got)
	}
	for _, tt := range []struct {
		le   float64
		want uint64
	}{{1, 1}, {10, 1}, {30, 2}, {2700, 3}, {86400, 3}} {
		if got := bucket(t, served, tt.le); got != tt.want {
			t.Errorf("served bucket le=%v: got %d, want %d", tt.le, got, tt.want)
		}
	}
}

// TestSharedFailed: tokenbroker_shared_errors_total has one series per
// reason from the start, counts each reason apart, and counts a value
// outside the set as "error".
func TestSharedFailed(t *testing.T) {
	m, reg, _ := newTest(t)
	m.SharedFailed("auth_failed")
	m.SharedFailed("auth_failed")
	m.SharedFailed("timeout")
	m.SharedFailed("bogus")
	mfs := gather(t, reg)
	if got := len(mfs["tokenbroker_shared_errors_total"].GetMetric()); got != len(sharedReasons) {
		t.Errorf("series: got %d, want %d", got, len(sharedReasons))
	}
	want := map[string]float64{"auth_failed": 2, "timeout": 1, "error": 1}
	for _, r := range sharedReasons {
		if got := value(t, mfs, "tokenbroker_shared_errors_total", "reason", r); got != want[r] {
			t.Errorf("reason %q: got %v, want %v", r, got, want[r])
		}
	}
}

func TestSetSharedState(t *testing.T) {
	tests := []struct {
		set  []string
		want string
	}{
		{nil, SharedDisabled},
		{[]string{SharedClosed}, SharedClosed},
		{[]string{SharedClosed, SharedOpen}, SharedOpen},
		{[]string{SharedOpen, SharedHalfOpen}, SharedHalfOpen},
		{[]string{SharedOpen, "half-open"}, SharedHalfOpen},
		{[]string{SharedClosed, "bogus"}, SharedClosed},
		{[]string{SharedClosed, SharedDisabled}, SharedDisabled},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.set, ","), func(t *testing.T) {
			m, reg, _ := newTest(t)
			for _, s := range tt.set {
				m.SetSharedState(s)
			}
			mfs := gather(t, reg)
			if got := len(mfs["tokenbroker_shared_state"].GetMetric()); got != len(sharedStates) {
				t.Errorf("series: got %d, want %d", got, len(sharedStates))
			}
			for _, state := range sharedStates {
				want := 0.0
				if state == tt.want {
					want = 1
				}
				if got := value(t, mfs, "tokenbroker_shared_state", "state", state); got != want {
					t.Errorf("state %q: got %v, want %v", state, got, want)
				}
			}
		})
	}
}

func TestOutcome(t *testing.T) {
	upErr := func(kind error) error {
		return &upstream.Error{Kind: kind, Provider: "cognito", Status: 400, Code: "x", Description: "d"}
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, OutcomeOK},
		{"invalid client", upErr(upstream.ErrInvalidClient), OutcomeInvalidClient},
		{"invalid scope", upErr(upstream.ErrInvalidScope), OutcomeInvalidScope},
		{"unauthorized client", upErr(upstream.ErrUnauthorizedClient), OutcomeUnauthorizedClient},
		{"throttled", upErr(upstream.ErrThrottled), OutcomeThrottled},
		{"unavailable", upErr(upstream.ErrUnavailable), OutcomeUnavailable},
		{"rejected", upErr(upstream.ErrRejected), OutcomeRejected},
		{"wrapped", fmt.Errorf("fetch: %w", upErr(upstream.ErrThrottled)), OutcomeThrottled},
		{"bare kind", upstream.ErrInvalidScope, OutcomeInvalidScope},
		{"no kind", &upstream.Error{Provider: "cognito"}, OutcomeError},
		{"deadline", context.DeadlineExceeded, OutcomeError},
		{"canceled", context.Canceled, OutcomeError},
		{"other", errors.New("throttled"), OutcomeError},
		{"broker", broker.ErrTokenTooShort, OutcomeError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Outcome(tt.err)
			if got != tt.want {
				t.Errorf("Outcome(%v): got %q, want %q", tt.err, got, tt.want)
			}
			if !validOutcome(got) {
				t.Errorf("Outcome(%v) = %q: not one of the outcome constants", tt.err, got)
			}
		})
	}
}

// allowedLabels are the only label names and values tokenbroker's own
// metrics may carry (le is the histograms' bucket label, not a series
// label, and does not appear here).
var allowedLabels = map[string][]string{
	"provider": {"cognito", "okta", OtherProvider},
	"outcome": {OutcomeOK, OutcomeInvalidClient, OutcomeInvalidScope, OutcomeUnauthorizedClient,
		OutcomeThrottled, OutcomeUnavailable, OutcomeRejected, OutcomeError, OutcomeBudgetRefused},
	"state":  sharedStates[:],
	"reason": sharedReasons[:],
	"client": {"orders", OtherProvider},
	"scope":  {"replica"},
}

func TestLabelCardinality(t *testing.T) {
	m, reg, _ := newTest(t)
	exercise(m)
	for _, o := range allowedLabels["outcome"] {
		m.UpstreamDone(broker.Fetch{Provider: "okta"}, o, time.Millisecond)
	}
	m.UpstreamDone(broker.Fetch{Provider: "okta"}, "client-id-1234", time.Millisecond) // not an outcome
	m.UpstreamDone(broker.Fetch{Provider: ""}, OutcomeOK, time.Millisecond)
	// Without their options, the client id and key id are no labels.
	m.UpstreamDone(broker.Fetch{Provider: "okta", ClientID: "client-id-1234", KeyID: "k-1234"}, OutcomeOK, time.Millisecond)
	m.Refreshed("", time.Minute)

	mfs := gather(t, reg)
	for name, mf := range mfs {
		if !strings.HasPrefix(name, namespace+"_") {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				allowed, ok := allowedLabels[lp.GetName()]
				if !ok {
					t.Errorf("%s: got label %q, want only provider, outcome, state and reason", name, lp.GetName())
					continue
				}
				if !slices.Contains(allowed, lp.GetValue()) {
					t.Errorf("%s: got %s=%q, want one of %q", name, lp.GetName(), lp.GetValue(), allowed)
				}
			}
		}
	}
}

// TestOptionalLabels: WithClientIDLabel and WithKeyIDLabel add the
// client_id and key_id labels to the upstream histogram only, an empty
// value is recorded as OtherProvider, and each label keeps at most
// MaxLabelValues distinct values.
func TestOptionalLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg, func() broker.Stats { return sampleStats() }, WithClientIDLabel(), WithKeyIDLabel())
	if err != nil {
		t.Fatal(err)
	}
	m.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: "app-1", KeyID: "k-1"}, OutcomeOK, time.Second)
	m.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: "app-1", KeyID: "k-1"}, OutcomeOK, time.Second)
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeThrottled, time.Second)
	m.Refreshed("cognito", time.Minute)
	const name = "tokenbroker_upstream_request_duration_seconds"
	mfs := gather(t, reg)
	if s := series(mfs, name, "client_id", "app-1", "key_id", "k-1", "outcome", OutcomeOK, "provider", "cognito"); s.GetHistogram().GetSampleCount() != 2 {
		t.Errorf("app-1/k-1 series: got %v, want 2 samples", s)
	}
	if s := series(mfs, name, "client_id", OtherProvider, "key_id", OtherProvider, "outcome", OutcomeThrottled, "provider", "cognito"); s.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("series without ids: got %v, want 1 sample", s)
	}
	if s := series(mfs, "tokenbroker_refresh_lead_seconds", "provider", "cognito"); s == nil {
		t.Error("the refresh histogram gained labels")
	}

	for i := range MaxLabelValues + 50 {
		m.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: fmt.Sprintf("c%d", i), KeyID: fmt.Sprintf("k%d", i)}, OutcomeOK, time.Millisecond)
	}
	values := map[string]map[string]uint64{"client_id": {}, "key_id": {}}
	var total uint64
	for _, s := range gather(t, reg)[name].GetMetric() {
		total += s.GetHistogram().GetSampleCount()
		for _, lp := range s.GetLabel() {
			if v := values[lp.GetName()]; v != nil {
				v[lp.GetValue()] += s.GetHistogram().GetSampleCount()
			}
		}
	}
	if want := uint64(3 + MaxLabelValues + 50); total != want {
		t.Errorf("got %d samples, want %d: none may be lost", total, want)
	}
	for label, v := range values {
		if len(v) > MaxLabelValues+1 || v[OtherProvider] == 0 {
			t.Errorf("%s: got %d distinct values (%d under %q), want at most %d plus %q", label, len(v), v[OtherProvider], OtherProvider, MaxLabelValues, OtherProvider)
		}
	}
}

func TestProviderCap(t *testing.T) {
	m, reg, _ := newTest(t)
	for i := range MaxProviders + 10 {
		p := fmt.Sprintf("p%d", i)
		m.UpstreamDone(broker.Fetch{Provider: p}, OutcomeOK, time.Millisecond)
		m.Refreshed(p, time.Minute)
	}
	mfs := gather(t, reg)
	for _, name := range []string{"tokenbroker_upstream_request_duration_seconds", "tokenbroker_refresh_lead_seconds"} {
		providers := map[string]uint64{}
		for _, s := range mfs[name].GetMetric() {
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "provider" {
					providers[lp.GetValue()] += s.GetHistogram().GetSampleCount()
				}
			}
		}
		if got, want := len(providers), MaxProviders+1; got != want {
			t.Errorf("%s: got %d provider values, want %d (the cap plus %s)", name, got, want, OtherProvider)
		}
		if got := providers[OtherProvider]; got != 10 {
			t.Errorf("%s: got %d observations under %s, want 10", name, got, OtherProvider)
		}
	}
}

func TestNoSecretInExposition(t *testing.T) {
	const secretText = "hunter2-S3CR3T-eyJhbGciOiJIUzI1NiJ9"
	reg := prometheus.NewRegistry()
	m, err := New(reg, func() broker.Stats { return sampleStats() })
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	// Errors whose text carries a secret: only their kind may show.
	errs := []error{
		&upstream.Error{Kind: upstream.ErrInvalidClient, Provider: "cognito", Status: 401,
			Code: "invalid_client", Description: "bad secret " + secretText},
		fmt.Errorf("token %s: %w", secretText, upstream.ErrUnavailable),
		errors.New("client_secret=" + secretText),
	}
	for _, e := range errs {
		m.UpstreamDone(broker.Fetch{Provider: "cognito"}, Outcome(e), time.Second)
	}
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, secretText, time.Second) // a misused hook
	m.SetSharedState(secretText)
	m.SharedFailed(secretText)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, time.Minute)
	m.Refreshed("okta", time.Minute)

	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	body := scrape(t, srv.URL)
	if strings.Contains(body, secretText) {
		t.Errorf("exposition: got the secret text in the body, want it absent")
	}
	for _, want := range []string{
		`tokenbroker_upstream_request_duration_seconds_count{outcome="invalid_client",provider="cognito"} 1`,
		`tokenbroker_upstream_request_duration_seconds_count{outcome="error",provider="cognito"} 2`,
		`tokenbroker_cache_hits_total 101`,
		`tokenbroker_shared_state{state="disabled"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("exposition: got no line %q, want it", want)
		}
	}
}

// scrape GETs url and returns the body.
func scrape(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatalf("NewRequest: got error %v, want nil", err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: got error %v, want nil", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: got error %v, want nil", err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: got status %d, want 200; body %q", url, res.StatusCode, b)
	}
	return string(b)
}

func TestHandlerNilGatherer(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("status: got %d, want %d", rec.Code, http.StatusInternalServerError)
	}
}

func TestNewErrors(t *testing.T) {
	stats := func() broker.Stats { return broker.Stats{} }
	tests := []struct {
		name    string
		reg     prometheus.Registerer
		stats   func() broker.Stats
		wantErr string
	}{
		{"nil registerer", nil, stats, "registerer is nil"},
		{"nil stats", prometheus.NewRegistry(), nil, "stats is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.reg, tt.stats)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New: got error %v, want one containing %q", err, tt.wantErr)
			}
			if m != nil {
				t.Errorf("New: got %v, want nil Metrics", m)
			}
		})
	}

	// Registering twice fails, and the failed New leaves the registry as
	// the first one left it.
	reg := prometheus.NewRegistry()
	if _, err := New(reg, stats); err != nil {
		t.Fatalf("first New: got error %v, want nil", err)
	}
	before := len(gather(t, reg))
	_, err := New(reg, stats)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Errorf("second New on one registry: got error %v, want an AlreadyRegisteredError", err)
	}
	if after := len(gather(t, reg)); after != before {
		t.Errorf("families after a failed New: got %d, want %d", after, before)
	}

	// A failure part-way leaves nothing of the failed New registered.
	reg = prometheus.NewRegistry()
	other, err := New(prometheus.NewRegistry(), stats)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	squatter := other.served // New registers it after the stats collector
	reg.MustRegister(squatter)
	if _, err := New(reg, stats); err == nil {
		t.Fatalf("New with a name taken: got nil error, want one")
	}
	if _, ok := gather(t, reg)["tokenbroker_cache_hits_total"]; ok {
		t.Errorf("after a failed New: got tokenbroker_cache_hits_total registered, want nothing left")
	}
	reg.Unregister(squatter)
	if _, err := New(reg, stats); err != nil {
		t.Errorf("New once the name is free: got error %v, want nil", err)
	}
}

func TestNilMetricsHooks(t *testing.T) {
	var m *Metrics
	m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeOK, time.Second)
	m.Refreshed("cognito", time.Second)
	m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, time.Second)
	m.SetSharedState(SharedOpen)
	m.SharedFailed("auth_failed")
	if got := m.GRPC(); got != nil {
		t.Errorf("nil Metrics GRPC(): got %v, want nil", got)
	}
}

func TestHooksDoNotAllocate(t *testing.T) {
	m, _, _ := newTest(t)
	exercise(m) // create the series first
	hooks := map[string]func(){
		"UpstreamDone":   func() { m.UpstreamDone(broker.Fetch{Provider: "cognito"}, OutcomeOK, 120*time.Millisecond) },
		"Refreshed":      func() { m.Refreshed("cognito", 15*time.Minute) },
		"Served":         func() { m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, 45*time.Minute) },
		"SetSharedState": func() { m.SetSharedState(SharedOpen) },
		"SharedFailed":   func() { m.SharedFailed("auth_failed") },
	}
	for name, f := range hooks {
		if got := testing.AllocsPerRun(100, f); got != 0 {
			t.Errorf("%s: got %v allocations per call, want 0", name, got)
		}
	}

	// With the optional labels, for a value under the cap and for one
	// over it (recorded as OtherProvider).
	labelled, err := New(prometheus.NewRegistry(), func() broker.Stats { return sampleStats() }, WithClientIDLabel(), WithKeyIDLabel())
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxLabelValues {
		labelled.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: fmt.Sprintf("c%d", i), KeyID: fmt.Sprintf("k%d", i)}, OutcomeOK, time.Millisecond)
	}
	for name, f := range map[string]func(){
		"UpstreamDone with labels": func() {
			labelled.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: "c7", KeyID: "k7"}, OutcomeOK, time.Millisecond)
		},
		"UpstreamDone over the label cap": func() {
			labelled.UpstreamDone(broker.Fetch{Provider: "cognito", ClientID: "new", KeyID: "new"}, OutcomeOK, time.Millisecond)
		},
	} {
		f() // create the series
		if got := testing.AllocsPerRun(100, f); got != 0 {
			t.Errorf("%s: got %v allocations per call, want 0", name, got)
		}
	}
}

func TestConcurrentHooksAndScrapes(t *testing.T) {
	m, reg, fs := newTest(t)
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()

	const workers, calls = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			p := []string{"cognito", "okta"}[w%2]
			for i := range calls {
				m.UpstreamDone(broker.Fetch{Provider: p}, allowedLabels["outcome"][i%len(allowedLabels["outcome"])], time.Millisecond)
				m.Refreshed(p, time.Minute)
				m.Served(broker.Fetch{Provider: "cognito", Client: "orders"}, time.Hour)
				m.SetSharedState(sharedStates[i%len(sharedStates)])
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			s := sampleStats()
			s.Hits = int64(i)
			fs.set(s)
			if _, err := reg.Gather(); err != nil {
				t.Errorf("Gather: got error %v, want nil", err)
				return
			}
		}
	})
	for range 5 {
		scrape(t, srv.URL)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("hooks and scrapes: got no end after 20s, want them done")
	}

	mfs := gather(t, reg)
	if got, want := histogram(t, mfs, "tokenbroker_served_token_remaining_seconds").GetSampleCount(), uint64(workers*calls); got != want {
		t.Errorf("served count: got %d, want %d", got, want)
	}
	var upstreamCount uint64
	for _, s := range mfs["tokenbroker_upstream_request_duration_seconds"].GetMetric() {
		upstreamCount += s.GetHistogram().GetSampleCount()
	}
	if want := uint64(workers * calls); upstreamCount != want {
		t.Errorf("upstream count: got %d, want %d", upstreamCount, want)
	}
	ones := 0.0
	for _, state := range sharedStates {
		ones += value(t, mfs, "tokenbroker_shared_state", "state", state)
	}
	if ones != 1 {
		t.Errorf("shared states set to 1: got %v, want exactly 1", ones)
	}
}

func TestGRPCInterceptors(t *testing.T) {
	m, reg, _ := newTest(t)
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(m.GRPC().UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.GRPC().StreamServerInterceptor()),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	m.GRPC().InitializeMetrics(srv)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: got error %v, want nil", err)
		}
	}()

	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("NewClient: got error %v, want nil", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client := healthpb.NewHealthClient(conn)
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: got error %v, want nil", err)
	}
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check(nope): got %v, want code NotFound", err)
	}

	mfs := gather(t, reg)
	base := []string{"grpc_method", "Check", "grpc_service", "grpc.health.v1.Health", "grpc_type", "unary"}
	for _, tt := range []struct {
		code string
		want float64
	}{{"OK", 1}, {"NotFound", 1}, {"Unavailable", 0}} {
		labels := append([]string{"grpc_code", tt.code}, base...)
		if got := value(t, mfs, "grpc_server_handled_total", labels...); got != tt.want {
			t.Errorf("grpc_server_handled_total{grpc_code=%q}: got %v, want %v", tt.code, got, tt.want)
		}
	}
	if got := histogram(t, mfs, "grpc_server_handling_seconds", base...).GetSampleCount(); got != 2 {
		t.Errorf("grpc_server_handling_seconds count: got %d, want 2", got)
	}
}
