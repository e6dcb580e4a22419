package broker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// runBroker runs b's scheduler until the test ends.
func runBroker(t *testing.T, b *Broker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if err := b.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func mustWatch(t *testing.T, b *Broker, req Request) *Watcher {
	t.Helper()
	w, err := b.Watch(context.Background(), req)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	t.Cleanup(w.Close)
	return w
}

// next returns the watcher's pending event, failing when there is none.
func next(t *testing.T, w *Watcher) Event {
	t.Helper()
	select {
	case ev := <-w.Events():
		return ev
	default:
		t.Fatal("no event pending")
		return Event{}
	}
}

func noEvent(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case ev := <-w.Events():
		t.Fatalf("got event %v, want none", ev.Kind)
	default:
	}
}

// TestWatcherGetsNewTokenAtRefreshPoint: with the default refresh settings
// (0.75, jitter 0.05) each new token reaches the watcher at the old one's
// refresh point, while the old one still has at least a quarter of its
// life left.
func TestWatcherGetsNewTokenAtRefreshPoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = time.Hour
		f := lifetimeFetcher(life)
		b := newBroker(t, f, Config{RefreshJitter: 0.05})
		runBroker(t, b)
		w := mustWatch(t, b, held("a"))
		held := w.Initial()
		if got := held.AccessToken.Reveal(); got != "tok-1" {
			t.Fatalf("initial: got %q, want tok-1", got)
		}
		for i := 2; i <= 5; i++ {
			ev := <-w.Events()
			now := time.Now()
			if ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() != fmt.Sprintf("tok-%d", i) {
				t.Fatalf("event %d: got %v %q, want refreshed tok-%d", i, ev.Kind, ev.Token.AccessToken.Reveal(), i)
			}
			if !now.Equal(held.RefreshAt) {
				t.Errorf("event %d arrived at %v, want the refresh point %v", i, now, held.RefreshAt)
			}
			if left := held.ExpiresAt.Sub(now); left < life/4 || left > life*30/100 {
				t.Errorf("event %d: old token had %v left, want between 25%% and 30%% of %v", i, left, life)
			}
			if ev.Token.KeyID != held.KeyID || !ev.Token.IssuedAt.Equal(now) {
				t.Errorf("event %d: got key %s issued %v, want key %s issued now", i, ev.Token.KeyID, ev.Token.IssuedAt, held.KeyID)
			}
			held = ev.Token
		}
		if got := f.calls.Load(); got != 5 {
			t.Errorf("got %d upstream calls, want 5", got)
		}
	})
}

// TestJitterSpreadsRefreshes: 1,000 keys fetched in the same second are
// refreshed over the jitter window, not in one burst.
func TestJitterSpreadsRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life, keys = time.Hour, 1000
		start := time.Now()
		var mu sync.Mutex
		perSecond := map[int]int{}
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if since := time.Since(start); since > 0 {
				mu.Lock()
				perSecond[int(since/time.Second)]++
				mu.Unlock()
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{RefreshJitter: 0.05, Cache: newCache(t, 64<<20)})
		runBroker(t, b)
		for i := range keys {
			mustWatch(t, b, held(fmt.Sprintf("s%d", i)))
		}
		time.Sleep(life * 76 / 100)
		synctest.Wait()
		total, busiest := 0, 0
		for sec, n := range perSecond {
			total += n
			busiest = max(busiest, n)
			if at := time.Duration(sec) * time.Second; at < life*70/100-time.Second || at > life*75/100 {
				t.Errorf("%d refreshes at %v, outside the jitter window [70%%, 75%%] of %v", n, at, life)
			}
		}
		if total != keys {
			t.Errorf("got %d refreshes, want %d", total, keys)
		}
		if busiest*3 >= keys*2 {
			t.Errorf("%d of %d refreshes fell in one second", busiest, keys)
		}
		// Uniform over 180 s, the busiest second holds a handful.
		if len(perSecond) < 100 {
			t.Errorf("refreshes fell in only %d distinct seconds, want at least 100", len(perSecond))
		}
	})
}

