// Package broker is tokenbroker's domain: it turns a request for a token
// into a key, serves the cached token while it may be served, fetches a new
// one from the provider's token endpoint when needed (one upstream request
// shared by every concurrent caller of the key), refreshes the tokens that
// are in use at their refresh point, and pushes new tokens to watchers.
//
// The serving rule: a cached token is served while it is before its refresh
// point and has at least max(min_remaining, min_ttl) of life left. Past the
// refresh point the next caller fetches a new token (coalesced); when Run
// is running, the fetch happens in the background instead and callers get
// the old token meanwhile. When a fetch fails and the old token still has
// enough life, the old token is served and the failure logged. A token with
// less than min_remaining left is never served.
//
// Who owns what, one file each:
//
//	key.go       key resolution: selector → credentials, cache key, key id
//	get.go       the GetToken path, from request to answer (hits read here only)
//	entry.go     the entry registry and its life cycle (when an entry ends)
//	schedule.go  the refresh scheduler: timer heap, due times, retry backoff
//	fetch.go     the coalesced fetch, fencing by generation, install, failure
//	watch.go     watchers and the fan-out of events to them
//	holdoff.go   hold-off after failures (key and provider) and the negative cache
//	admin.go     invalidation, listing, statistics
//	rules.go     the request rules the edges share
//
// State lives in two places. The token cache (internal/tokencache) is the
// one home of every token's bytes: a cost-bounded, lossy store in which a
// watched key's token is pinned. The entry registry (Broker.entries) holds
// only metadata, for the keys that are watched, in flight, due for a
// refresh or retry they will do, or whose token is still cached: timing,
// generation, watchers, retry state. One scheduler (a timer heap driven by
// Run) visits those entries; idle keys are not refreshed.
//
// Locks: Broker.mu guards the registry, every entry's fields but the
// atomics (used, hits, lastUsed), the schedule, the providers' health and
// running. Nothing waits while holding it (no network, no channel receive,
// no ristretto Wait or Del): the cache's Set, Get and Has are the only
// cache calls made under it. negMu guards the negative cache alone. The
// GetToken hit path takes only the read lock, once.
//
// The package has no gRPC imports; the server maps its errors.
package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	mathrand "math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Fetcher obtains tokens from one provider's token endpoint.
// *upstream.Client implements it.
type Fetcher interface {
	Fetch(ctx context.Context, r upstream.Request) (upstream.Token, error)
}

// Fleet shares tokens among replicas of the broker. *shared.Tier
// implements it.
type Fleet interface {
	// Obtain returns a token for key that fresh accepts, filed by any
	// replica, or else the one fetch returns, fetching at most once per
	// key across the fleet at a time.
	Obtain(ctx context.Context, key string, fresh func(*tokencache.Record) bool, fetch func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error)
	// Invalidated fences off the tokens the fleet holds and announces the
	// invalidation (selector, as encoded by the broker) to the other
	// replicas.
	Invalidated(ctx context.Context, selector []byte) error
	// Stats describes the replica's use of the fleet.
	Stats() FleetStats
}

// Observer receives the broker's measurements. Durations are never
// negative.
type Observer interface {
	// UpstreamDone reports one upstream fetch f: its error (nil for a
	// token) and how long it took, retries included.
	UpstreamDone(f Fetch, err error, d time.Duration)
	// Refreshed reports a token replaced while the old one still had
	// lead of its life left.
	Refreshed(provider string, lead time.Duration)
	// Served reports a token handed to a caller of f's provider and
	// client (f.KeyID and f.ClientID unset) with remaining life left: a
	// GetToken answer, a watch's initial token, or a new token pushed to
	// a watcher (once per watcher). It is called on the hit path and
	// under the broker's lock: it must not block, and f is passed by
	// value so that the call allocates nothing.
	Served(f Fetch, remaining time.Duration)
}

// Fetch names an upstream fetch to an Observer: none of it is secret.
type Fetch struct {
	// Provider is the provider's name.
	Provider string
	// ClientID is the OAuth client id the fetch authenticated as.
	ClientID string
	// Client is the broker-held client's name, or for pass-through the
	// client id: whom the cost accounting charges.
	Client string
	// Passthrough is true when the caller presented the credentials:
	// Client is then the caller's client id, which /metrics shows only
	// when configured to (metrics.client_id_label).
	Passthrough bool
	// KeyID is the non-secret id of the key the token is filed under.
	KeyID string
	// Requests is, in UpstreamDone, how many HTTP requests the fetch sent
	// (retries included; 0 when it was refused locally).
	Requests int
}

