package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// VerifierMetrics are the token verifier's metrics: verifications by
// provider, outcome ("ok" or a refusal reason, or "error" for a token that
// could not be checked) and source (cache, signature, introspection), and
// JWKS fetches by provider and result. Label values are bounded: provider
// names come from the configuration (or verifier.UnknownProvider), outcomes
// and sources from fixed sets. It implements verifier.Observer; a nil
// *VerifierMetrics ignores every event.
type VerifierMetrics struct {
	verifications *prometheus.CounterVec
	fetches       *prometheus.CounterVec
}

// NewVerifier creates the verifier's metrics and registers them on reg.
func NewVerifier(reg prometheus.Registerer) (*VerifierMetrics, error) {
	m := &VerifierMetrics{
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "verifications_total",
			Help:      "Token verifications (VerifyToken and ext_authz Check), by provider, outcome (ok, a refusal reason, or error) and source (cache, signature, introspection).",
		}, []string{"provider", "outcome", "source"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "jwks_fetches_total",
			Help:      "Fetches of providers' signing keys (JWKS), by provider and result (ok or failed).",
		}, []string{"provider", "result"}),
	}
	for i, c := range []prometheus.Collector{m.verifications, m.fetches} {
		if err := reg.Register(c); err != nil {
			if i == 1 {
				reg.Unregister(m.verifications)
			}
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// Verified implements verifier.Observer.
func (m *VerifierMetrics) Verified(provider, outcome string, source verifier.Source) {
	if m == nil {
		return
	}
	m.verifications.WithLabelValues(provider, outcome, string(source)).Inc()
}

// KeysFetched implements verifier.Observer.
func (m *VerifierMetrics) KeysFetched(provider string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.fetches.WithLabelValues(provider, result).Inc()
}
