package upstream

import "errors"

// Outcome classifies the result of a token fetch: the one classification
// of upstream results in tokenbroker. The metrics' `outcome` label is its
// String, and the broker's per-provider statistics count by it.
type Outcome int

// The outcomes of a fetch, by the Err* kind its error matches.
const (
	// OutcomeOK: the endpoint issued a token.
	OutcomeOK Outcome = iota
	// OutcomeInvalidClient: the endpoint rejected the client credentials.
	OutcomeInvalidClient
	// OutcomeInvalidScope: a requested scope is unknown or not allowed.
	OutcomeInvalidScope
	// OutcomeUnauthorizedClient: the client may not use the grant.
	OutcomeUnauthorizedClient
	// OutcomeThrottled: the endpoint throttled the fetch (429, or 400
	// TooManyRequestsException): the provider's own quota answer.
	OutcomeThrottled
	// OutcomeUnavailable: 5xx, network failure or a malformed answer.
	OutcomeUnavailable
	// OutcomeRejected: any other rejection by the endpoint.
	OutcomeRejected
	// OutcomeError: anything else (a context error, an internal failure).
	OutcomeError
	// OutcomeBudgetRefused: our own request budget (the replica's or the
	// fleet's) refused the fetch; nothing was sent to the endpoint.
	OutcomeBudgetRefused
)

// Outcomes lists every Outcome, in order.
var Outcomes = []Outcome{
	OutcomeOK, OutcomeInvalidClient, OutcomeInvalidScope, OutcomeUnauthorizedClient,
	OutcomeThrottled, OutcomeUnavailable, OutcomeRejected, OutcomeError,
	OutcomeBudgetRefused,
}

// outcomeNames are the Strings of the outcomes, by Outcome.
var outcomeNames = [...]string{
	OutcomeOK:                 "ok",
	OutcomeInvalidClient:      "invalid_client",
	OutcomeInvalidScope:       "invalid_scope",
	OutcomeUnauthorizedClient: "unauthorized_client",
	OutcomeThrottled:          "throttled",
	OutcomeUnavailable:        "unavailable",
	OutcomeRejected:           "rejected",
	OutcomeError:              "error",
	OutcomeBudgetRefused:      "budget_refused",
}

// String returns the outcome's name, one of a fixed set of label values:
// ok, invalid_client, invalid_scope, unauthorized_client, throttled,
// unavailable, rejected, error, budget_refused. A value outside the set is "error".
func (o Outcome) String() string {
	if o < 0 || int(o) >= len(outcomeNames) {
		return outcomeNames[OutcomeError]
	}
	return outcomeNames[o]
}

// Rejected reports whether the endpoint refused the request itself
// (invalid_client, invalid_scope, unauthorized_client or another
// rejection): retrying it unchanged will not help.
func (o Outcome) Rejected() bool {
	switch o {
	case OutcomeInvalidClient, OutcomeInvalidScope, OutcomeUnauthorizedClient, OutcomeRejected:
		return true
	}
	return false
}

// OutcomeOf classifies the error of a fetch (nil for success) by the Err*
// kind it matches (errors.Is). Context errors and errors of no kind are
// OutcomeError. A Local ErrThrottled error (the request budget refused,
// nothing was sent) is OutcomeBudgetRefused, so that OutcomeThrottled
// counts only the provider's own throttling answers. The error's text is
// never looked at.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, ErrInvalidClient):
		return OutcomeInvalidClient
	case errors.Is(err, ErrInvalidScope):
		return OutcomeInvalidScope
	case errors.Is(err, ErrUnauthorizedClient):
		return OutcomeUnauthorizedClient
	case errors.Is(err, ErrThrottled):
		if e := (*Error)(nil); errors.As(err, &e) && e.Local {
			return OutcomeBudgetRefused
		}
		return OutcomeThrottled
	case errors.Is(err, ErrUnavailable):
		return OutcomeUnavailable
	case errors.Is(err, ErrRejected):
		return OutcomeRejected
	}
	return OutcomeError
}
