package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// budgetMetrics are the quota governor's metrics: the fleet budget of
// each provider, the decisions taken against it and the refusals.
type budgetMetrics struct {
	limit     *prometheus.GaugeVec
	decisions *prometheus.CounterVec
}

func newBudgetMetrics() *budgetMetrics {
	return &budgetMetrics{
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "budget_limit_requests_per_second",
			Help:      "Request budget of a provider, by scope: fleet (every replica together, kept in Redis) and local (this replica's share while Redis is unreachable).",
		}, []string{"provider", "scope"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "budget_decisions_total",
			Help:      "Upstream requests asked of a provider's fleet budget, by the budget that decided (fleet, or local while Redis is unreachable) and result (granted, refused: the caller got RESOURCE_EXHAUSTED or the refresh was retried later).",
		}, []string{"provider", "source", "result"}),
	}
}

func (b *budgetMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{b.limit, b.decisions}
}

// SetFleetBudget exports provider's fleet budget (requests per second)
// and one replica's local share of it.
func (m *Metrics) SetFleetBudget(provider string, rate, localShare float64) {
	if m == nil {
		return
	}
	// Only configured providers have a fleet budget: the label is
	// bounded by the configuration.
	provider = orOther(provider)
	m.budget.limit.WithLabelValues(provider, "fleet").Set(rate)
	m.budget.limit.WithLabelValues(provider, "local").Set(rate * localShare)
}

// BudgetDecision counts one decision of provider's fleet budget: source
// is "fleet" or "local", granted whether the request could be sent.
func (m *Metrics) BudgetDecision(provider, source string, granted bool) {
	if m == nil {
		return
	}
	if source != "fleet" {
		source = "local"
	}
	result := "refused"
	if granted {
		result = "granted"
	}
	m.budget.decisions.WithLabelValues(orOther(provider), source, result).Inc()
}
