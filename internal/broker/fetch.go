package broker

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// This file is the coalesced fetch: one upstream request per key at a
// time (singleflight), shared by every caller and the scheduler, on its
// own deadline; the fleet's lock around it when there is a fleet; fencing
// by the entry's generation, so that a fetch an invalidation overtook
// installs nothing; and the installation of a new token (cache, entry
// metadata, watchers, next refresh) or the recording of a failure.

// errFenced: an invalidation happened while the fetch was in flight, so
// its result was not installed.
var errFenced = errors.New("fetch fenced off by an invalidation")

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
		if forCallers && refusedLocally(t, err) {
			// The pass-through budget refused this caller: nothing was
			// asked of the endpoint, and the key's other callers (other
			// identities with the same credentials) must not be held
			// off for one caller's limit.
			b.abandoned(t, e, gen)
			return nil, err
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
	sent := requestsOf(tok, err)
	b.cfg.Observer.UpstreamDone(Fetch{Provider: t.provider, ClientID: t.req.ClientID, KeyID: t.keyID, Client: t.client, Passthrough: t.req.Passthrough, Requests: sent}, err, time.Since(start))
	b.countUpstream(t.provider, err)
	b.upstreamOutcome(t, err, sent)
	if err != nil {
		return nil, err
	}
	rec := b.record(t.provider, tok)
	if time.Until(rec.ExpiresAt) < b.cfg.MinRemaining {
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

// record turns a fetched token into a cache record with a jittered
// refresh point in [fraction − jitter, fraction] of its lifetime, moved
// by the provider's refresh planner when it smooths refreshes
// (refreshPoint).
func (b *Broker) record(provider string, tok upstream.Token) *tokencache.Record {
	lifetime := tok.ExpiresAt.Sub(tok.IssuedAt)
	frac := b.cfg.RefreshFraction - b.cfg.RefreshJitter*mathrand.Float64()
	nominal := tok.IssuedAt.Add(time.Duration(frac * float64(lifetime)))
	return &tokencache.Record{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		Scopes:      tok.Scopes,
		IssuedAt:    tok.IssuedAt,
		ExpiresAt:   tok.ExpiresAt,
		RefreshAt:   b.refreshPoint(provider, tok.IssuedAt, nominal, tok.ExpiresAt),
	}
}

// beginFetch marks t's key as being fetched, and returns its entry and
// generation so that the fetch's result can be fenced off by an
// invalidation. A fetch for callers is refused while the key or its
// provider is held off; when the provider is held off but its wait is
// over, the fetch is its probe (endProbe ends it). A key or provider that
// has failed is sent a single attempt: the broker's backoff spaces its
// retries, not the upstream client's (attempts 0: the client's default).
func (b *Broker) beginFetch(t target, forCallers bool) (e *entry, gen uint64, attempts int, probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	p := b.providers[t.provider]
	if forCallers {
		if err := b.keyHeldLocked(b.entries[t.key], now); err != nil {
			return nil, 0, 0, false, err
		}
		if err := b.providerHeldLocked(t.provider, now); err != nil {
			return nil, 0, 0, false, err
		}
		if p != nil && p.heldOff() {
			p.probing, probe = true, true
		}
	}
	e = b.entryLocked(t)
	if forCallers {
		e.used.Store(true) // a caller waits: retry it if this fails
	}
	e.refreshing = true
	b.watchExpiryLocked(e)
	if e.failures > 0 || p != nil && p.failures > 0 {
		attempts = 1
	}
	return e, e.gen, attempts, probe, nil
}

// endProbe records the end of a probe of a held-off provider.
func (b *Broker) endProbe(provider string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.providers[provider]; p != nil {
		p.probing = false
	}
}

// watchExpiryLocked makes the scheduler visit e, whose fetch has started,
// when its token falls below min_remaining: that moment is an event for
// its watchers whatever the fetch is doing (hanging, waiting for the
// fleet's lock, backing off inside the upstream client). b.mu must be
// held.
func (b *Broker) watchExpiryLocked(e *entry) {
	if !e.hasToken() || e.unavailable {
		return
	}
	b.scheduleLocked(e, b.unservableAt(e))
}

// fencedLocked reports whether an invalidation happened since the fetch
// that saw entry e at generation gen began. b.mu must be held.
func (b *Broker) fencedLocked(key string, e *entry, gen uint64) bool {
	return b.entries[key] != e || e.gen != gen
}

// install makes rec the key's current token, files it in the cache,
// pushes it to the key's watchers and schedules its refresh - unless the
// fetch was fenced off by an invalidation, in which case it reports false
// and changes nothing.
func (b *Broker) install(t target, rec *tokencache.Record, e *entry, gen uint64) bool {
	b.mu.Lock()
	if b.fencedLocked(t.key, e, gen) {
		b.mu.Unlock()
		return false
	}
	b.installLocked(t, rec, e)
	b.mu.Unlock()
	// Outside the lock: the record is visible to the next caller's Get
	// (unless the cache refused it), without stalling anyone else.
	b.cfg.Cache.Wait()
	return true
}

// installLocked is install without the fence check. b.mu must be held.
func (b *Broker) installLocked(t target, rec *tokencache.Record, e *entry) {
	// Filed under the lock (Set never waits), so an invalidation cannot
	// slip in between the fence check and the cache. The record stays
	// servable until min_remaining before expiry; this flight's callers
	// get it whether or not the cache admits it. A watched key's record
	// is pinned.
	b.cfg.Cache.Set(t.key, rec, time.Until(rec.ExpiresAt)-b.cfg.MinRemaining)
	same := b.holdsLocked(e, rec)
	if e.hasToken() && !same {
		b.cfg.Observer.Refreshed(t.provider, max(0, time.Until(e.tok.expiresAt)))
	}
	b.holdLocked(e, rec)
	e.refreshing, e.failures, e.lastErr, e.unavailable, e.stopped = false, 0, nil, false, false
	e.used.Store(false)
	kind := EventRefreshed
	if e.invalidated {
		kind, e.invalidated = EventInvalidated, false
	}
	if !same {
		b.notifyLocked(e, Event{Kind: kind, Token: toToken(rec, t)})
		// Each token pushed to a watcher is a call served: one the
		// watcher would otherwise have made itself.
		for range e.watchers {
			b.cfg.Observer.Served(Fetch{Provider: t.provider, Client: t.client, Passthrough: t.req.Passthrough}, max(0, time.Until(rec.ExpiresAt)))
		}
	}
	b.scheduleLocked(e, rec.RefreshAt)
}

// failed records a failed fetch of t's key. A retryable failure is retried
// with exponential backoff and full jitter (or after the endpoint's
// Retry-After, when longer); watchers are told EventUnavailable once the
// current token may no longer be served. A non-retryable failure tells the
// watchers at once and stops background refreshes until a caller asks
// again.
//
// e and gen are the entry and generation the fetch began with (nil for
// none known); a fetch fenced off by an invalidation records nothing.
func (b *Broker) failed(t target, fe *entry, gen uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[t.key]
	if e == nil || fe != nil && b.fencedLocked(t.key, fe, gen) {
		return
	}
	e.refreshing, e.lastErr = false, err
	if !retryable(err) {
		e.stopped = true
		b.unscheduleLocked(e)
		b.unavailableLocked(e, err)
		b.settleLocked(e, time.Now())
		return
	}
	now := time.Now()
	e.failures++
	ceiling := b.cfg.RetryMax
	starved := !e.hasToken() || !now.Before(b.unservableAt(e))
	if starved {
		// Whoever waits for this key has no token: notice recovery soon.
		ceiling = b.starvedMax()
	}
	e.retryAt = now.Add(b.backoff(e.failures, err, ceiling))
	due := e.retryAt
	if starved {
		b.unavailableLocked(e, err)
	} else if !e.unavailable {
		due = minTime(due, b.unservableAt(e))
	}
	b.scheduleLocked(e, due)
}

// abandoned records the end of a fetch that failed for no fault of the
// key (Shutdown cancelled it, or a caller's own pass-through limit refused
// it): nothing is retried, nobody is told, no failure is counted, and the
// entry ends if nothing else keeps it.
func (b *Broker) abandoned(t target, fe *entry, gen uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entries[t.key]; e != nil && e == fe && e.gen == gen {
		e.refreshing = false
		b.settleLocked(e, time.Now())
	}
}

// refusedLocally reports whether err is the upstream client refusing a
// pass-through request for its budget shares without contacting the
// endpoint.
func refusedLocally(t target, err error) bool {
	var ue *upstream.Error
	return t.req.Passthrough && errors.As(err, &ue) && ue.Local && errors.Is(err, upstream.ErrThrottled)
}

// current returns key's cached token if it is before its refresh point
// and has at least need of life left.
func (b *Broker) current(key string, need time.Duration) *tokencache.Record {
	rec, _ := b.cfg.Cache.Get(key)
	if now := time.Now(); rec != nil && now.Before(rec.RefreshAt) && rec.ExpiresAt.Sub(now) >= need {
		return rec
	}
	return nil
}

// Adopt installs a token another replica fetched for key
// (shared.Receiver), when this replica tracks the key, is not fetching it
// itself, and holds an older token. Watchers receive it as a refresh.
func (b *Broker) Adopt(key string, rec *tokencache.Record) {
	b.mu.Lock()
	e := b.entries[key]
	if e == nil || e.refreshing || e.hasToken() && !rec.IssuedAt.After(e.tok.issuedAt) {
		b.mu.Unlock()
		return
	}
	b.installLocked(e.t, rec, e)
	b.mu.Unlock()
	b.cfg.Cache.Wait()
}
