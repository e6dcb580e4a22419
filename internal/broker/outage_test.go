package broker

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestUnavailableWhileRefreshHangs: a refresh that hangs (the endpoint
// never answers within fetch_timeout) does not leave watchers holding a
// token below min_remaining: the moment it falls below is an event of its
// own, EventUnavailable, sent while the fetch is still in flight.
func TestUnavailableWhileRefreshHangs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 4 * time.Minute // refresh at 3m, below min_remaining at 3m30s
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if n > 1 {
				<-ctx.Done() // hangs until fetch_timeout
				return upstream.Token{}, ctx.Err()
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{FetchTimeout: 5 * time.Minute})
		t.Cleanup(b.Close) // ends the fetch still hanging
		runBroker(t, b)
		w := mustWatch(t, b, held())
		first := w.Initial()
		time.Sleep(time.Until(first.ExpiresAt.Add(-30*time.Second)) - time.Nanosecond)
		synctest.Wait()
		noEvent(t, w)
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("got %d upstream calls, want 2 (the refresh is in flight)", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		ev := next(t, w)
		if ev.Kind != EventUnavailable || !errors.Is(ev.Err, upstream.ErrUnavailable) || ev.Token.AccessToken != "" {
			t.Fatalf("when the token fell below min_remaining: got %v %v, want unavailable (ErrUnavailable) with no token", ev.Kind, ev.Err)
		}
		// Not told twice when the hanging fetch finally fails.
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		noEvent(t, w)
	})
}
