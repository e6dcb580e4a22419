// Package upstream is the client for OAuth 2.0 token endpoints (RFC 6749
// section 4.4, the client-credentials grant). One Client serves one provider:
// it authenticates with client_secret_basic or client_secret_post, or, for
// a broker-held client's Credential, with private_key_jwt (a signed or a
// ready client assertion) or mutual TLS (RFC 8705), parses the
// endpoint's answer (expires_in as number or string, the JWT exp claim as a
// fallback), retries throttling and transient failures with exponential
// backoff and full jitter (honouring Retry-After), and keeps to the
// provider's request budget: a token bucket, of which requests with
// caller-presented credentials may spend only the pass-through share, and
// each caller identity and client id only its part of that.
//
// Errors are *Error values that match one of the Err* kinds with errors.Is.
// Their messages carry the OAuth error code and a short sanitised
// description scrubbed of the client secret in any of its encodings, never
// a secret, a token, a raw response body or any other field of it.
package upstream

import (
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// AuthMethod is how the client authenticates to the token endpoint
// (RFC 6749 section 2.3.1).
type AuthMethod string

// The supported client authentication methods.
const (
	// AuthBasic sends the URL-encoded client id and secret in an HTTP Basic
	// Authorization header.
	AuthBasic AuthMethod = "client_secret_basic"
	// AuthPost sends client_id and client_secret in the form body.
	AuthPost AuthMethod = "client_secret_post"
)

// Provider describes one token endpoint.
type Provider struct {
	// Name is the provider's configured name, used in errors and logs.
	Name string
	// TokenURL is the token endpoint's URL.
	TokenURL string
	// AuthMethod is how client credentials are sent.
	AuthMethod AuthMethod
	// Timeout bounds one HTTP attempt.
	Timeout time.Duration
	// RateLimit is the number of requests per second this client may send;
	// Burst is the token bucket's size.
	RateLimit float64
	// Burst is the most requests that may be sent at once.
	Burst int
	// PassthroughShare is the largest fraction of RateLimit and Burst that
	// pass-through requests (Request.Passthrough) may spend together, in
	// (0, 1]; the rest is kept for broker-held clients.
	PassthroughShare float64
	// PassthroughCallerShare is the largest fraction of the pass-through
	// budget that the requests of one Request.Caller may spend, in (0, 1].
	PassthroughCallerShare float64
	// PassthroughClientShare is the largest fraction of the pass-through
	// budget that the requests of one ClientID may spend, in (0, 1].
	PassthroughClientShare float64
	// DefaultLifetime is assumed, with a warning, when the endpoint reports
	// neither expires_in nor a JWT exp claim.
	DefaultLifetime time.Duration
}

// Request is one client-credentials token request.
type Request struct {
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// ClientSecret is the client secret.
	ClientSecret secret.String
	// Scopes are sent space-separated as `scope` when not empty.
	Scopes []string
	// Audience is sent as `audience` when set.
	Audience string
	// Resource is sent as `resource` (RFC 8707) when set.
	Resource string
	// Passthrough marks credentials a caller presented (not held by the
	// broker): the request is limited to the provider's pass-through share
	// of the budget, and to the shares of its Caller and ClientID.
	Passthrough bool
	// Caller is the identity of the caller a pass-through request is made
	// for (access.Identity.Name; every anonymous caller is one identity).
	// It is not sent and must not be part of a cache key.
	Caller string
	// Credential, when set, authenticates the request with its method and
	// current material (a broker-held client); ClientSecret and the
	// provider's AuthMethod are then not used.
	Credential *Credential
	// Params are further form parameters (name, value) sent as they are:
	// the provider's, the client's and the caller's allowed ones. They
	// must not name a parameter the client sets itself (see
	// ReservedParam). The caller puts them in its cache key.
	Params [][2]string
	// MaxAttempts, when > 0, lowers Options.MaxAttempts for this request:
	// the broker sends a key that is already backing off as a single
	// attempt (its own backoff spaces the retries). Not sent; not part of
	// a cache key.
	MaxAttempts int
}

// Token is an access token as obtained from the endpoint.
type Token struct {
	// AccessToken is the token itself.
	AccessToken secret.String
	// TokenType is the endpoint's token_type, for example "Bearer".
	TokenType string
	// Scopes are the granted scopes as the endpoint reported them, or the
	// requested ones when it reported none.
	Scopes []string
	// IssuedAt is when the request that obtained the token was sent.
	IssuedAt time.Time
	// ExpiresAt is IssuedAt plus the token's lifetime.
	ExpiresAt time.Time
	// Requests is how many requests Fetch sent to obtain it, retries
	// included.
	Requests int
	// CertThumbprint is the cnf.x5t#S256 of a certificate-bound token
	// (RFC 8705 section 3): the token is only usable over TLS with that
	// client certificate. "" for unbound tokens.
	CertThumbprint string
}

// The kinds of upstream failure. Every error returned by Client.Fetch
// matches exactly one of them with errors.Is, or is a context error.
var (
	// ErrInvalidClient: the endpoint rejected the client credentials.
	ErrInvalidClient = errors.New("invalid_client")
	// ErrInvalidScope: a requested scope is unknown or not allowed.
	ErrInvalidScope = errors.New("invalid_scope")
	// ErrUnauthorizedClient: the client may not use this grant.
	ErrUnauthorizedClient = errors.New("unauthorized_client")
	// ErrThrottled: the endpoint throttled us (429, TooManyRequestsException)
	// or the local request budget is exhausted. See Error.RetryAfter.
	ErrThrottled = errors.New("throttled")
	// ErrUnavailable: 5xx, network failure or a malformed response.
	ErrUnavailable = errors.New("unavailable")
	// ErrRejected: any other rejection (invalid_request,
	// unsupported_grant_type, an unexpected status...). Not retryable.
	ErrRejected = errors.New("rejected")
)

// Error is an upstream failure.
type Error struct {
	// Kind is one of the Err* values above; Unwrap returns it.
	Kind error
	// Provider is the provider's name.
	Provider string
	// Status is the HTTP status, 0 when no response was received.
	Status int
	// Code is the OAuth error code (RFC 6749 section 5.2) when the endpoint
	// sent one, for example "invalid_scope".
	Code string
	// Description is the endpoint's error_description, sanitised (printable
	// ASCII only) and truncated; or a short description of our own.
	Description string
	// RetryAfter is how long to wait before trying again, when known.
	RetryAfter time.Duration
	// Requests is how many requests Fetch sent before giving up, retries
	// included (0 for a Local error).
	Requests int
	// Local is true when the error was produced without contacting the
	// endpoint (request budget exhausted, or an invalid Request).
	Local bool

	// retryAfterSet records that RetryAfter came from the endpoint's
	// Retry-After header (which may legitimately be zero).
	retryAfterSet bool
}