// TestTenThousandWatchersOneRequestPerRefresh: every watcher of a key gets
// every new token, and each refresh is one upstream request.
func TestTenThousandWatchersOneRequestPerRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life, n, refreshes = 10 * time.Minute, 10_000, 3
		f := lifetimeFetcher(life)
		b := newBroker(t, f, Config{})
		runBroker(t, b)
		ws := make([]*Watcher, n)
		for i := range ws {
			ws[i] = mustWatch(t, b, held())
		}
		if got := f.calls.Load(); got != 1 {
			t.Fatalf("after %d watches: got %d upstream calls, want 1", n, got)
		}
		for r := 2; r <= refreshes+1; r++ {
			time.Sleep(life * 3 / 4)
			synctest.Wait()
			want := fmt.Sprintf("tok-%d", r)
			for i, w := range ws {
				if ev := next(t, w); ev.Token.AccessToken.Reveal() != want {
					t.Fatalf("watcher %d: got %q, want %s", i, ev.Token.AccessToken.Reveal(), want)
				}
			}
			if got := f.calls.Load(); got != int64(r) {
				t.Errorf("after refresh %d: got %d upstream calls, want %d", r-1, got, r)
			}
		}
	})
}

// TestSlowWatcherDoesNotDelayOthers: a watcher that never reads holds only
// the latest token, and the others receive every token meanwhile.
func TestSlowWatcherDoesNotDelayOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		b := newBroker(t, lifetimeFetcher(life), Config{})
		runBroker(t, b)
		slow := mustWatch(t, b, held())
		fast := mustWatch(t, b, held())
		for r := 2; r <= 4; r++ {
			time.Sleep(life * 3 / 4)
			synctest.Wait()
			if got := next(t, fast).Token.AccessToken.Reveal(); got != fmt.Sprintf("tok-%d", r) {
				t.Fatalf("fast watcher: got %q, want tok-%d", got, r)
			}
		}
		// The slow watcher's mailbox holds one event: the latest.
		if got := next(t, slow).Token.AccessToken.Reveal(); got != "tok-4" {
			t.Errorf("slow watcher: got %q, want tok-4", got)
		}
		noEvent(t, slow)
	})
}

// TestOutageDuringRefresh: the old token stays in service while it has
// min_remaining, then watchers get EventUnavailable; retries back off
// exponentially; the first success is pushed as EventRefreshed; no expired
// token is ever served.
func TestOutageDuringRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		start := time.Now()
		var down atomic.Bool
		var mu sync.Mutex
		var attempts []time.Duration
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if down.Load() {
				mu.Lock()
				attempts = append(attempts, time.Since(start))
				mu.Unlock()
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrUnavailable, Provider: "p", Status: 503}
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{RetryBase: time.Second, RetryMax: time.Minute})
		b.randN = func(n int64) int64 { return n - 1 } // the longest wait of each window
		runBroker(t, b)
		w := mustWatch(t, b, held())
		down.Store(true)

		// Until 9m30s (expiry − min_remaining) the old token serves, and
		// GetToken does not add upstream requests of its own.
		for at := 8 * time.Minute; at < 9*time.Minute+30*time.Second; at += 10 * time.Second {
			time.Sleep(time.Until(start.Add(at)))
			if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-1" {
				t.Fatalf("at %v: got %q, want tok-1", at, got)
			}
		}
		noEvent(t, w)
		time.Sleep(time.Until(start.Add(9*time.Minute + 30*time.Second)))
		synctest.Wait()
		ev := next(t, w)
		if ev.Kind != EventUnavailable || !errors.Is(ev.Err, upstream.ErrUnavailable) || ev.Token.AccessToken != "" {
			t.Fatalf("at expiry − min_remaining: got %v %v token %q, want unavailable with the upstream error and no token", ev.Kind, ev.Err, ev.Token.AccessToken.Reveal())
		}
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-1" {
			t.Errorf("GetToken with exactly min_remaining left: got %q, want tok-1", got)
		}
		time.Sleep(time.Nanosecond)
		if _, err := b.GetToken(context.Background(), held()); !errors.Is(err, upstream.ErrUnavailable) {
			t.Errorf("GetToken below min_remaining: got %v, want ErrUnavailable", err)
		}

		// Backoff: refresh at 7m30s, then retries after 1, 2, 4, 8, 16,
		// 32 and 60 seconds (the longest wait of each window). The
		// GetToken below min_remaining made no attempt of its own: the
		// key was backing off. Once the token fell below min_remaining
		// the backoff is capped at 5 s, so recovery is noticed soon.
		time.Sleep(time.Until(start.Add(12 * time.Minute)))
		mu.Lock()
		got := append([]time.Duration(nil), attempts...)
		mu.Unlock()
		want := []time.Duration{450 * time.Second}
		for _, gap := range []time.Duration{1, 2, 4, 8, 16, 32, 60} {
			want = append(want, want[len(want)-1]+gap*time.Second)
		}
		for want[len(want)-1]+5*time.Second < 12*time.Minute {
			want = append(want, want[len(want)-1]+5*time.Second)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("refresh attempts at %v, want %v", got, want)
		}

		down.Store(false)
		time.Sleep(time.Minute)
		synctest.Wait()
		ev = next(t, w)
		if ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() == "tok-1" {
			t.Fatalf("after recovery: got %v %q, want refreshed with a new token", ev.Kind, ev.Token.AccessToken.Reveal())
		}
		if left := time.Until(ev.Token.ExpiresAt); left < life-time.Minute {
			t.Errorf("recovered token has %v left, want a fresh one", left)
		}
	})
}

