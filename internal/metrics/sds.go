package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// sdsMetrics are the SDS server's series, by secret name. Names are
// capped at MaxLabelValues distinct values (further ones are recorded as
// OtherProvider): configured names are few, but parsed names
// ("oauth2:CLIENT:SCOPES") are the callers' choice. Only names the caller
// was granted are ever recorded, never a token.
type sdsMetrics struct {
	streams *prometheus.GaugeVec
	pushes  *prometheus.CounterVec
	acks    *prometheus.CounterVec
	nacks   *prometheus.CounterVec

	mu   sync.Mutex
	seen map[string]bool
}

func newSDSMetrics() *sdsMetrics {
	label := []string{"secret"}
	return &sdsMetrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "sds", Name: "streams",
			Help: "SDS streams subscribed to the secret, by secret name.",
		}, label),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "sds", Name: "pushes_total",
			Help: "SDS responses carrying the secret (first sends, refreshes, invalidations, fetches), by secret name.",
		}, label),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "sds", Name: "acks_total",
			Help: "SDS responses the sidecar accepted (ACK), by secret name.",
		}, label),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "sds", Name: "nacks_total",
			Help: "SDS responses the sidecar rejected (NACK), by secret name.",
		}, label),
		seen: map[string]bool{},
	}
}

// collectors returns the series to register.
func (s *sdsMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.streams, s.pushes, s.acks, s.nacks}
}

// label returns name, or OtherProvider once MaxLabelValues other names
// were recorded (or for an empty name).
func (s *sdsMetrics) label(name string) string {
	if name == "" {
		return OtherProvider
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[name] {
		return name
	}
	if len(s.seen) >= MaxLabelValues {
		return OtherProvider
	}
	s.seen[name] = true
	return name
}

// Subscribed records an SDS stream subscribing to the secret name (delta
// 1) or ending its subscription (delta -1), as
// tokenbroker_sds_streams{secret}.
func (m *Metrics) Subscribed(name string, delta int) {
	if m == nil {
		return
	}
	m.sds.streams.WithLabelValues(m.sds.label(name)).Add(float64(delta))
}

// Pushed counts an SDS response carrying the secret name
// (tokenbroker_sds_pushes_total).
func (m *Metrics) Pushed(name string) {
	if m == nil {
		return
	}
	m.sds.pushes.WithLabelValues(m.sds.label(name)).Inc()
}

// Acked counts a sidecar accepting the secret name
// (tokenbroker_sds_acks_total).
func (m *Metrics) Acked(name string) {
	if m == nil {
		return
	}
	m.sds.acks.WithLabelValues(m.sds.label(name)).Inc()
}

// Nacked counts a sidecar rejecting the secret name
// (tokenbroker_sds_nacks_total).
func (m *Metrics) Nacked(name string) {
	if m == nil {
		return
	}
	m.sds.nacks.WithLabelValues(m.sds.label(name)).Inc()
}
