package metrics

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// TestBudgetMetrics: SetFleetBudget exports the fleet budget and one
// replica's local share of it; BudgetDecision counts each decision by
// source (fleet, or local for any other value) and result; an empty
// provider is recorded as OtherProvider; a nil *Metrics ignores both.
func TestBudgetMetrics(t *testing.T) {
	m, reg, _ := newTest(t)
	m.SetFleetBudget("cognito", 150, 0.25)
	m.SetFleetBudget("", 10, 1)
	m.BudgetDecision("cognito", "fleet", true)
	m.BudgetDecision("cognito", "fleet", true)
	m.BudgetDecision("cognito", "fleet", false)
	m.BudgetDecision("cognito", "local", false)
	m.BudgetDecision("cognito", "somewhere", true) // not a source: local
	m.BudgetDecision("", "fleet", false)

	mfs := gather(t, reg)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenbroker_budget_limit_requests_per_second", []string{"provider", "cognito", "scope", "fleet"}, 150},
		{"tokenbroker_budget_limit_requests_per_second", []string{"provider", "cognito", "scope", "local"}, 37.5},
		{"tokenbroker_budget_limit_requests_per_second", []string{"provider", OtherProvider, "scope", "fleet"}, 10},
		{"tokenbroker_budget_decisions_total", []string{"provider", "cognito", "result", "granted", "source", "fleet"}, 2},
		{"tokenbroker_budget_decisions_total", []string{"provider", "cognito", "result", "refused", "source", "fleet"}, 1},
		{"tokenbroker_budget_decisions_total", []string{"provider", "cognito", "result", "refused", "source", "local"}, 1},
		{"tokenbroker_budget_decisions_total", []string{"provider", "cognito", "result", "granted", "source", "local"}, 1},
		{"tokenbroker_budget_decisions_total", []string{"provider", OtherProvider, "result", "refused", "source", "fleet"}, 1},
	} {
		if got := value(t, mfs, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v: got %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if n := len(mfs["tokenbroker_budget_decisions_total"].GetMetric()); n != 5 {
		t.Errorf("tokenbroker_budget_decisions_total: got %d series, want 5", n)
	}

	var none *Metrics
	none.SetFleetBudget("cognito", 1, 1)
	none.BudgetDecision("cognito", "fleet", true)
}

// TestBudgetRefusedIsNotThrottled: tokenbroker_upstream_requests_total
// counts the provider's throttling answers as throttled and our own
// budget's refusals as budget_refused, as the broker's statistics do.
func TestBudgetRefusedIsNotThrottled(t *testing.T) {
	_, reg, fs := newTest(t)
	fs.set(broker.Stats{Providers: map[string]broker.ProviderStats{"cognito": {OK: 5, Throttled: 2, BudgetRefused: 7}}})
	mfs := gather(t, reg)
	if got := value(t, mfs, "tokenbroker_upstream_requests_total", "outcome", OutcomeThrottled, "provider", "cognito"); got != 2 {
		t.Errorf("throttled: got %v, want 2", got)
	}
	if got := value(t, mfs, "tokenbroker_upstream_requests_total", "outcome", OutcomeBudgetRefused, "provider", "cognito"); got != 7 {
		t.Errorf("budget_refused: got %v, want 7", got)
	}
}
