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
// State lives in two places. The token cache (ristretto) is a bounded,
// lossy value store. A plain map of entries holds the keys that are in
// flight, watched or used within their current lifetime: their current
// token, watchers, refresh schedule and retry state. One scheduler (a timer
// heap driven by Run) refreshes those entries; idle keys are not refreshed.
//
// The package has no gRPC imports; the server maps its errors.
package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"runtime/debug"
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
	// Served reports a token handed to a caller with remaining life left.
	Served(remaining time.Duration)
}

// Fetch names an upstream fetch to an Observer: none of it is secret.
type Fetch struct {
	// Provider is the provider's name.
	Provider string
	// ClientID is the OAuth client id the fetch authenticated as.
	ClientID string
	// KeyID is the non-secret id of the key the token is filed under.
	KeyID string
}

// noObserver is the Observer of a broker configured without one.
type noObserver struct{}

func (noObserver) UpstreamDone(Fetch, error, time.Duration) {}
func (noObserver) Refreshed(string, time.Duration)          {}
func (noObserver) Served(time.Duration)                     {}

// Client is a broker-held client: credentials callers name but never see.
type Client struct {
	// Provider is the name of the client's provider.
	Provider string
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// ClientSecret is the client secret.
	ClientSecret secret.String
}

// Config configures a Broker. Zero durations and fractions take the
// documented defaults.
type Config struct {
	// Providers are the token endpoints, by provider name.
	Providers map[string]Fetcher
	// Clients are the broker-held clients, by name.
	Clients map[string]Client
	// Passthrough accepts credentials presented by callers.
	Passthrough bool
	// Cache holds the tokens. Required.
	Cache *tokencache.Cache
	// RefreshFraction is where in a token's lifetime its refresh point lies
	// at the latest (default 0.75), so that a watcher's token never has
	// less than 1 − RefreshFraction of its life left while the endpoint is
	// healthy.
	RefreshFraction float64
	// RefreshJitter spreads refresh points uniformly over the RefreshJitter
	// × lifetime before RefreshFraction (default 0: none), so tokens
	// fetched together are not refreshed together.
	RefreshJitter float64
	// MinRemaining is the least life a served token may have (default 30s
	// when zero; use a negative value for none).
	MinRemaining time.Duration
	// NegativeTTL is how long a non-retryable upstream rejection is
	// remembered per key (0: not remembered).
	NegativeTTL time.Duration
	// FetchTimeout bounds one shared upstream fetch with its retries
	// (default 30s). It is independent of any caller's deadline.
	FetchTimeout time.Duration
	// RetryBase and RetryMax shape the backoff between failed background
	// refreshes: the n-th retry waits a random time in
	// [0, min(RetryMax, RetryBase×2^(n-1))], or the endpoint's Retry-After
	// when that is longer. Defaults 1s and 1m.
	RetryBase time.Duration
	// RetryMax caps the backoff between failed background refreshes.
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
	// Logger receives warnings (default: slog.Default()).
	Logger *slog.Logger
}

// Broker serves tokens. Its methods are safe for concurrent use. Run drives
// the background refreshes; without it, tokens are fetched only when
// callers need them.
type Broker struct {
	cfg     Config
	keyer   *keyer
	flights singleflight.Group

	// mu guards entries, the schedule, running and every entry's fields
	// but entry.used. The GetToken hit path takes only the read lock.
	mu       sync.RWMutex
	entries  map[string]*entry
	schedule schedule
	wake     chan struct{} // a new earliest due time; capacity 1
	// refreshes counts background refreshes in flight, so Run can wait for
	// them; refreshCtx is cancelled when Run returns.
	running bool // Run is running

	// life ends when Close is called: it cancels every fetch in flight,
	// which inflight counts.
	life     context.Context
	stop     context.CancelFunc
	inflight sync.WaitGroup

	// randN returns a random integer in [0, n); tests make it
	// deterministic.
	randN func(n int64) int64

	stats      counters
	byUpstream map[string]*upstreamCounters // by provider name; fixed at New
	providers  map[string]*providerState    // by provider name; fixed at New; guarded by mu

	negMu    sync.Mutex
	negative map[string]rejection // key, or credentials HMAC (invalid_client) → remembered non-retryable failure
}

