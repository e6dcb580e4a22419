package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

func pass(id, sec string, scopes ...string) Request {
	return Request{Selector: Selector{Credentials: &Credentials{Provider: "p", ClientID: id, ClientSecret: secret.String(sec)}, Scopes: scopes}}
}

// TestInvalidateSelectors: each selector drops exactly the entries it names,
// and the next call fetches a new token for them.
func TestInvalidateSelectors(t *testing.T) {
	reqs := map[string]Request{
		"held-a":   held("a"),
		"held-ab":  held("a", "b"),
		"alice-a":  pass("alice", "s1", "a"),
		"alice-ab": pass("alice", "s1", "a", "b"),
		"bob-a":    pass("bob", "s2", "a"),
	}
	for _, tc := range []struct {
		name string
		sel  func(keyIDs map[string]string) InvalidateSelector
		want []string
	}{
		{"key id", func(ids map[string]string) InvalidateSelector { return InvalidateSelector{KeyID: ids["alice-ab"]} }, []string{"alice-ab"}},
		{"client id", func(map[string]string) InvalidateSelector {
			return InvalidateSelector{Provider: "p", ClientID: "alice"}
		}, []string{"alice-a", "alice-ab"}},
		{"client id and scopes", func(map[string]string) InvalidateSelector {
			return InvalidateSelector{Provider: "p", ClientID: "alice", Scopes: []string{"b", "a"}, ScopesSet: true}
		}, []string{"alice-ab"}},
		{"broker-held client", func(map[string]string) InvalidateSelector { return InvalidateSelector{Client: "held"} }, []string{"held-a", "held-ab"}},
		{"all", func(map[string]string) InvalidateSelector { return InvalidateSelector{All: true} }, []string{"alice-a", "alice-ab", "bob-a", "held-a", "held-ab"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
				before := map[string]string{}
				ids := map[string]string{}
				for name, req := range reqs {
					tok := mustGet(t, b, req)
					before[name], ids[name] = tok.AccessToken.Reveal(), tok.KeyID
				}
				n, err := b.Invalidate(context.Background(), tc.sel(ids))
				if err != nil {
					t.Fatal(err)
				}
				if n != len(tc.want) {
					t.Errorf("invalidated %d entries, want %d", n, len(tc.want))
				}
				for name, req := range reqs {
					changed := mustGet(t, b, req).AccessToken.Reveal() != before[name]
					if want := strings.Contains(" "+strings.Join(tc.want, " ")+" ", " "+name+" "); changed != want {
						t.Errorf("%s: token replaced = %v, want %v", name, changed, want)
					}
				}
			})
		})
	}
}

func TestInvalidateErrors(t *testing.T) {
	b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
	for _, tc := range []struct {
		name string
		sel  InvalidateSelector
		want error
	}{
		{"none", InvalidateSelector{}, ErrInvalidArgument},
		{"two", InvalidateSelector{KeyID: "x", All: true}, ErrInvalidArgument},
		{"unknown client", InvalidateSelector{Client: "nope"}, ErrUnknownClient},
		{"unknown provider", InvalidateSelector{Provider: "q", ClientID: "id"}, ErrUnknownProvider},
	} {
		if _, err := b.Invalidate(context.Background(), tc.sel); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	// An unknown key id is not an error: nothing matched.
	if n, err := b.Invalidate(context.Background(), InvalidateSelector{KeyID: "0123456789abcdef"}); n != 0 || err != nil {
		t.Errorf("unknown key id: got %d, %v; want 0, nil", n, err)
	}
}

// TestInvalidationFencesInFlightFetch: a fetch that was in flight when the
// key was invalidated may not install its result: neither the callers
// waiting on it nor later ones get that token.
func TestInvalidationFencesInFlightFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var blocked atomic.Bool
		blocked.Store(true)
		inner := lifetimeFetcher(time.Hour)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if n == 1 && blocked.Load() {
				<-release // the pre-invalidation fetch, held in flight
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{})
		got := make(chan string, 1)
		go func() { got <- mustGet(t, b, held()).AccessToken.Reveal() }()
		synctest.Wait() // fetch 1 is in flight
		if n, err := b.Invalidate(context.Background(), InvalidateSelector{Client: "held"}); n != 1 || err != nil {
			t.Fatalf("Invalidate: got %d, %v; want 1, nil", n, err)
		}
		close(release)
		if tok := <-got; tok == "tok-1" {
			t.Error("the caller got the token of the fetch fenced off by the invalidation")
		}
		if tok := mustGet(t, b, held()).AccessToken.Reveal(); tok == "tok-1" {
			t.Error("a later caller got the fenced-off token")
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("got %d upstream calls, want 2", got)
		}
	})
}