// TestRetryAfterHonoured: a throttled refresh waits at least Retry-After.
func TestRetryAfterHonoured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		start := time.Now()
		var throttled atomic.Bool
		var mu sync.Mutex
		var attempts []time.Duration
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if throttled.Load() {
				mu.Lock()
				attempts = append(attempts, time.Since(start))
				mu.Unlock()
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrThrottled, Provider: "p", Status: 429, RetryAfter: 40 * time.Second}
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{})
		runBroker(t, b)
		mustWatch(t, b, held())
		throttled.Store(true)
		time.Sleep(10 * time.Minute)
		mu.Lock()
		defer mu.Unlock()
		if len(attempts) < 2 {
			t.Fatalf("got attempts at %v, want at least 2", attempts)
		}
		for i := 1; i < len(attempts); i++ {
			if gap := attempts[i] - attempts[i-1]; gap < 40*time.Second {
				t.Errorf("attempt %d came %v after the previous, want at least the Retry-After of 40s", i, gap)
			}
		}
	})
}

// TestNonRetryableStopsRefreshing: revoked credentials send
// EventUnavailable at once and stop background refreshes until a caller
// asks again.
func TestNonRetryableStopsRefreshing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		var revoked atomic.Bool
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if revoked.Load() {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidClient, Provider: "p", Status: 401, Code: "invalid_client"}
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{NegativeTTL: 5 * time.Second})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		revoked.Store(true)
		time.Sleep(life * 3 / 4)
		synctest.Wait()
		ev := next(t, w)
		if ev.Kind != EventUnavailable || !errors.Is(ev.Err, upstream.ErrInvalidClient) {
			t.Fatalf("got %v %v, want unavailable with invalid_client", ev.Kind, ev.Err)
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("got %d calls, want 2", got)
		}
		time.Sleep(3 * life)
		if got := f.calls.Load(); got != 2 {
			t.Errorf("after the rejection: got %d calls, want still 2 (refreshing stopped)", got)
		}
		noEvent(t, w)
		// A caller asks again: the credentials work again, the watcher
		// gets the new token.
		revoked.Store(false)
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-3" {
			t.Errorf("after asking again: got %q, want tok-3", got)
		}
		if ev := next(t, w); ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() != "tok-3" {
			t.Errorf("watcher after recovery: got %v %q, want refreshed tok-3", ev.Kind, ev.Token.AccessToken.Reveal())
		}
	})
}

