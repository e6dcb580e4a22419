package broker

import (
	"container/heap"
	"context"
	"errors"
	"github.com/tokenbroker/tokenbroker/internal/backoff"
	"time"

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
