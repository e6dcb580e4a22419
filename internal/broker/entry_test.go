package broker

import (
	"bytes"
	"testing"
	"testing/synctest"
	"time"
)

// entryState returns what the entry of req's key holds, under the lock.
func entryState(t *testing.T, b *Broker, req Request) (clearToken string, sealed []byte) {
	t.Helper()
	tg, err := b.resolve(req.Selector)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	e := b.entries[tg.key]
	if e == nil || e.current == nil {
		t.Fatal("the key has no entry with a token")
	}
	return e.current.AccessToken.Reveal(), bytes.Clone(e.sealed)
}

// TestEntryKeepsTokenSealed: a tracked key's entry holds its token sealed,
// like the cache, through fetch and refresh; a new watcher and a caller
// whose cache lookup missed still get the token in clear.
func TestEntryKeepsTokenSealed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		first := w.Initial()
		check := func(token string) {
			t.Helper()
			clearToken, sealed := entryState(t, b, held())
			if clearToken != "" {
				t.Errorf("the entry holds the token in clear: %q", clearToken)
			}
			if len(sealed) == 0 || bytes.Contains(sealed, []byte(token)) {
				t.Errorf("the entry's sealed token is %d bytes, containing %q: %v", len(sealed), token, bytes.Contains(sealed, []byte(token)))
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
		tg, _ := b.resolve(held().Selector)
		b.cfg.Cache.Del(tg.key)
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-2" {
			t.Errorf("a caller the cache missed: got %q, want tok-2", got)
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
		again := b.installed(tg.key) // the same token, in a new record
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