// TestInvalidateWatchedKeyPushesNewToken: watchers of an invalidated key get
// the refetched token as EventInvalidated at once.
func TestInvalidateWatchedKeyPushesNewToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := lifetimeFetcher(time.Hour)
		b := newBroker(t, f, Config{})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		if n, _ := b.Invalidate(context.Background(), InvalidateSelector{KeyID: w.Initial().KeyID}); n != 1 {
			t.Fatalf("invalidated %d, want 1", n)
		}
		synctest.Wait()
		ev := next(t, w)
		if ev.Kind != EventInvalidated || ev.Token.AccessToken.Reveal() != "tok-2" {
			t.Errorf("got %v %q, want invalidated tok-2", ev.Kind, ev.Token.AccessToken.Reveal())
		}
		// Later refreshes are plain again.
		time.Sleep(time.Hour)
		synctest.Wait()
		if ev := next(t, w); ev.Kind != EventRefreshed {
			t.Errorf("next refresh: got %v, want refreshed", ev.Kind)
		}
	})
}

func TestListPagination(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
		const n = 25
		for i := range n {
			mustGet(t, b, pass(fmt.Sprintf("client-%d", i), "secret-value-"+fmt.Sprint(i), "s/read"))
		}
		seen := map[string]bool{}
		token, pages := "", 0
		for {
			infos, next, err := b.List(10, token)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for i, in := range infos {
				if seen[in.KeyID] {
					t.Errorf("key %s listed twice", in.KeyID)
				}
				seen[in.KeyID] = true
				if i > 0 && infos[i-1].KeyID >= in.KeyID {
					t.Errorf("page not ordered by key id")
				}
				if in.Provider != "p" || !strings.HasPrefix(in.ClientID, "client-") || in.Hits != 1 ||
					in.ExpiresAt.Sub(in.IssuedAt) != time.Hour || in.LastUsed.IsZero() {
					t.Errorf("entry %+v: want provider p, a client id, 1 hit, a 1h token and a last use", in)
				}
				if s := fmt.Sprintf("%+v", in); strings.Contains(s, "secret-value") || strings.Contains(s, "tok-") {
					t.Errorf("listing shows a secret or a token: %s", s)
				}
			}
			if next == "" {
				break
			}
			token = next
		}
		if len(seen) != n || pages != 3 {
			t.Errorf("listed %d entries in %d pages, want %d in 3", len(seen), pages, n)
		}
		for _, bad := range []struct {
			size  int
			token string
		}{{1001, ""}, {-1, ""}, {10, "!!not-a-token"}} {
			if _, _, err := b.List(bad.size, bad.token); err == nil {
				t.Errorf("List(%d, %q): got no error", bad.size, bad.token)
			}
		}
	})
}

func TestStats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if r.ClientID == "bad" {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidClient, Provider: "p", Status: 401}
			}
			return lifetimeFetcher(time.Hour).fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{})
		runBroker(t, b)
		mustGet(t, b, held())
		mustGet(t, b, held())
		mustGet(t, b, held())
		b.GetToken(context.Background(), pass("bad", "x"))
		w := mustWatch(t, b, held())
		b.Invalidate(context.Background(), InvalidateSelector{KeyID: w.Initial().KeyID})
		synctest.Wait()
		s := b.Stats()
		if s.Hits != 3 || s.Misses != 2 || s.Invalidations != 1 || s.Watchers != 1 || s.Entries != 1 {
			t.Errorf("got hits %d misses %d invalidations %d watchers %d entries %d, want 3 2 1 1 1",
				s.Hits, s.Misses, s.Invalidations, s.Watchers, s.Entries)
		}
		if p := s.Providers["p"]; p.OK != 2 || p.Rejected != 1 {
			t.Errorf("provider p: got %+v, want 2 ok and 1 rejected", p)
		}
		if s.MaxCost != 1<<20 || s.CostUsed <= 0 {
			t.Errorf("cost: got %d of %d, want some of %d", s.CostUsed, s.MaxCost, 1<<20)
		}
	})
}
