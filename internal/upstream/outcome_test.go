package upstream

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestOutcomeOf: every kind maps to its outcome, wrapped or not, and the
// names form the fixed label set.
func TestOutcomeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Outcome
		name string
	}{
		{nil, OutcomeOK, "ok"},
		{&Error{Kind: ErrInvalidClient}, OutcomeInvalidClient, "invalid_client"},
		{fmt.Errorf("wrapped: %w", &Error{Kind: ErrInvalidScope}), OutcomeInvalidScope, "invalid_scope"},
		{ErrUnauthorizedClient, OutcomeUnauthorizedClient, "unauthorized_client"},
		{&Error{Kind: ErrThrottled}, OutcomeThrottled, "throttled"},
		{fmt.Errorf("wrapped: %w", &Error{Kind: ErrThrottled, Status: 429}), OutcomeThrottled, "throttled"},
		// Refused by our own budget: nothing was sent, not the provider's throttling.
		{&Error{Kind: ErrThrottled, Local: true}, OutcomeBudgetRefused, "budget_refused"},
		{fmt.Errorf("wrapped: %w", &Error{Kind: ErrThrottled, Local: true}), OutcomeBudgetRefused, "budget_refused"},
		{&Error{Kind: ErrUnavailable}, OutcomeUnavailable, "unavailable"},
		{&Error{Kind: ErrRejected}, OutcomeRejected, "rejected"},
		{context.DeadlineExceeded, OutcomeError, "error"},
		{errors.New("boom"), OutcomeError, "error"},
	} {
		got := OutcomeOf(tc.err)
		if got != tc.want || got.String() != tc.name {
			t.Errorf("OutcomeOf(%v): got %v (%q), want %v (%q)", tc.err, int(got), got.String(), int(tc.want), tc.name)
		}
	}
	seen := map[string]bool{}
	for _, o := range Outcomes {
		if seen[o.String()] {
			t.Errorf("outcome name %q used twice", o.String())
		}
		seen[o.String()] = true
	}
	if len(seen) != 9 || Outcome(-1).String() != "error" || Outcome(99).String() != "error" {
		t.Errorf("got %d names (out of range: %q, %q), want 9 and \"error\"", len(seen), Outcome(-1), Outcome(99))
	}
	for _, o := range Outcomes {
		want := o == OutcomeInvalidClient || o == OutcomeInvalidScope || o == OutcomeUnauthorizedClient || o == OutcomeRejected
		if o.Rejected() != want {
			t.Errorf("%v.Rejected(): got %v, want %v", o, o.Rejected(), want)
		}
	}
}
