package tokensource

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Defaults of the options.
const (
	// DefaultMinRemaining is the least remaining life a held token must
	// have to be returned (WithMinRemaining). It matches the broker's
	// default cache.min_remaining.
	DefaultMinRemaining = 30 * time.Second
	// DefaultBackoffBase is the first reconnect backoff ceiling
	// (WithBackoff).
	DefaultBackoffBase = time.Second
	// DefaultBackoffMax is the largest reconnect backoff ceiling
	// (WithBackoff).
	DefaultBackoffMax = time.Minute
)

// Option configures a Source; see the With… functions.
type Option func(*options)

// options is what the Options configure.
type options struct {
	minRemaining time.Duration
	base, max    time.Duration
	logger       *slog.Logger
	insecure     bool

	// For tests: the clock Token reads, the random numbers of the
	// backoff, and a function called (on the watch goroutine) after every
	// change of the held state.
	now     func() time.Time
	randN   func(int64) int64
	changed func()
}

// defaultOptions returns the options before any Option applies.
func defaultOptions() options {
	return options{
		minRemaining: DefaultMinRemaining,
		base:         DefaultBackoffBase,
		max:          DefaultBackoffMax,
		logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		now:          time.Now,
		randN:        rand.Int64N,
	}
}

// validate reports the first option value that breaks its rule.
func (o *options) validate() error {
	switch {
	case o.minRemaining < 0:
		return fmt.Errorf("tokensource: WithMinRemaining: d must be >= 0, got %s", o.minRemaining)
	case o.base <= 0:
		return fmt.Errorf("tokensource: WithBackoff: base must be > 0, got %s", o.base)
	case o.max < o.base:
		return fmt.Errorf("tokensource: WithBackoff: max must be >= base (%s), got %s", o.base, o.max)
	case o.logger == nil:
		return fmt.Errorf("tokensource: WithLogger: logger must not be nil")
	}
	return nil
}

// WithMinRemaining sets the least remaining life a held token must have to
// be returned by Token; a token with less counts as no token. Default
// DefaultMinRemaining (30s); must be >= 0. Keep it at most the broker's
// cache.min_remaining: the broker may push tokens with only that much life
// left when its token endpoint is failing.
func WithMinRemaining(d time.Duration) Option {
	return func(o *options) { o.minRemaining = d }
}

// WithBackoff sets the reconnect backoff of the watch stream: after the
// n-th consecutive failure (n counting from 0, reset by each stream that
// delivers its first token) the Source waits a random time in
// [0, min(max, base·2ⁿ)] ("full jitter"). After a refusal that reopening
// will not change by itself (InvalidArgument, NotFound, PermissionDenied,
// Unauthenticated, FailedPrecondition, Unimplemented) it waits in
// [max/2, max] instead. A RetryInfo in the broker's status lengthens the
// wait, up to max. Defaults DefaultBackoffBase (1s) and DefaultBackoffMax
// (1m); base must be > 0 and max >= base.
func WithBackoff(base, max time.Duration) Option {
	return func(o *options) { o.base, o.max = base, max }
}

// WithLogger sets the logger for stream and token events (reconnects at
// info or warn level, token arrivals at debug level). Neither the token
// nor the selector is ever logged. Default: no logging.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithInsecure lets the Source, as gRPC PerRPCCredentials, send its token
// over connections without transport security (plaintext, for example to a
// sidecar on loopback). By default gRPC refuses to.
func WithInsecure() Option {
	return func(o *options) { o.insecure = true }
}
