package broker

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// entryState returns a dump of the entry of req's key, under the lock.
func entryState(t *testing.T, b *Broker, req Request) string {
	t.Helper()
	tg, err := b.resolve(req.Selector)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	e := b.entries[tg.key]
	if e == nil || !e.hasToken() {
		t.Fatal("the key has no entry with a token")
	}
	return fmt.Sprintf("%#v %#v", e.tok, e.t)
}

// TestOneHomePerToken: a tracked key's entry holds its token's metadata
// only; the token lives once, sealed, in the cache, pinned while the key
// is watched, through fetch and refresh. A new watcher and a caller get
// it from there, even when the cache is filled with other keys' tokens.
func TestOneHomePerToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cache := newCache(t, 64<<10)
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{Cache: cache})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		first := w.Initial()
		check := func(token string) {
			t.Helper()
			if dump := entryState(t, b, held()); strings.Contains(dump, token) {
				t.Errorf("the entry holds the token: %s", dump)
			}
			if cache.Pinned() == 0 {
				t.Error("the watched key's token is not pinned")
			}
		}
		check("tok-1")

		time.Sleep(time.Until(first.RefreshAt))
		synctest.Wait()
		if ev := next(t, w); ev.Token.AccessToken.Reveal() != "tok-2" {
			t.Fatalf("refresh: got %q, want tok-2", ev.Token.AccessToken.Reveal())
		}
		check("tok-2")

		if got := mustWatch(t, b, held()).Initial().AccessToken.Reveal(); got != "tok-2" {
			t.Errorf("a new watcher's first token: got %q, want tok-2", got)
		}
		// Fill the cache many times over with other keys' tokens.
		for i := range 1000 {
			mustGet(t, b, held(fmt.Sprint("s", i)))
		}
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-2" {
			t.Errorf("a caller after the cache filled up: got %q, want tok-2", got)
		}
		if used, limit := cache.Used(), cache.MaxCost(); used > limit {
			t.Errorf("the cache uses %d bytes, more than max_cost %d", used, limit)
		}
	})
}

// TestSameTokenInstalledAgainIsNotPushed: installing the token the entry
// already holds (as when a replica adopts a shared token and then obtains
// the same one) neither pushes it again nor counts a refresh; a different
// token still is pushed.
func TestSameTokenInstalledAgainIsNotPushed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		obs := &recorder{}
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{Observer: obs})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		tg, err := b.resolve(held().Selector)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := b.cfg.Cache.Get(tg.key) // the same token, in a new record
		b.mu.Lock()
		e := b.entries[tg.key]
		b.installLocked(tg, again, e)
		b.mu.Unlock()
		noEvent(t, w)

		other := *again
		other.AccessToken = "tok-other"
		b.mu.Lock()
		b.installLocked(tg, &other, e)
		b.mu.Unlock()
		if ev := next(t, w); ev.Token.AccessToken.Reveal() != "tok-other" {
			t.Errorf("a different token: got %q, want tok-other pushed", ev.Token.AccessToken.Reveal())
		}
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if len(obs.leads) != 1 {
			t.Errorf("got %d refreshes observed, want 1 (the different token only)", len(obs.leads))
		}
	})
}
