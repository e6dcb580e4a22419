package broker

import (
	"hash/maphash"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// This file is the entry registry (Broker.entries) and its life cycle. An
// entry lives while it is watched, in flight, due for a refresh or retry
// it will do (used, not stopped), or holds the metadata of a token still
// cached; settleLocked ends it as soon as none of these holds. The
// registry never holds a token's bytes: the cache does.

// entry is the per-key metadata of a tracked key. All fields but used,
// hits and lastUsed are guarded by Broker.mu.
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

	tok      timing                // the latest token's timing (zero: none yet), possibly no longer servable
	fp       uint64                // fingerprint of the latest token, to recognise it installed again
	watchers map[*Watcher]struct{} // nil until the first watcher

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

// entryCost is what the broker keeps per cached key besides the token: the
// entry, its slot in Broker.entries, and the key, key id and scope slice
// it holds. The cache charges it to every token (Cache.ChargeKeys), so
// that cache.max_cost bounds the entries of cached keys as well as their
// tokens; BenchmarkMemoryPerToken reports the real figure (B/entry).
const entryCost = int64(unsafe.Sizeof(entry{})) + 128

// timing is a token's metadata: when it was issued, is to be refreshed,
// and expires.
type timing struct {
	issuedAt, refreshAt, expiresAt time.Time
}

// hasToken reports whether e knows of a token (servable or not).
func (e *entry) hasToken() bool { return !e.tok.expiresAt.IsZero() }

// entryLocked returns t's entry, creating it. b.mu must be held.
func (b *Broker) entryLocked(t target) *entry {
	e := b.entries[t.key]
	if e == nil {
		// The entry outlives the request: it must not share its slices.
		t.req.Scopes = slices.Clone(t.req.Scopes)
		e = &entry{t: t, index: -1}
		b.entries[t.key] = e
	}
	return e
}

// holdLocked makes rec e's latest token: its timing and fingerprint, not
// its bytes. b.mu must be held.
func (b *Broker) holdLocked(e *entry, rec *tokencache.Record) {
	e.tok = timing{issuedAt: rec.IssuedAt, refreshAt: rec.RefreshAt, expiresAt: rec.ExpiresAt}
	e.fp = maphash.String(b.seed, rec.AccessToken.Reveal())
}

// holdsLocked reports whether rec is the token e holds: the same timing
// and the same fingerprint. b.mu must be held.
func (b *Broker) holdsLocked(e *entry, rec *tokencache.Record) bool {
	return e.hasToken() && e.tok.issuedAt.Equal(rec.IssuedAt) && e.tok.expiresAt.Equal(rec.ExpiresAt) &&
		e.fp == maphash.String(b.seed, rec.AccessToken.Reveal())
}

// unservableAt is when e's token falls below min_remaining.
func (b *Broker) unservableAt(e *entry) time.Time {
	return e.tok.expiresAt.Add(-b.cfg.MinRemaining)
}

// settleLocked ends e unless something keeps it: watchers, a fetch in
// flight, a refresh or retry it will do for a caller (used, not stopped,
// and backing off or with its token cached), or a servable token still
// cached, in which case the scheduler visits it again when the token
// falls below min_remaining. b.mu must be held.
func (b *Broker) settleLocked(e *entry, now time.Time) {
	if b.entries[e.t.key] != e || len(e.watchers) > 0 || e.refreshing {
		return
	}
	cached := e.hasToken() && now.Before(b.unservableAt(e)) && b.cfg.Cache.Has(e.t.key)
	if e.used.Load() && !e.stopped && (e.failures > 0 || cached) {
		if e.index < 0 {
			b.scheduleLocked(e, now) // let the scheduler decide when
		}
		return
	}
	if cached {
		if at := b.unservableAt(e); e.index < 0 || at.Before(e.due) {
			b.scheduleLocked(e, at)
		}
		return
	}
	b.dropLocked(e)
}

// dropLocked removes e from the registry and the schedule. b.mu must be
// held.
func (b *Broker) dropLocked(e *entry) {
	b.unscheduleLocked(e)
	delete(b.entries, e.t.key)
}

// gone is the cache's OnGone: ristretto evicted, refused or expired key's
// token, so its entry may end.
func (b *Broker) gone(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entries[key]; e != nil {
		b.settleLocked(e, time.Now())
	}
}
