package broker

import (
	"container/heap"
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// entry is the per-key state of a key that is in flight, watched, used
// within its current lifetime, or idle with a token that may still be
// served from the cache. All fields but used, hits and lastUsed are
// guarded by Broker.mu.
type entry struct {
	t target
	// used is set when GetToken serves the key and cleared when a new
	// token is installed: a key is refreshed only if it was used within
	// its current lifetime or has watchers.
	used atomic.Bool
	// hits and lastUsed (Unix nanoseconds) describe the entry to
	// operators.
	hits     atomic.Int64
	lastUsed atomic.Int64

	// current is the latest token's metadata, possibly no longer
	// servable; see holdLocked. Its AccessToken is empty unless the cache
	// is unsealed: the token itself is in sealed.
	current  *tokencache.Record
	sealed   []byte // current's access token, sealed bound to the key
	watchers map[*Watcher]struct{}

	due   time.Time // when the scheduler visits the entry next
	index int       // position in Broker.schedule; -1 when not scheduled

	refreshing  bool      // a fetch is in flight
	failures    int       // consecutive failed fetches
	retryAt     time.Time // when the next retry may start (failures > 0)
	lastErr     error     // the last fetch's failure
	unavailable bool      // watchers were told EventUnavailable since the last token
	stopped     bool      // a non-retryable failure stopped background refreshes

	gen         uint64 // bumped by every invalidation; fences off older fetches
	invalidated bool   // the next token installed is pushed as EventInvalidated
}

// entryLocked returns t's entry, creating it. b.mu must be held.
func (b *Broker) entryLocked(t target) *entry {
	e := b.entries[t.key]
	if e == nil {
		// The entry outlives the request: it must not share its slices.
		t.req.Scopes = slices.Clone(t.req.Scopes)
		e = &entry{t: t, index: -1, watchers: make(map[*Watcher]struct{})}
		b.entries[t.key] = e
	}
	return e
}

// hit counts a call served from the cache and touches its key.
func (b *Broker) hit(t target, rec *tokencache.Record, now time.Time) {
	b.stats.hits.Add(1)
	b.touch(t, rec, now)
}

// touch marks t's key as used at now by a caller that was served rec,
// creating its entry (and so its refresh schedule) when the key has none.
func (b *Broker) touch(t target, rec *tokencache.Record, now time.Time) {
	b.mu.RLock()
	e := b.entries[t.key]
	b.mu.RUnlock()
	if e == nil {
		b.mu.Lock()
		e = b.entryLocked(t)
		if e.current == nil {
			b.holdLocked(e, rec)
			if e.index < 0 && !e.refreshing {
				b.scheduleLocked(e, rec.RefreshAt)
			}
		}
		b.mu.Unlock()
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	e.hits.Add(1)
	e.lastUsed.Store(now.UnixNano())
}

// refreshInBackground makes sure the refresher replaces t's token, which
// is past its refresh point: it reports false when Run is not running or
// background refreshes of the key are stopped, and the caller must fetch
// itself.
func (b *Broker) refreshInBackground(t target, rec *tokencache.Record) bool {
	b.mu.RLock()
	e := b.entries[t.key]
	pending := b.running && e != nil && (e.refreshing || e.failures > 0 && !e.stopped && e.used.Load())
	b.mu.RUnlock()
	if pending {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running {
		return false
	}
	e = b.entryLocked(t)
	if e.stopped {
		return false
	}
	if e.current == nil {
		b.holdLocked(e, rec)
	}
	if time.Now().Before(e.current.RefreshAt) {
		// A refresh installed a new token since the caller looked.
		return true
	}
	switch {
	case !e.refreshing && e.failures == 0:
		e.used.Store(true) // before the scheduler can find the entry idle
		b.scheduleLocked(e, time.Now())
	case !e.refreshing && !e.used.Load():
		// Backing off, and found idle since its last retry: retried
		// again once its backoff ends, now that a caller asks.
		e.used.Store(true)
		if at := maxTime(time.Now(), e.retryAt); e.index < 0 || at.Before(e.due) {
			b.scheduleLocked(e, at)
		}
	}
	return true
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
	if e.current == nil || e.unavailable {
		return
	}
	b.scheduleLocked(e, b.unservableAt(e.current))
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
	defer b.mu.Unlock()
	if b.fencedLocked(t.key, e, gen) {
		return false
	}
	b.installLocked(t, rec, e)
	return true
}

// installLocked is install without the fence check. b.mu must be held.
func (b *Broker) installLocked(t target, rec *tokencache.Record, e *entry) {
	// Filed under the lock, so an invalidation cannot slip in between the
	// fence check and the cache. The record stays servable until
	// min_remaining before expiry; this flight's callers get it whether or
	// not the cache admits it.
	b.cfg.Cache.Set(t.key, rec, time.Until(rec.ExpiresAt)-b.cfg.MinRemaining)
	prev, same := e.current, b.holdsLocked(e, rec)
	if prev != nil && !same {
		b.cfg.Observer.Refreshed(t.provider, max(0, time.Until(prev.ExpiresAt)))
	}
	b.holdLocked(e, rec)
	e.refreshing, e.failures, e.lastErr, e.unavailable, e.stopped = false, 0, nil, false, false
	e.used.Store(false)
	kind := EventRefreshed
	if e.invalidated {
		kind, e.invalidated = EventInvalidated, false
	}
	if !same {
		b.notifyLocked(e, Event{Kind: kind, Token: toToken(rec, t.keyID)})
	}
	b.scheduleLocked(e, rec.RefreshAt)
}

// holdLocked makes rec e's current token. Like the cache, the entry keeps
// the access token sealed (bound to the key) and only its metadata in
// clear, so the tokens of all tracked keys do not sit in memory in clear
// between their uses; openLocked unseals it for the rare reader (a new
// watcher, a caller the cache missed). An unsealed cache (benchmarks
// only) keeps rec as it is. b.mu must be held.
func (b *Broker) holdLocked(e *entry, rec *tokencache.Record) {
	kr := b.cfg.Cache.Keyring()
	if kr == nil || rec == nil {
		e.current, e.sealed = rec, nil
		return
	}
	meta := *rec
	meta.AccessToken = ""
	e.current = &meta
	e.sealed = kr.Seal(nil, []byte(rec.AccessToken), []byte(e.t.key))
}

// openLocked returns e's current token whole, or nil when it has none.
// b.mu must be held (read or write).
func (b *Broker) openLocked(e *entry) *tokencache.Record {
	if e.current == nil || e.sealed == nil {
		return e.current
	}
	plain, err := b.cfg.Cache.Keyring().Open(e.sealed, []byte(e.t.key))
	if err != nil {
		// The keyring does not change while the broker runs, so only a
		// bug gets here; the caller then fetches as if there were none.
		return nil
	}
	rec := *e.current
	rec.AccessToken = secret.String(plain)
	clear(plain)
	return &rec
}

// holdsLocked reports whether rec is the token e holds: the same access
// token with the same timing (it unseals only when the timing matches,
// which a refresh's new token never does). b.mu must be held.
func (b *Broker) holdsLocked(e *entry, rec *tokencache.Record) bool {
	cur := e.current
	if cur == nil || !cur.IssuedAt.Equal(rec.IssuedAt) || !cur.ExpiresAt.Equal(rec.ExpiresAt) {
		return false
	}
	held := b.openLocked(e)
	return held != nil && held.AccessToken == rec.AccessToken
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
		if len(e.watchers) == 0 {
			delete(b.entries, t.key)
		}
		return
	}
	now := time.Now()
	e.failures++
	ceiling := b.cfg.RetryMax
	if e.current == nil || !now.Before(b.unservableAt(e.current)) {
		// Whoever waits for this key has no token: notice recovery soon.
		ceiling = b.starvedMax()
	}
	e.retryAt = now.Add(b.backoff(e.failures, err, ceiling))
	due := e.retryAt
	if e.current == nil || !now.Before(b.unservableAt(e.current)) {
		b.unavailableLocked(e, err)
	} else if !e.unavailable {
		due = minTime(due, b.unservableAt(e.current))
	}
	b.scheduleLocked(e, due)
}

// abandoned records the end of a fetch that Shutdown cancelled: nothing is
// retried, nobody is told.
func (b *Broker) abandoned(t target, fe *entry, gen uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entries[t.key]; e != nil && e == fe && e.gen == gen {
		e.refreshing = false
	}
}

// backoff is the wait before retry number n: full jitter over an
// exponentially growing window capped at ceiling, or the endpoint's
// Retry-After when longer.
func (b *Broker) backoff(n int, err error, ceiling time.Duration) time.Duration {
	window := ceiling
	if n < 32 {
		window = min(window, b.cfg.RetryBase<<(n-1))
	}
	d := time.Duration(b.randN(int64(window) + 1))
	var ra interface{ RetryDelay() time.Duration }
	if errors.As(err, &ra) {
		d = max(d, ra.RetryDelay())
	}
	return d
}

// unservableAt is when rec falls below min_remaining.
func (b *Broker) unservableAt(rec *tokencache.Record) time.Time {
	return rec.ExpiresAt.Add(-b.cfg.MinRemaining)
}

// unavailableLocked tells e's watchers, once per token, that no valid token
// can be held. b.mu must be held.
func (b *Broker) unavailableLocked(e *entry, err error) {
	if e.unavailable {
		return
	}
	e.unavailable = true
	b.notifyLocked(e, Event{Kind: EventUnavailable, Err: err})
}

// notifyLocked puts ev in every watcher's mailbox. b.mu must be held.
func (b *Broker) notifyLocked(e *entry, ev Event) {
	for w := range e.watchers {
		w.deliver(ev)
	}
}

// Run drives background refreshes until ctx ends. Call it once; Close
// the broker after it returns.
func (b *Broker) Run(ctx context.Context) error {
	b.mu.Lock()
	b.running = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.running = false
		b.mu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-b.wake:
		case <-ctx.Done():
			return nil
		}
		now := time.Now()
		b.mu.Lock()
		for len(b.schedule) > 0 && !b.schedule[0].due.After(now) {
			b.dueLocked(heap.Pop(&b.schedule).(*entry), now)
		}
		next := time.Duration(-1)
		if len(b.schedule) > 0 {
			next = b.schedule[0].due.Sub(now)
		}
		b.mu.Unlock()
		if next >= 0 {
			timer.Reset(next)
		} else {
			timer.Stop()
		}
	}
}

