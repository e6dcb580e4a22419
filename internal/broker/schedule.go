package broker

import (
	"container/heap"
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/backoff"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// This file is the refresh scheduler: one timer heap of entries by due
// time, driven by Run (no goroutine per key). A visit (dueLocked) tells
// watchers when a token fell below min_remaining, ends idle entries, and
// starts a refresh or a retry when its time has come; retries are spaced
// by backoff. Broker.mu guards the heap and every entry's due and index.

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
	unservable := e.hasToken() && !now.Before(b.unservableAt(e))
	if unservable && (e.lastErr != nil || e.refreshing) {
		err := e.lastErr
		if err == nil {
			err = &upstream.Error{Kind: upstream.ErrUnavailable, Provider: e.t.provider, Local: true,
				Description: "no answer from the token endpoint yet, and the token held fell below min_remaining"}
		}
		b.unavailableLocked(e, err)
	}
	if unservable && e.failures > 0 && !e.refreshing {
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
		b.settleLocked(e, now)
		return
	}
	if e.stopped || e.refreshing {
		return
	}
	if len(e.watchers) == 0 && e.failures == 0 && !b.cfg.Cache.Has(e.t.key) {
		// Used, but the cache let its token go: the next caller fetches
		// one; a refresh now would fill the cache for nobody.
		b.dropLocked(e)
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
// already under way. A joined flight stands for this refresh only if it
// settles e (installs a token or records a failure) after the refresh
// began: one may instead end without touching e - it installed its token
// just before (a token whose refresh point had already passed when it
// arrived is refreshed at once, while its flight is still finishing), it
// found a token current, or it was refused. e would then stay
// "refreshing" for good, never refreshed again, so a new flight is
// started instead. b.mu must be held.
func (b *Broker) startFetchLocked(e *entry) {
	e.refreshing = true
	b.watchExpiryLocked(e)
	t, gen := e.t, e.gen
	b.inflight.Add(1)
	go func() {
		defer b.inflight.Done()
		for {
			led := false
			_, _, _ = b.flights.Do(t.key, func() (any, error) {
				led = true
				if !b.refreshPending(e, gen) {
					// Settled by a flight that ended just before this
					// one began: its callers fetch again.
					return nil, errFenced
				}
				return b.fetchAndInstall(b.life, t, false)
			})
			if led || !b.refreshPending(e, gen) {
				return
			}
		}
	}()
}

// refreshPending reports whether the refresh startFetchLocked began for e
// at generation gen is still to be made: nothing settled e since, no
// invalidation took the refresh over, and the broker is not closing.
func (b *Broker) refreshPending(e *entry, gen uint64) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.life.Err() == nil && b.entries[e.t.key] == e && e.gen == gen && e.refreshing
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

func (s schedule) Len() int { return len(s) }

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

// backoff is the wait before retry number n: full jitter over an
// exponentially growing window (RetryBase doubling) capped at ceiling, or
// the endpoint's Retry-After when longer (internal/backoff).
func (b *Broker) backoff(n int, err error, ceiling time.Duration) time.Duration {
	var retryAfter time.Duration
	var ra interface{ RetryDelay() time.Duration }
	if errors.As(err, &ra) {
		retryAfter = ra.RetryDelay()
	}
	return backoff.Policy{Base: b.cfg.RetryBase, Max: ceiling, Rand: b.randN}.Delay(n-1, retryAfter)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// refreshPlanner spreads the refresh points of one provider's tokens so
// that this replica plans at most rate refreshes per second: time is cut
// into slots (a second, or 1/rate when rate < 1) of cap refreshes each,
// and a token's refresh point goes to the nearest slot with room at or
// before its nominal point (earlier is allowed), else the nearest after
// it within its window, never past its latest point. With every replica
// planning for its share of the fleet's budget (fleet_local_share), keys
// created together (a deploy, a cold start, a Redis flush) are refreshed
// at the budget's pace instead of in a burst.
type refreshPlanner struct {
	width time.Duration
	cap   int

	mu    sync.Mutex
	slots map[int64]int // refreshes planned per slot number
	floor int64         // slots below it have been pruned
}

// newRefreshPlanner returns a planner for rate refreshes per second, nil
// when rate is not positive (no smoothing).
func newRefreshPlanner(rate float64) *refreshPlanner {
	if !(rate > 0) {
		return nil
	}
	width := time.Second
	if rate < 1 {
		width = time.Duration(math.Ceil(float64(time.Second) / rate))
	}
	return &refreshPlanner{width: width, cap: max(1, int(rate*width.Seconds())), slots: make(map[int64]int)}
}

// plan returns the refresh point for a token whose nominal refresh point
// is nominal, allowed anywhere in [earliest, latest], and books it.
func (p *refreshPlanner) plan(now, earliest, nominal, latest time.Time) time.Time {
	if p == nil || !earliest.Before(latest) {
		return nominal
	}
	slot := func(t time.Time) int64 { return t.UnixNano() / int64(p.width) }
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur := slot(now); cur > p.floor {
		if len(p.slots) > 4096 {
			for s := range p.slots {
				if s < cur {
					delete(p.slots, s)
				}
			}
		}
		p.floor = cur
	}
	lo, n, hi := max(slot(earliest), p.floor), slot(nominal), slot(latest)
	book := func(s int64) (time.Time, bool) {
		c := p.slots[s]
		if c >= p.cap {
			return time.Time{}, false
		}
		p.slots[s] = c + 1
		if s == n && c == 0 {
			return nominal, true
		}
		// Spread within the slot, clamped to the window.
		at := time.Unix(0, s*int64(p.width)+int64(c)*int64(p.width)/int64(p.cap))
		if at.Before(earliest) {
			at = earliest
		}
		if at.After(latest) {
			at = latest
		}
		return at, true
	}
	for s := n; s >= lo; s-- {
		if at, ok := book(s); ok {
			return at
		}
	}
	for s := n + 1; s <= hi; s++ {
		if at, ok := book(s); ok {
			return at
		}
	}
	// Every slot of the window is full: the budget cannot be kept for this
	// token without letting it fall below min_remaining, which comes first.
	p.slots[n]++
	return nominal
}

// refreshPoint is where a token issued at issued, expiring at expires,
// with nominal refresh point nominal, is refreshed: nominal without a
// planner, else planned within [issued + half the nominal lead, nominal +
// half of what is left until min_remaining], keeping the other half for
// retries.
func (b *Broker) refreshPoint(provider string, issued, nominal, expires time.Time) time.Time {
	return b.refreshPointAt(time.Now(), provider, issued, nominal, expires)
}

// refreshPointAt is refreshPoint planned at now.
func (b *Broker) refreshPointAt(now time.Time, provider string, issued, nominal, expires time.Time) time.Time {
	p := b.planners[provider]
	if p == nil {
		return nominal
	}
	unservable := expires.Add(-b.cfg.MinRemaining)
	earliest := issued.Add(nominal.Sub(issued) / 2)
	if earliest.Before(now) {
		earliest = now
	}
	latest := nominal.Add(unservable.Sub(nominal) / 2)
	return p.plan(now, earliest, nominal, latest)
}
