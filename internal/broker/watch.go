package broker

// This file is the watch fan-out: a Watcher per subscriber, each with a
// one-slot latest-wins mailbox filled under Broker.mu without ever
// blocking, and the events the rest of the broker sends through
// notifyLocked. A watched key's token is pinned in the cache for as long
// as it has watchers.

import (
	"context"
	"sync"
	"time"
)

// Watcher is a subscription to a key's tokens. Its mailbox holds one
// event: a new event replaces one the subscriber has not read yet, so a
// slow reader never delays the others, never blocks the broker and never
// holds more than one pending token.
type Watcher struct {
	b       *Broker
	e       *entry
	initial Token
	ch      chan Event
	once    sync.Once
}

// Watch subscribes to the token req selects. The current token (cached,
// or fetched and shared with any concurrent GetToken of the key) is
// returned at once by Initial; every later replacement arrives on Events.
// req.MinTTL applies to the initial token only. Close the watcher when
// done.
func (b *Broker) Watch(ctx context.Context, req Request) (*Watcher, error) {
	t, err := b.resolve(req.Selector)
	if err != nil {
		return nil, err
	}
	t.req.Caller = req.Caller // for the pass-through limits; not in the key
	rec, err := b.get(ctx, t, max(b.cfg.MinRemaining, req.MinTTL))
	if err != nil {
		return nil, &keyedError{keyID: t.keyID, err: err}
	}
	// Pinned before the watcher is registered, so that no token
	// installed for it later can be evicted; Close unpins.
	b.cfg.Cache.Pin(t.key)
	for looked := false; ; looked = true {
		b.mu.Lock()
		e := b.entryLocked(t)
		switch {
		case !e.hasToken() || e.tok.issuedAt.Before(rec.IssuedAt):
			// The entry was dropped or lost track of the token just served.
			b.holdLocked(e, rec)
		case !looked && !b.holdsLocked(e, rec):
			// The entry knows a newer token: start from it. The cache is
			// read outside the lock.
			b.mu.Unlock()
			if cur, ok := b.cfg.Cache.Get(t.key); ok && cur.IssuedAt.After(rec.IssuedAt) {
				rec = cur
			}
			continue
		}
		if e.index < 0 && !e.refreshing && !e.stopped {
			b.scheduleLocked(e, rec.RefreshAt)
		}
		w := &Watcher{b: b, e: e, initial: toToken(rec, t), ch: make(chan Event, 1)}
		if e.watchers == nil {
			e.watchers = make(map[*Watcher]struct{})
		}
		e.watchers[w] = struct{}{}
		b.mu.Unlock()
		b.cfg.Observer.Served(Fetch{Provider: t.provider, Client: t.client, Passthrough: t.req.Passthrough}, max(0, time.Until(rec.ExpiresAt)))
		return w, nil
	}
}

// Initial returns the token that was current when the watch began.
func (w *Watcher) Initial() Token { return w.initial }

// Events returns the watcher's mailbox. It is never closed.
func (w *Watcher) Events() <-chan Event { return w.ch }

// Close ends the subscription. It is safe to call more than once.
func (w *Watcher) Close() {
	w.once.Do(func() {
		b := w.b
		b.mu.Lock()
		delete(w.e.watchers, w)
		if len(w.e.watchers) == 0 {
			w.e.watchers = nil
			b.settleLocked(w.e, time.Now())
		}
		b.mu.Unlock()
		b.cfg.Cache.Unpin(w.e.t.key)
	})
}

// deliver puts ev in the mailbox, replacing an unread event. Only the
// broker sends, always holding Broker.mu, so the loop ends after at most
// one replacement.
func (w *Watcher) deliver(ev Event) {
	for {
		select {
		case w.ch <- ev:
			return
		default:
		}
		select {
		case <-w.ch:
		default:
		}
	}
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