// dueLocked handles an entry whose due time has come: it tells watchers
// when the token fell below min_remaining, drops the entry when nobody
// uses it, and starts its refresh or re-schedules its retry. b.mu must be
// held.
func (b *Broker) dueLocked(e *entry, now time.Time) {
	if b.entries[e.t.key] != e {
		return
	}
	if e.current != nil && (e.lastErr != nil || e.refreshing) && !now.Before(b.unservableAt(e.current)) {
		err := e.lastErr
		if err == nil {
			err = &upstream.Error{Kind: upstream.ErrUnavailable, Provider: e.t.provider, Local: true,
				Description: "no answer from the token endpoint yet, and the token held fell below min_remaining"}
		}
		b.unavailableLocked(e, err)
	}
	if e.current != nil && e.failures > 0 && !e.refreshing && !now.Before(b.unservableAt(e.current)) {
		// The token just fell below min_remaining: from now on the key's
		// backoff is that of a key without a token.
		if at := now.Add(b.backoff(e.failures, e.lastErr, b.starvedMax())); at.Before(e.retryAt) {
			e.retryAt = at
		}
	}
	if len(e.watchers) == 0 && !e.used.Load() {
		// Idle: refreshing it would spend quota nobody needs. The entry
		// stays (listed, and open to invalidation) while its token may
		// still be served from the cache.
		switch {
		case e.refreshing:
		case e.current != nil && now.Before(b.unservableAt(e.current)):
			b.scheduleLocked(e, b.unservableAt(e.current))
		default:
			delete(b.entries, e.t.key)
		}
		return
	}
	if e.stopped || e.refreshing {
		return
	}
	if e.failures > 0 && now.Before(e.retryAt) {
		b.scheduleLocked(e, e.retryAt)
		return
	}
	if e.failures > 0 && len(e.watchers) == 0 {
		// A retry for callers: retried again only if one asks meanwhile.
		e.used.Store(false)
	}
	b.stats.refreshes.Add(1)
	b.startFetchLocked(e)
}

