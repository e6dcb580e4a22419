package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// entryCount returns how many entries the broker holds.
func entryCount(b *Broker) int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.entries)
}

// TestEntriesEndAfterRejectedRefreshes: 10,000 watchers on distinct keys
// whose refreshes are rejected (refreshes stopped) are opened and closed;
// once their tokens may no longer be served the broker holds no entry.
func TestEntriesEndAfterRejectedRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keys, life = 10_000, 10 * time.Minute
		var revoked atomic.Bool
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if revoked.Load() {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidClient, Provider: "p", Status: 401, Code: "invalid_client"}
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{Cache: newCache(t, 64<<20)})
		runBroker(t, b)
		ws := make([]*Watcher, keys)
		for i := range ws {
			ws[i] = mustWatch(t, b, held(fmt.Sprint("s", i)))
		}
		revoked.Store(true)
		time.Sleep(life * 3 / 4) // every refresh is rejected
		synctest.Wait()
		for _, w := range ws {
			if ev := next(t, w); ev.Kind != EventUnavailable {
				t.Fatalf("got %v, want unavailable", ev.Kind)
			}
			w.Close()
		}
		time.Sleep(life) // past expiry of every token
		synctest.Wait()
		if n := entryCount(b); n != 0 {
			t.Errorf("the broker holds %d entries, want 0", n)
		}
	})
}

// TestEntryLifeCycle: an entry ends once nothing keeps it: a watcher of a
// key without a token left closing, a non-retryable failure of a key
// nobody watches, an unwatched key whose token the cache let go.
func TestEntryLifeCycle(t *testing.T) {
	t.Run("watcher closed after its token expired", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var down atomic.Bool
			inner := lifetimeFetcher(time.Hour)
			f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
				if down.Load() {
					return upstream.Token{}, &upstream.Error{Kind: upstream.ErrRejected, Provider: "p", Status: 400, Code: "invalid_request"}
				}
				return inner.fn(ctx, n, r)
			}}
			b := newBroker(t, f, Config{})
			runBroker(t, b)
			w := mustWatch(t, b, held())
			down.Store(true)
			time.Sleep(2 * time.Hour)
			synctest.Wait()
			w.Close()
			if n := entryCount(b); n != 0 {
				t.Errorf("the broker holds %d entries after the last watcher left, want 0", n)
			}
		})
	})
	t.Run("rejected fetch of an unwatched key", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &stubFetcher{fn: func(context.Context, int64, upstream.Request) (upstream.Token, error) {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidScope, Provider: "p", Status: 400, Code: "invalid_scope"}
			}}
			b := newBroker(t, f, Config{})
			runBroker(t, b)
			if _, err := b.GetToken(context.Background(), held("x")); err == nil {
				t.Fatal("GetToken succeeded, want the rejection")
			}
			synctest.Wait()
			if n := entryCount(b); n != 0 {
				t.Errorf("the broker holds %d entries, want 0", n)
			}
		})
	})
	t.Run("token evicted from the cache", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := newBroker(t, lifetimeFetcher(time.Hour), Config{Cache: newCache(t, 64<<10)})
			runBroker(t, b)
			for i := range 1000 {
				mustGet(t, b, held(fmt.Sprint("s", i)))
			}
			synctest.Wait()
			cached := 0
			for i := range 1000 {
				tg, _ := b.resolve(held(fmt.Sprint("s", i)).Selector)
				if b.cfg.Cache.Has(tg.key) {
					cached++
				}
			}
			if n := entryCount(b); n > cached {
				t.Errorf("the broker holds %d entries for %d cached tokens, want no more", n, cached)
			}
		})
	})
}

// recordingFleet is a Fleet that fetches locally and records the context
// Invalidated was given.
type recordingFleet struct {
	deadline atomic.Bool
}

func (f *recordingFleet) Obtain(ctx context.Context, _ string, _ func(*tokencache.Record) bool, fetch func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error) {
	return fetch(ctx)
}

func (f *recordingFleet) Invalidated(ctx context.Context, _ []byte) error {
	_, ok := ctx.Deadline()
	f.deadline.Store(ok)
	return ctx.Err()
}

func (f *recordingFleet) Stats() FleetStats { return FleetStats{} }

// TestInvalidateTakesCallerContext: the caller's deadline and
// cancellation reach the fleet.
func TestInvalidateTakesCallerContext(t *testing.T) {
	fleet := &recordingFleet{}
	b := newBroker(t, lifetimeFetcher(time.Hour), Config{Fleet: fleet})
	mustGet(t, b, held())
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if _, err := b.Invalidate(ctx, InvalidateSelector{All: true}); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	if !fleet.deadline.Load() {
		t.Error("the fleet was not given the caller's deadline")
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := b.Invalidate(cancelled, InvalidateSelector{All: true}); !errors.Is(err, ErrFleetNotTold) {
		t.Errorf("Invalidate with a cancelled context: got %v, want ErrFleetNotTold", err)
	}
}
