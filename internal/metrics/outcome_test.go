package metrics

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestOutcomeIsUpstreamOutcome: the outcome label is the upstream
// package's one classification (upstream.OutcomeOf), so the metrics and
// the broker's statistics put every fetch in the same bucket; the label
// constants are exactly the upstream.Outcome names.
func TestOutcomeIsUpstreamOutcome(t *testing.T) {
	consts := map[upstream.Outcome]string{
		upstream.OutcomeOK:                 OutcomeOK,
		upstream.OutcomeInvalidClient:      OutcomeInvalidClient,
		upstream.OutcomeInvalidScope:       OutcomeInvalidScope,
		upstream.OutcomeUnauthorizedClient: OutcomeUnauthorizedClient,
		upstream.OutcomeThrottled:          OutcomeThrottled,
		upstream.OutcomeUnavailable:        OutcomeUnavailable,
		upstream.OutcomeRejected:           OutcomeRejected,
		upstream.OutcomeError:              OutcomeError,
		upstream.OutcomeBudgetRefused:      OutcomeBudgetRefused,
	}
	if len(consts) != len(upstream.Outcomes) {
		t.Fatalf("got %d label constants, want one per upstream.Outcome (%d)", len(consts), len(upstream.Outcomes))
	}
	for _, o := range upstream.Outcomes {
		if consts[o] != o.String() || !validOutcome(o.String()) {
			t.Errorf("outcome %v: label constant %q, want %q and valid", o, consts[o], o.String())
		}
	}
	for _, err := range []error{
		nil,
		&upstream.Error{Kind: upstream.ErrInvalidClient},
		fmt.Errorf("broker: %w", &upstream.Error{Kind: upstream.ErrInvalidScope}),
		upstream.ErrUnauthorizedClient,
		&upstream.Error{Kind: upstream.ErrThrottled, Local: true},
		&upstream.Error{Kind: upstream.ErrThrottled, Status: 429},
		&upstream.Error{Kind: upstream.ErrUnavailable},
		&upstream.Error{Kind: upstream.ErrRejected},
		context.Canceled,
		errors.New("other"),
	} {
		if got, want := Outcome(err), upstream.OutcomeOf(err).String(); got != want {
			t.Errorf("Outcome(%v): got %q, want %q", err, got, want)
		}
	}
	if validOutcome("rejected ") || validOutcome("") {
		t.Error("validOutcome accepts a name that is no outcome")
	}
}