// startFetchLocked fetches e's key in the background, joining a flight
// already under way. b.mu must be held.
func (b *Broker) startFetchLocked(e *entry) {
	e.refreshing = true
	b.watchExpiryLocked(e)
	t := e.t
	b.inflight.Add(1)
	go func() {
		defer b.inflight.Done()
		_, _, _ = b.flights.Do(t.key, func() (any, error) { return b.fetchAndInstall(b.life, t, false) })
	}()
}

// scheduleLocked sets e's next visit to at. b.mu must be held.
func (b *Broker) scheduleLocked(e *entry, at time.Time) {
	e.due = at
	if e.index >= 0 {
		heap.Fix(&b.schedule, e.index)
	} else {
		heap.Push(&b.schedule, e)
	}
	if e.index == 0 {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// unscheduleLocked removes e from the schedule. b.mu must be held.
func (b *Broker) unscheduleLocked(e *entry) {
	if e.index >= 0 {
		heap.Remove(&b.schedule, e.index)
	}
}

// schedule is a min-heap of entries by due time (container/heap).
type schedule []*entry

func (s schedule) Len() int           { return len(s) }
func (s schedule) Less(i, j int) bool { return s[i].due.Before(s[j].due) }
func (s schedule) Swap(i, j int) {
	s[i], s[j] = s[j], s[i]
	s[i].index, s[j].index = i, j
}

// Push implements heap.Interface.
func (s *schedule) Push(x any) {
	e := x.(*entry)
	e.index = len(*s)
	*s = append(*s, e)
}

// Pop implements heap.Interface.
func (s *schedule) Pop() any {
	old := *s
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*s = old[:len(old)-1]
	return e
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// installed returns key's installed token, if any, whatever its life.
func (b *Broker) installed(key string) *tokencache.Record {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if e := b.entries[key]; e != nil {
		return b.openLocked(e)
	}
	return nil
}

// current returns key's installed token if it is before its refresh point
// and has at least need of life left.
func (b *Broker) current(key string, need time.Duration) *tokencache.Record {
	rec := b.installed(key)
	if now := time.Now(); rec != nil && now.Before(rec.RefreshAt) && rec.ExpiresAt.Sub(now) >= need {
		return rec
	}
	return nil
}