// noObserver is the Observer of a broker configured without one.
type noObserver struct{}

func (noObserver) UpstreamDone(Fetch, error, time.Duration) {}
func (noObserver) Refreshed(string, time.Duration)          {}
func (noObserver) Served(Fetch, time.Duration)              {}

// Client is a broker-held client: credentials callers name but never see.
type Client struct {
	// Provider is the name of the client's provider.
	Provider string
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// ClientSecret is the client secret, used when Credential is nil.
	ClientSecret secret.String
	// Credential, when set, authenticates the client instead of
	// ClientSecret: its method and current material (which may rotate).
	// The cache key binds its Binding, not the material, so a rotation
	// keeps the client's tokens until their refresh point.
	Credential *upstream.Credential
	// Params are the form parameters of the client's token requests (its
	// provider's and its own), sorted by name.
	Params [][2]string
	// AllowedParams are the names of the parameters callers may add.
	AllowedParams []string
}

// Config configures a Broker. Every value is explicit: the defaults live in
// internal/config, and New refuses an invalid value (a zero where zero
// means nothing) with an error naming the field.
type Config struct {
	// Providers are the token endpoints, by provider name.
	Providers map[string]Fetcher
	// Clients are the broker-held clients, by name.
	Clients map[string]Client
	// Passthrough accepts credentials presented by callers.
	Passthrough bool
	// ProviderParams are the form parameters of each provider's
	// pass-through requests, sorted by name (broker-held clients carry
	// theirs in Client.Params).
	ProviderParams map[string][][2]string
	// Cache holds the tokens. Required.
	Cache *tokencache.Cache
	// RefreshFraction is where in a token's lifetime its refresh point lies
	// at the latest, in (0, 1), so that a watcher's token never has less
	// than 1 − RefreshFraction of its life left while the endpoint is
	// healthy.
	RefreshFraction float64
	// RefreshJitter spreads refresh points uniformly over the RefreshJitter
	// × lifetime before RefreshFraction (0: none), so tokens fetched
	// together are not refreshed together. RefreshFraction − RefreshJitter
	// must stay above 0.
	RefreshJitter float64
	// RefreshRates are the refreshes per second this replica plans for,
	// by provider (its share of the fleet's budget): refresh points of
	// tokens due together are spread to keep to it (schedule.go's
	// refreshPlanner). A provider without one (or 0) is not smoothed.
	RefreshRates map[string]float64
	// MinRemaining is the least life a served token may have (0: none).
	MinRemaining time.Duration
	// NegativeTTL is how long a non-retryable upstream rejection is
	// remembered per key (0: not remembered).
	NegativeTTL time.Duration
	// FetchTimeout bounds one shared upstream fetch with its retries. It
	// is independent of any caller's deadline. Must be positive.
	FetchTimeout time.Duration
	// RetryBase and RetryMax shape the backoff between failed background
	// refreshes: the n-th retry waits a random time in
	// [0, min(RetryMax, RetryBase×2^(n-1))], or the endpoint's Retry-After
	// when that is longer. RetryBase must be positive.
	RetryBase time.Duration
	// RetryMax caps the backoff between failed background refreshes; at
	// least RetryBase.
	RetryMax time.Duration
	// HMACKey keys the cache-key HMAC. When empty, a random key is used.
	// Replicas that share a Fleet must share it.
	HMACKey []byte
	// Fleet, when set, shares tokens with the broker's other replicas: a
	// fetch first looks for a token another replica filed, and fetches
	// upstream under the fleet's lock. Pass the broker to the fleet as its
	// Receiver (Adopt, ApplyInvalidation).
	Fleet Fleet
	// Observer, when set, is told of upstream requests, refreshes and
	// served tokens (for metrics). Its methods must be cheap: some run
	// under the broker's lock.
	Observer Observer
	// Logger receives warnings. Required.
	Logger *slog.Logger
}