// TestIdleKeysAreNotRefreshed: a key used once is refreshed at most once
// more (it was used within that lifetime) and then dropped; a key in
// steady use is refreshed ahead of its callers, who never wait.
func TestIdleKeysAreNotRefreshed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		idle := lifetimeFetcher(life)
		busy := lifetimeFetcher(life)
		b := newBroker(t, idle, Config{})
		b.cfg.Providers["busy"] = busy
		b.cfg.Clients["busy"] = Client{Provider: "busy", ClientID: "b", ClientSecret: "s"}
		runBroker(t, b)
		mustGet(t, b, held())
		// A call a minute for 59 minutes, about six lifetimes. The test
		// ends between refresh points (every 7m30s), so the count does
		// not depend on which of two events at one instant runs first.
		for i := range 60 {
			if i > 0 {
				time.Sleep(time.Minute)
			}
			tok := mustGet(t, b, Request{Selector: Selector{Client: "busy"}})
			// At the refresh point itself the refresh starts; a caller
			// at that very instant may still get the old token.
			if time.Now().After(tok.RefreshAt) {
				t.Fatalf("busy key served a token past its refresh point at %v", time.Now())
			}
		}
		synctest.Wait()
		if got := idle.calls.Load(); got != 2 {
			t.Errorf("idle key: got %d upstream calls in 6 lifetimes, want 2 (the fetch and one refresh)", got)
		}
		// One fetch, then one refresh at each 7m30s point up to 52m30s.
		if got := busy.calls.Load(); got != 1+7 {
			t.Errorf("busy key: got %d upstream calls, want %d", got, 1+7)
		}
		b.mu.RLock()
		n := len(b.entries)
		b.mu.RUnlock()
		if n != 1 {
			t.Errorf("got %d entries, want 1 (the idle key dropped)", n)
		}
	})
}

// TestSchedulerHoldsManyKeysWithoutGoroutines: 100,000 scheduled keys cost
// no goroutine each.
func TestSchedulerHoldsManyKeysWithoutGoroutines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{Cache: newCache(t, 256<<20)})
		runBroker(t, b)
		before := runtime.NumGoroutine()
		for i := range 100_000 {
			sel := Selector{Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String(fmt.Sprint(i))}}
			if _, err := b.GetToken(context.Background(), Request{Selector: sel}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		b.mu.RLock()
		scheduled := len(b.schedule)
		b.mu.RUnlock()
		if scheduled != 100_000 {
			t.Errorf("got %d scheduled keys, want 100000", scheduled)
		}
		if after := runtime.NumGoroutine(); after > before+10 {
			t.Errorf("goroutines grew from %d to %d with 100,000 scheduled keys", before, after)
		}
	})
}

// TestEvictedTokenServedWhileRefreshIsHeld: a watched key's token is
// pinned: when the cache fills up with other keys' tokens while the
// key's refresh is held up upstream, callers are still served its token
// at once instead of waiting for the refresh.
func TestEvictedTokenServedWhileRefreshIsHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		life := lifetimeFetcher(time.Hour)
		var heldCalls atomic.Int64
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if len(r.Scopes) == 0 && heldCalls.Add(1) > 1 {
				<-release
			}
			return life.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{Cache: newCache(t, 64<<10)})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		first := w.Initial()
		time.Sleep(time.Until(first.RefreshAt))
		synctest.Wait() // the refresh is under way, and held
		for i := range 1000 {
			mustGet(t, b, held(fmt.Sprint("other-", i)))
		}
		if got := b.cfg.Cache.Evictions(); got == 0 {
			t.Fatal("the cache evicted nothing: the test fills it too little")
		}
		start := time.Now()
		tok := mustGet(t, b, held())
		if tok.AccessToken.Reveal() != first.AccessToken.Reveal() || time.Since(start) != 0 {
			t.Errorf("got %q after %v, want %q at once", tok.AccessToken.Reveal(), time.Since(start), first.AccessToken.Reveal())
		}
		close(release)
		if ev := <-w.Events(); ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() == first.AccessToken.Reveal() {
			t.Errorf("got %v %q, want refreshed with a new token", ev.Kind, ev.Token.AccessToken.Reveal())
		}
		if got := heldCalls.Load(); got != 2 {
			t.Errorf("got %d upstream calls for the watched key, want 2", got)
		}
	})
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu       sync.Mutex
	upstream []string
	leads    []time.Duration
	served   []time.Duration
}

