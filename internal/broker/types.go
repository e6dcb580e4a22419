package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Selector names the credentials and parameters of a token. It mirrors the
// API's TokenSelector: exactly one of Client and Credentials is set.
type Selector struct {
	// Client is the name of a broker-held client.
	Client string
	// Credentials are pass-through credentials presented by the caller.
	Credentials *Credentials
	// Scopes are the requested scopes, in any order, possibly repeated.
	Scopes []string
	// Audience is sent upstream as `audience` when set.
	Audience string
	// Resource is sent upstream as `resource` when set.
	Resource string
	// Params are further form parameters (name → value) the caller asks
	// to send: only those its broker-held client's allowed_parameters
	// name; none with pass-through credentials. Part of the cache key.
	Params map[string]string
}

// Credentials are client credentials presented by a caller.
type Credentials struct {
	// Provider is the configured provider's name.
	Provider string
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// ClientSecret is the client secret.
	ClientSecret secret.String
}

// Request asks for a token.
type Request struct {
	// Selector says which token.
	Selector Selector
	// MinTTL is the least remaining life the caller needs; the broker's
	// min_remaining applies when MinTTL is smaller.
	MinTTL time.Duration
	// Caller is the caller's identity (access.Identity.Name), charged for
	// the upstream requests of pass-through credentials (the provider's
	// per-caller limit). It is not part of the cache key.
	Caller string
}

// Token is a token as served to callers.
type Token struct {
	// AccessToken is the token itself.
	AccessToken secret.String
	// TokenType is the endpoint's token_type.
	TokenType string
	// Scopes are the granted scopes.
	Scopes []string
	// IssuedAt is when the request that obtained the token was sent.
	IssuedAt time.Time
	// ExpiresAt is when the token expires.
	ExpiresAt time.Time
	// RefreshAt is the token's refresh point.
	RefreshAt time.Time
	// KeyID is the non-secret id of the token's cache entry.
	KeyID string
	// CertThumbprint is the cnf.x5t#S256 of a certificate-bound token
	// (RFC 8705): it is usable only with that client certificate. "" when
	// the token is not bound.
	CertThumbprint string
}

// Errors returned by the broker itself. Upstream failures are returned as
// *upstream.Error values (match them with the upstream.Err* kinds).
var (
	// ErrInvalidArgument: the request breaks a rule; the error is a
	// *FieldError naming the field.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnknownClient: no broker-held client has the requested name.
	ErrUnknownClient = errors.New("unknown client")
	// ErrUnknownProvider: pass-through credentials name a provider that is
	// not configured. It comes wrapped in a *FieldError.
	ErrUnknownProvider = errors.New("unknown provider")
	// ErrPassthroughDisabled: the caller presented its own credentials but
	// the broker does not accept pass-through credentials.
	ErrPassthroughDisabled = errors.New("pass-through credentials are not accepted")
	// ErrTokenTooShort: the provider's tokens live less than the caller
	// asked for with min_ttl (a *FieldError for "min_ttl" states the
	// largest min_ttl the key can serve), or less than min_remaining.
	ErrTokenTooShort = errors.New("token lifetime too short")
	// ErrShuttingDown: the broker is shutting down (Shutdown was called):
	// the fetch the caller waited for was cancelled, or none may start.
	// The error returned also matches upstream.ErrUnavailable, so layers
	// that know only the upstream kinds report it as unavailability.
	ErrShuttingDown = errors.New("the broker is shutting down")
	// ErrFleetNotTold: an invalidation was applied on this replica, but the
	// fleet (the Redis tier) could not be told; the operator should retry.
	ErrFleetNotTold = errors.New("invalidated on this replica only: the other replicas could not be told (redis tier unavailable); retry when it is back")
)

// errShutdown is what callers get once Shutdown was called.
var errShutdown = fmt.Errorf("%w (%w)", ErrShuttingDown, upstream.ErrUnavailable)

// errInternal is returned when a fetch failed in a way that must not be
// described to callers (a recovered panic).
var errInternal = errors.New("internal error")

// keyedError carries the key id of the request that failed, for logs.
type keyedError struct {
	keyID string
	err   error
}

func (e *keyedError) Error() string { return e.err.Error() }
func (e *keyedError) Unwrap() error { return e.err }

// KeyIDOf returns the key id of the request that failed with err, or ""
// when err does not come from a resolved request.
func KeyIDOf(err error) string {
	var k *keyedError
	if errors.As(err, &k) {
		return k.keyID
	}
	return ""
}

// FieldError is a request error that names the offending field (by its API
// name, for example "selector.scopes[2]") and the rule it breaks.
type FieldError struct {
	// Field is the API path of the field.
	Field string
	// Rule says what the field must be.
	Rule string
	// Kind is ErrInvalidArgument, ErrUnknownProvider or (for "min_ttl")
	// ErrTokenTooShort.
	Kind error
}

// Error implements error.
func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Rule) }

// Unwrap returns the error's kind.
func (e *FieldError) Unwrap() error { return e.Kind }

// EventKind says why a watcher received an Event.
type EventKind int

// The kinds of watch events. The first token of a watch is not an event:
// Watch returns it (Watcher.Initial).
const (
	// EventRefreshed: the key's token was replaced by a new one.
	EventRefreshed EventKind = iota + 1
	// EventInvalidated: an operator invalidated the token; Token is its
	// replacement.
	EventInvalidated
	// EventUnavailable: no valid token can be held; Err says why. Token is
	// the zero value.
	EventUnavailable
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case EventRefreshed:
		return "refreshed"
	case EventInvalidated:
		return "invalidated"
	case EventUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one message to a watcher.
type Event struct {
	// Kind says why the event was sent.
	Kind EventKind
	// Token is the new token (zero for EventUnavailable).
	Token Token
	// Err is why no valid token can be held (EventUnavailable only): an
	// *upstream.Error or another broker error, mapped by the server like a
	// GetToken error.
	Err error
}