// check refuses an invalid configuration, naming the field.
func (c *Config) check() error {
	bad := func(field, rule string, v any) error {
		return fmt.Errorf("broker: Config.%s %s, got %v", field, rule, v)
	}
	switch {
	case c.Cache == nil:
		return errors.New("broker: Config.Cache is required")
	case c.Logger == nil:
		return errors.New("broker: Config.Logger is required")
	case !(c.RefreshFraction > 0 && c.RefreshFraction < 1):
		return bad("RefreshFraction", "must be in (0, 1)", c.RefreshFraction)
	case !(c.RefreshJitter >= 0 && c.RefreshFraction-c.RefreshJitter > 0):
		return bad("RefreshJitter", "must be at least 0 and keep RefreshFraction − RefreshJitter above 0", c.RefreshJitter)
	case c.MinRemaining < 0:
		return bad("MinRemaining", "must not be negative (0: none)", c.MinRemaining)
	case c.NegativeTTL < 0:
		return bad("NegativeTTL", "must not be negative (0: not remembered)", c.NegativeTTL)
	case c.FetchTimeout <= 0:
		return bad("FetchTimeout", "must be positive", c.FetchTimeout)
	case c.RetryBase <= 0:
		return bad("RetryBase", "must be positive", c.RetryBase)
	case c.RetryMax < c.RetryBase:
		return bad("RetryMax", "must be at least RetryBase", c.RetryMax)
	}
	for name, cl := range c.Clients {
		if c.Providers[cl.Provider] == nil {
			return fmt.Errorf("broker: Config.Clients[%q] names unknown provider %q", name, cl.Provider)
		}
	}
	return nil
}

// Broker serves tokens. Its methods are safe for concurrent use. Run drives
// the background refreshes; without it, tokens are fetched only when
// callers need them.
type Broker struct {
	cfg     Config
	keyer   *keyer
	flights singleflight.Group // the coalesced fetches, by key (fetch.go)
	seed    maphash.Seed       // token fingerprints (entry.fp)

	// mu guards entries, schedule, running, providers and every entry's
	// fields but its atomics. Nothing waits while holding it.
	mu        sync.RWMutex
	entries   map[string]*entry          // the registry (entry.go)
	schedule  schedule                   // the refresh scheduler's heap (schedule.go)
	running   bool                       // Run is running
	providers map[string]*providerState  // by provider name; fixed at New (holdoff.go)
	planners  map[string]*refreshPlanner // by provider name, nil when not smoothed; fixed at New
	wake      chan struct{}              // a new earliest due time; capacity 1

	// life ends when Shutdown or Close is called: it cancels every fetch
	// in flight, which inflight counts.
	life     context.Context
	stop     context.CancelFunc
	inflight sync.WaitGroup

	// randN returns a random integer in [0, n); tests make it
	// deterministic.
	randN func(n int64) int64

	stats      counters
	byUpstream map[string]*upstreamCounters // by provider name; fixed at New

	negMu    sync.Mutex
	negative map[string]rejection // key, or credentials HMAC (invalid_client) → remembered non-retryable failure
}

// New returns a Broker, or an error naming the first invalid field of cfg.
func New(cfg Config) (*Broker, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	key := cfg.HMACKey
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key) // never fails (crypto/rand panics on failure).
	}
	life, stop := context.WithCancel(context.Background())
	byUpstream := make(map[string]*upstreamCounters, len(cfg.Providers))
	providers := make(map[string]*providerState, len(cfg.Providers))
	for name := range cfg.Providers {
		byUpstream[name] = new(upstreamCounters)
		providers[name] = new(providerState)
	}
	planners := make(map[string]*refreshPlanner)
	for name, rate := range cfg.RefreshRates {
		if p := newRefreshPlanner(rate); p != nil {
			planners[name] = p
		}
	}
	b := &Broker{
		planners:   planners,
		byUpstream: byUpstream,
		providers:  providers,
		cfg:        cfg,
		keyer:      newKeyer(key),
		seed:       maphash.MakeSeed(),
		entries:    make(map[string]*entry),
		wake:       make(chan struct{}, 1),
		life:       life,
		stop:       stop,
		randN:      mathrand.Int64N,
		negative:   make(map[string]rejection),
	}
	cfg.Cache.OnGone(b.gone)
	cfg.Cache.ChargeKeys(entryCost)
	return b, nil
}

// Shutdown cancels the fetches in flight at once and refuses new ones:
// callers waiting for a fetch, and later callers that would need one, get
// ErrShuttingDown, while tokens already held are still served. Call it
// when shutdown begins, so that no caller waits for a slow token endpoint
// through the server's grace period. It does not wait; Close does.
func (b *Broker) Shutdown() {
	b.stop()
}

// Close cancels the fetches in flight and waits for them to end, so the
// cache can be closed after it. Call it after Run has returned and no
// caller remains.
func (b *Broker) Close() {
	b.stop()
	b.inflight.Wait()
}
