package broker

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
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entryLocked(t)
	if e.current == nil || e.current.IssuedAt.Before(rec.IssuedAt) {
		// The entry was dropped or lost track of the token just served.
		b.holdLocked(e, rec)
	} else if cur := b.openLocked(e); cur != nil {
		// The entry holds a newer token (or this one): start from it.
		rec = cur
	}
	if e.index < 0 && !e.refreshing && !e.stopped {
		b.scheduleLocked(e, rec.RefreshAt)
	}
	b.cfg.Observer.Served(max(0, time.Until(rec.ExpiresAt)))
	w := &Watcher{b: b, e: e, initial: toToken(rec, t.keyID), ch: make(chan Event, 1)}
	e.watchers[w] = struct{}{}
	return w, nil
}

// Initial returns the token that was current when the watch began.
func (w *Watcher) Initial() Token { return w.initial }

// Events returns the watcher's mailbox. It is never closed.
func (w *Watcher) Events() <-chan Event { return w.ch }

// Close ends the subscription. It is safe to call more than once.
func (w *Watcher) Close() {
	w.once.Do(func() {
		w.b.mu.Lock()
		delete(w.e.watchers, w)
		w.b.mu.Unlock()
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