// rejection is a remembered non-retryable upstream failure.
type rejection struct {
	err   error
	until time.Time
	t     target // for invalidation
}

// maxRejections bounds the negative cache; past it, expired entries are
// swept on insert.
const maxRejections = 10_000

// New returns a Broker.
func New(cfg Config) (*Broker, error) {
	if cfg.Cache == nil {
		return nil, errors.New("broker: Config.Cache is required")
	}
	if cfg.RefreshFraction == 0 {
		cfg.RefreshFraction = 0.75
	}
	if cfg.RefreshFraction <= 0 || cfg.RefreshFraction >= 1 {
		return nil, fmt.Errorf("broker: refresh fraction %v is not in (0, 1)", cfg.RefreshFraction)
	}
	if cfg.RefreshJitter < 0 || cfg.RefreshFraction-cfg.RefreshJitter <= 0 {
		return nil, fmt.Errorf("broker: refresh jitter %v does not keep the refresh point in (0, 1)", cfg.RefreshJitter)
	}
	switch {
	case cfg.MinRemaining == 0:
		cfg.MinRemaining = 30 * time.Second
	case cfg.MinRemaining < 0:
		cfg.MinRemaining = 0
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	for name, c := range cfg.Clients {
		if cfg.Providers[c.Provider] == nil {
			return nil, fmt.Errorf("broker: client %q names unknown provider %q", name, c.Provider)
		}
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
	return &Broker{
		byUpstream: byUpstream,
		providers:  providers,
		cfg:        cfg,
		keyer:      newKeyer(key),
		entries:    make(map[string]*entry),
		wake:       make(chan struct{}, 1),
		life:       life,
		stop:       stop,
		randN:      mathrand.Int64N,
		negative:   make(map[string]rejection),
	}, nil
}

// target is a request resolved against the configuration.
type target struct {
	fetcher  Fetcher
	provider string
	req      upstream.Request
	key      string // the cache key (raw HMAC bytes)
	keyID    string
}

// resolve finds the fetcher and credentials a selector names.
func (b *Broker) resolve(sel Selector) (target, error) {
	var provider string
	var req upstream.Request
	switch {
	case sel.Credentials != nil && sel.Client != "":
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	case sel.Credentials != nil:
		if !b.cfg.Passthrough {
			return target{}, ErrPassthroughDisabled
		}
		provider = sel.Credentials.Provider
		req.ClientID, req.ClientSecret = sel.Credentials.ClientID, sel.Credentials.ClientSecret
		req.Passthrough = true // limited to the provider's pass-through share
	case sel.Client != "":
		c, ok := b.cfg.Clients[sel.Client]
		if !ok {
			return target{}, fmt.Errorf("client %q: %w", sel.Client, ErrUnknownClient)
		}
		provider = c.Provider
		req.ClientID, req.ClientSecret = c.ClientID, c.ClientSecret
	default:
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	}
	f := b.cfg.Providers[provider]
	if f == nil {
		return target{}, &FieldError{Field: "selector.client_credentials.provider", Rule: "must name a configured provider", Kind: ErrUnknownProvider}
	}
	req.Scopes = normalizeScopes(sel.Scopes)
	req.Audience, req.Resource = sel.Audience, sel.Resource
	key := b.keyer.derive(provider, req)
	return target{fetcher: f, provider: provider, req: req, key: key, keyID: keyID(key)}, nil
}

// GetToken returns a token for req under the serving rule.
func (b *Broker) GetToken(ctx context.Context, req Request) (Token, error) {
	t, err := b.resolve(req.Selector)
	if err != nil {
		return Token{}, err
	}
	t.req.Caller = req.Caller // for the pass-through limits; not in the key
	rec, err := b.get(ctx, t, max(b.cfg.MinRemaining, req.MinTTL))
	if err != nil {
		return Token{}, &keyedError{keyID: t.keyID, err: err}
	}
	b.cfg.Observer.Served(max(0, time.Until(rec.ExpiresAt)))
	return toToken(rec, t.keyID), nil
}

// get returns a record for t with at least need of life left, and marks
// the key as used.
func (b *Broker) get(ctx context.Context, t target, need time.Duration) (*tokencache.Record, error) {
	now := time.Now()
	cached, hit := b.cfg.Cache.Get(t.key)
	if !hit {
		// The cache evicted the key's token, or never admitted it; the
		// entry still knows it. Without this a caller would wait for a
		// refresh in flight while a servable token is at hand.
		cached = b.installed(t.key)
		hit = cached != nil
	}
	servable := hit && cached.ExpiresAt.Sub(now) >= need
	if hit {
		// A caller who wants more life than the provider's tokens can
		// give is refused whatever the age of the token at hand; one who
		// wants more than the token has left gets a new one below.
		if err := b.checkMinTTL(need, cached); err != nil {
			return nil, err
		}
		switch {
		case servable && now.Before(cached.RefreshAt):
			b.hit(t, cached, now)
			return cached, nil
		case servable && b.refreshInBackground(t, cached):
			// Past the refresh point: the refresher replaces the token
			// (or is already at it, or waits to retry), and the old one
			// serves meanwhile, without making this caller wait.
			b.hit(t, cached, now)
			return cached, nil
		}
	}
	if err := b.holdOff(t, now); err != nil {
		if servable {
			b.hit(t, cached, now)
			return cached, nil
		}
		return nil, err
	}
	b.stats.misses.Add(1)
	fresh, err := b.fetch(ctx, t, need)
	now = time.Now()
	if err != nil {
		if hit && cached.ExpiresAt.Sub(now) >= need {
			b.cfg.Logger.Warn("token refresh failed; serving the cached token",
				"key_id", t.keyID, "expires_in", cached.ExpiresAt.Sub(now).Round(time.Second), "error", err)
			b.touch(t, cached, now)
			return cached, nil
		}
		return nil, err
	}
	if err := b.checkMinTTL(need, fresh); err != nil {
		return nil, err
	}
	if left := fresh.ExpiresAt.Sub(now); left < need {
		// The fetch itself took the life the caller wanted.
		return nil, &FieldError{Field: "min_ttl", Kind: ErrTokenTooShort,
			Rule: fmt.Sprintf("the token just obtained has %v left, less than the %v asked for", left.Round(time.Second), need)}
	}
	b.touch(t, fresh, now)
	return fresh, nil
}

// checkMinTTL applies the min_ttl rule: a caller may ask for up to the
// lifetime of the key's tokens (rec's, as the provider issues them) less
// min_remaining, and gets a new token when the current one has less left;
// asking for more is an error that states the numbers. need is
// max(min_remaining, min_ttl).
func (b *Broker) checkMinTTL(need time.Duration, rec *tokencache.Record) error {
	if need <= b.cfg.MinRemaining {
		return nil
	}
	lifetime := rec.ExpiresAt.Sub(rec.IssuedAt)
	largest := max(b.cfg.MinRemaining, lifetime-b.cfg.MinRemaining)
	if need <= largest {
		return nil
	}
	return &FieldError{Field: "min_ttl", Kind: ErrTokenTooShort,
		Rule: fmt.Sprintf("must be at most %v for this key: the provider issues tokens living %v, and a token is served only while it keeps min_remaining (%v) of that life (asked for %v)",
			largest.Round(time.Second), lifetime.Round(time.Second), b.cfg.MinRemaining, need)}
}

// fetch gets a new token for t, sharing one upstream request with every
// concurrent caller of the same key, and installs it. The shared fetch
// runs on its own deadline: ctx ending only stops this caller's wait. A
// flight that finds a servable token installed since its caller looked
// (by the flight that just ended) returns that token instead.
//
// An invalidation during the flight fences its result off: the callers then
// start a new flight (a few times at most).
func (b *Broker) fetch(ctx context.Context, t target, need time.Duration) (*tokencache.Record, error) {
	for attempt := 0; ; attempt++ {
		led := false
		ch := b.flights.DoChan(t.key, func() (any, error) {
			led = true
			if rec := b.current(t.key, need); rec != nil {
				return rec, nil
			}
			return b.fetchAndInstall(context.WithoutCancel(ctx), t, true)
		})
		select {
		case res := <-ch:
			if !led {
				b.stats.coalesced.Add(1)
			}
			if errors.Is(res.Err, errFenced) && attempt < 3 {
				continue
			}
			if res.Err != nil {
				return nil, res.Err
			}
			return res.Val.(*tokencache.Record), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// fetchAndInstall performs one upstream fetch for t and installs its
// result, or records its failure. It ends early when the broker closes.
// A fetch for callers (not the scheduler's) is refused while the key or
// its provider is held off.
func (b *Broker) fetchAndInstall(ctx context.Context, t target, forCallers bool) (rec *tokencache.Record, err error) {
	b.inflight.Add(1)
	defer b.inflight.Done()
	if b.life.Err() != nil {
		return nil, errShutdown
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.FetchTimeout)
	defer cancel()
	defer context.AfterFunc(b.life, cancel)()
	defer func() {
		// A panic here would crash the process: the fetch runs on a
		// goroutine of its own, out of reach of the server's recovery.
		if p := recover(); p != nil {
			b.cfg.Logger.Error("panic in token fetch", "key_id", t.keyID, "panic_type", fmt.Sprintf("%T", p), "stack", string(debug.Stack()))
			rec, err = nil, errInternal
			b.failed(t, nil, 0, err)
		}
	}()
	e, gen, attempts, probe, err := b.beginFetch(t, forCallers)
	if err != nil {
		return nil, err
	}
	if probe {
		defer b.endProbe(t.provider)
	}
	up := t
	up.req.MaxAttempts = attempts
	if b.cfg.Fleet != nil {
		rec, err = b.cfg.Fleet.Obtain(ctx, t.key, b.fresh, func(ctx context.Context) (*tokencache.Record, error) {
			return b.fetchUpstream(ctx, up)
		})
	} else {
		rec, err = b.fetchUpstream(ctx, up)
	}
	if err != nil {
		if b.life.Err() != nil {
			// Cancelled by Shutdown: not the endpoint's failure.
			b.abandoned(t, e, gen)
			return nil, errShutdown
		}
		b.remember(t, err)
		b.failed(t, e, gen, err)
		return nil, err
	}
	if !b.install(t, rec, e, gen) {
		return nil, errFenced
	}
	return rec, nil
}

// fetchUpstream asks t's token endpoint for a token.
func (b *Broker) fetchUpstream(ctx context.Context, t target) (*tokencache.Record, error) {
	start := time.Now()
	tok, err := t.fetcher.Fetch(ctx, t.req)
	b.cfg.Observer.UpstreamDone(Fetch{Provider: t.provider, ClientID: t.req.ClientID, KeyID: t.keyID}, err, time.Since(start))
	b.countUpstream(t.provider, err)
	b.upstreamOutcome(t, err)
	if err != nil {
		return nil, err
	}
	rec := b.record(tok)
	if rec.ExpiresAt.Sub(time.Now()) < b.cfg.MinRemaining {
		// Useless: it could never be served. Remember that rather than
		// asking again on every call.
		return nil, fmt.Errorf("the endpoint issued a token living %v, less than min_remaining %v: %w",
			rec.ExpiresAt.Sub(rec.IssuedAt).Round(time.Second), b.cfg.MinRemaining, ErrTokenTooShort)
	}
	return rec, nil
}

// fresh reports whether a token another replica filed may stand for a
// new one: it is before its refresh point and servable.
func (b *Broker) fresh(rec *tokencache.Record) bool {
	now := time.Now()
	return now.Before(rec.RefreshAt) && rec.ExpiresAt.Sub(now) >= b.cfg.MinRemaining
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

// record turns a fetched token into a cache record with a jittered
// refresh point in [fraction − jitter, fraction] of its lifetime.
func (b *Broker) record(tok upstream.Token) *tokencache.Record {
	lifetime := tok.ExpiresAt.Sub(tok.IssuedAt)
	frac := b.cfg.RefreshFraction - b.cfg.RefreshJitter*mathrand.Float64()
	return &tokencache.Record{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		Scopes:      tok.Scopes,
		IssuedAt:    tok.IssuedAt,
		ExpiresAt:   tok.ExpiresAt,
		RefreshAt:   tok.IssuedAt.Add(time.Duration(frac * float64(lifetime))),
	}
}

// remember files a non-retryable upstream rejection for NegativeTTL.
func (b *Broker) remember(t target, err error) {
	if b.cfg.NegativeTTL <= 0 || retryable(err) {
		return
	}
	now := time.Now()
	b.negMu.Lock()
	defer b.negMu.Unlock()
	if len(b.negative) >= maxRejections {
		for k, r := range b.negative {
			if !now.Before(r.until) {
				delete(b.negative, k)
			}
		}
	}
	if len(b.negative) < maxRejections {
		key := t.key
		if errors.Is(err, upstream.ErrInvalidClient) {
			// The credentials themselves were refused: whatever scopes,
			// audience or resource a caller asks for next, the answer is
			// the same.
			key = b.keyer.deriveCredentials(t.provider, t.req)
		}
		b.negative[key] = rejection{err: err, until: now.Add(b.cfg.NegativeTTL), t: t}
	}
}

// holdOff returns the reason not to ask the endpoint about t's key now: a
// remembered non-retryable rejection of the key or of its credentials (for
// negative_ttl), or a retryable failure of the key, or repeated failures
// of its provider, whose backoff has not ended (see holdoff.go).
func (b *Broker) holdOff(t target, now time.Time) error {
	b.mu.RLock()
	e := b.entries[t.key]
	held := b.keyHeldLocked(e, now)
	if held == nil {
		held = b.providerHeldLocked(t.provider, now)
	}
	if held != nil && e != nil && !e.used.Load() {
		// A caller waits for the key: the scheduler retries it.
		e.used.Store(true)
	}
	b.mu.RUnlock()
	if held != nil {
		return held
	}
	b.negMu.Lock()
	defer b.negMu.Unlock()
	if len(b.negative) == 0 {
		return nil
	}
	if err := b.rejectedLocked(t.key, now); err != nil {
		return err
	}
	return b.rejectedLocked(b.keyer.deriveCredentials(t.provider, t.req), now)
}

// rejectedLocked returns the rejection remembered under key, dropping it
// once expired. b.negMu must be held.
func (b *Broker) rejectedLocked(key string, now time.Time) error {
	r, ok := b.negative[key]
	if !ok {
		return nil
	}
	if now.Before(r.until) {
		return r.err
	}
	delete(b.negative, key)
	return nil
}

// retryable reports whether a failed fetch may succeed if tried again
// later: throttling, unavailability, and anything that is not an upstream
// rejection (a deadline, for instance).
func retryable(err error) bool {
	if errors.Is(err, ErrTokenTooShort) {
		return false
	}
	var uerr *upstream.Error
	if errors.As(err, &uerr) {
		return uerr.Retryable()
	}
	return true
}

// toToken converts a record for the caller.
func toToken(r *tokencache.Record, keyID string) Token {
	return Token{
		AccessToken: r.AccessToken,
		TokenType:   r.TokenType,
		Scopes:      r.Scopes,
		IssuedAt:    r.IssuedAt,
		ExpiresAt:   r.ExpiresAt,
		RefreshAt:   r.RefreshAt,
		KeyID:       keyID,
	}
}

// errFenced: an invalidation happened while the fetch was in flight, so
// its result was not installed.
var errFenced = errors.New("fetch fenced off by an invalidation")
