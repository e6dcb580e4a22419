package verifier

import (
	"errors"
	"fmt"
	"time"
)

// Reason is why a token was refused. Its values mirror the RefusalReason
// enum of the API.
type Reason int

// The refusal reasons.
const (
	// ReasonMalformed: not a well-formed JWT (or too long, or with a
	// refused header), and no introspection endpoint could check it.
	ReasonMalformed Reason = iota + 1
	// ReasonExpired: "exp" is past, beyond the clock skew.
	ReasonExpired
	// ReasonNotYetValid: "nbf" or "iat" is in the future, beyond the
	// clock skew.
	ReasonNotYetValid
	// ReasonBadSignature: the signature does not verify.
	ReasonBadSignature
	// ReasonUnknownKey: the provider does not publish the key the token
	// names, even after a fresh fetch.
	ReasonUnknownKey
	// ReasonWrongIssuer: "iss" is no configured provider's, or not the
	// requested one's.
	ReasonWrongIssuer
	// ReasonWrongAudience: "aud" lacks what the provider or the request
	// requires.
	ReasonWrongAudience
	// ReasonWrongTokenUse: token_use is not "access", or typ is not
	// "at+jwt" where required.
	ReasonWrongTokenUse
	// ReasonInsufficientScope: a required scope is missing.
	ReasonInsufficientScope
	// ReasonWrongClient: issued to a client that is not accepted.
	ReasonWrongClient
	// ReasonDisallowedAlgorithm: the signing algorithm is not allowed.
	ReasonDisallowedAlgorithm
	// ReasonInactive: the introspection endpoint says the token is not
	// active.
	ReasonInactive
)

// reasonNames are the Reasons' names, as String returns them (and metrics
// label them).
var reasonNames = [...]string{
	ReasonMalformed:           "malformed",
	ReasonExpired:             "expired",
	ReasonNotYetValid:         "not_yet_valid",
	ReasonBadSignature:        "bad_signature",
	ReasonUnknownKey:          "unknown_key",
	ReasonWrongIssuer:         "wrong_issuer",
	ReasonWrongAudience:       "wrong_audience",
	ReasonWrongTokenUse:       "wrong_token_use",
	ReasonInsufficientScope:   "insufficient_scope",
	ReasonWrongClient:         "wrong_client",
	ReasonDisallowedAlgorithm: "disallowed_algorithm",
	ReasonInactive:            "inactive",
}

// Reasons returns every Reason, in order.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasonNames)-1)
	for r := ReasonMalformed; int(r) < len(reasonNames); r++ {
		out = append(out, r)
	}
	return out
}

// String returns the reason's snake_case name, such as "bad_signature".
func (r Reason) String() string {
	if r > 0 && int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// RefusedError is a refused token: the answer of a check, not a failure to
// check. Message names the check and never contains the token.
type RefusedError struct {
	// Reason is the stable reason.
	Reason Reason
	// Message explains the refusal.
	Message string
}

// Error returns "token refused: <reason>: <message>".
func (e *RefusedError) Error() string {
	return "token refused: " + e.Reason.String() + ": " + e.Message
}

// refuse returns a *RefusedError.
func refuse(r Reason, format string, args ...any) error {
	return &RefusedError{Reason: r, Message: fmt.Sprintf(format, args...)}
}

// ErrUnavailable is matched (errors.Is) by the errors of tokens that could
// not be checked: a provider whose keys were never fetched, an
// introspection endpoint that failed.
var ErrUnavailable = errors.New("token could not be verified")

// unavailable wraps ErrUnavailable with a non-secret explanation.
func unavailable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnavailable, fmt.Sprintf(format, args...))
}

// Request is a token to verify and what the caller requires of it.
type Request struct {
	// Token is the access token. Required.
	Token string
	// RequiredScopes must all be among the token's scopes.
	RequiredScopes []string
	// ExpectedAudience, when set, must be among the token's audiences.
	ExpectedAudience string
	// ExpectedClientID, when set, must be the token's client id.
	ExpectedClientID string
	// Provider, when set, is the provider the token must come from.
	Provider string
}

// Claims are the claims of a verified token. They are shared with the
// cache: treat them as read-only.
type Claims struct {
	// Provider is the configured name of the issuing provider.
	Provider string
	// Issuer is "iss".
	Issuer string
	// Subject is "sub".
	Subject string
	// ClientID is "client_id", else "azp", else "cid".
	ClientID string
	// Scopes come from "scope" (space-separated) or "scp" (a list).
	Scopes []string
	// Audience is "aud".
	Audience []string
	// IssuedAt is "iat" (zero when absent).
	IssuedAt time.Time
	// Expiry is "exp".
	Expiry time.Time
	// TokenUse is "token_use".
	TokenUse string
	// TokenID is "jti".
	TokenID string
}

// Source says how a result was reached, for metrics.
type Source string

// The sources of a result.
const (
	// SourceCache: the result cache answered.
	SourceCache Source = "cache"
	// SourceSignature: the token's signature was checked.
	SourceSignature Source = "signature"
	// SourceIntrospection: the provider's introspection endpoint answered.
	SourceIntrospection Source = "introspection"
)

// Observer receives the verifier's events, for metrics. Its methods must
// be safe for concurrent use and must not block.
type Observer interface {
	// Verified records a verification for provider (UnknownProvider when
	// none matched) with outcome "ok" or a Reason's name, reached through
	// source.
	Verified(provider, outcome string, source Source)
	// KeysFetched records a JWKS fetch of provider; err is nil on
	// success. err never contains key material or a token.
	KeysFetched(provider string, err error)
}

// UnknownProvider is the provider name Observer.Verified gets for tokens
// that matched no provider. Configured names cannot start with '_'.
const UnknownProvider = "_other"

// OutcomeOK is the outcome of a token that passed every check.
const OutcomeOK = "ok"