func (r *recorder) UpstreamDone(f Fetch, err error, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.upstream = append(r.upstream, fmt.Sprintf("%s %v %v", f.Provider, err, d))
}

func (r *recorder) Refreshed(_ string, lead time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leads = append(r.leads, lead)
}

func (r *recorder) Served(_ Fetch, remaining time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.served = append(r.served, remaining)
}

// TestObserverSeesFetchesRefreshesAndServedTokens: the Observer hears of
// each upstream fetch, each refresh with the old token's remaining life,
// and each token served with its own, a token pushed to a watcher
// included (issue 17: a push is a call served).
func TestObserverSeesFetchesRefreshesAndServedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		b := newBroker(t, lifetimeFetcher(time.Hour), Config{Observer: rec})
		runBroker(t, b)
		w := mustWatch(t, b, held())
		mustGet(t, b, held())
		<-w.Events() // the refresh at 45 minutes
		synctest.Wait()
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if want := []string{"p <nil> 0s", "p <nil> 0s"}; !slices.Equal(rec.upstream, want) {
			t.Errorf("upstream: got %q, want %q", rec.upstream, want)
		}
		if want := []time.Duration{15 * time.Minute}; !slices.Equal(rec.leads, want) {
			t.Errorf("refresh leads: got %v, want %v", rec.leads, want)
		}
		if want := []time.Duration{time.Hour, time.Hour, time.Hour}; !slices.Equal(rec.served, want) {
			t.Errorf("served: got %v, want %v (the watch's initial token, GetToken's, and the refreshed token pushed to the watcher)", rec.served, want)
		}
	})
}

// TestRefreshDueOnArrivalIsNotLost: a watched key's refresh that is held
// longer than the token's refresh lead brings a token whose refresh point
// (counted, like its life, from when the request was sent) has already
// passed, so the scheduler starts the next refresh as soon as the token
// is installed, while the flight that installed it is still finishing.
// That refresh must be a new upstream request, not a join of the ending
// flight: the joined flight returned without marking the refresh done,
// the key stayed "refreshing" for good and its watchers got no token
// again (TestTenThousandWatchersOverGRPC hung on a loaded machine).
func TestRefreshDueOnArrivalIsNotLost(t *testing.T) {
	for round := range 20 {
		synctest.Test(t, func(t *testing.T) {
			const life = 10 * time.Minute
			release := make(chan struct{})
			f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
				sent := time.Now()
				if n == 2 {
					select {
					case <-release:
					case <-ctx.Done():
						return upstream.Token{}, ctx.Err()
					}
				}
				return upstream.Token{AccessToken: secret.String(fmt.Sprintf("tok-%d", n)), TokenType: "Bearer",
					Scopes: r.Scopes, IssuedAt: sent, ExpiresAt: sent.Add(life)}, nil
			}}
			// Refresh point 1 minute after issue; min_remaining 30 s; the
			// held fetch does not time out.
			b := newBroker(t, f, Config{RefreshFraction: 0.1, FetchTimeout: 5 * time.Minute})
			runBroker(t, b)
			w := mustWatch(t, b, held("a"))
			time.Sleep(time.Minute)
			synctest.Wait() // the refresh (fetch 2) is held in flight
			// Held 2 minutes: tok-2's refresh point is a minute gone when
			// it arrives, tok-1 is still servable.
			time.Sleep(2 * time.Minute)
			close(release)
			synctest.Wait()
			if got := f.calls.Load(); got != 3 {
				t.Fatalf("round %d: got %d upstream calls, want 3: the refresh due when tok-2 arrived was not made", round, got)
			}
			if ev := next(t, w); ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() != "tok-3" {
				t.Fatalf("round %d: got %v %q, want refreshed tok-3", round, ev.Kind, ev.Token.AccessToken.Reveal())
			}
			// And the refreshes go on at each refresh point.
			time.Sleep(time.Minute)
			synctest.Wait()
			if ev := next(t, w); ev.Kind != EventRefreshed || ev.Token.AccessToken.Reveal() != "tok-4" {
				t.Fatalf("round %d: got %v %q, want refreshed tok-4", round, ev.Kind, ev.Token.AccessToken.Reveal())
			}
		})
	}
}
