package broker

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// benchTokenBody is the access token every benchFetcher token carries: the
// length of a typical JWT, shared by all records so that per-key memory
// figures count the broker's own state and not copies of the token.
var benchTokenBody = secret.String(strings.Repeat("t", 800))

// benchFetcher is an instant Fetcher: it issues benchTokenBody living
// lifetime, and counts its calls.
type benchFetcher struct {
	lifetime time.Duration
	calls    atomic.Int64
}

func (f *benchFetcher) Fetch(_ context.Context, r upstream.Request) (upstream.Token, error) {
	f.calls.Add(1)
	now := time.Now()
	return upstream.Token{AccessToken: benchTokenBody, TokenType: "Bearer", Scopes: r.Scopes,
		IssuedAt: now, ExpiresAt: now.Add(f.lifetime)}, nil
}

// newBenchBroker returns a broker with provider "p" served by f and
// broker-held client "held", over a cache of maxCost bytes (closed at
// cleanup unless the caller closes it).
func newBenchBroker(tb testing.TB, f Fetcher, maxCost int64, cfg Config) (*Broker, *tokencache.Cache) {
	tb.Helper()
	cache, err := tokencache.New(maxCost, tokencache.RandomKeyring())
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Providers = map[string]Fetcher{"p": f}
	cfg.Clients = map[string]Client{"held": {Provider: "p", ClientID: "held-id", ClientSecret: "held-secret"}}
	cfg.Cache = cache
	b, err := New(testConfig(cfg))
	if err != nil {
		cache.Close()
		tb.Fatal(err)
	}
	return b, cache
}

// benchHitRequest is the request both hit benchmarks serve: a broker-held
// client and two scopes, so the key derivation sorts and hashes them.
func benchHitRequest() Request {
	return Request{Selector: Selector{Client: "held", Scopes: []string{"api/write", "api/read"}}}
}

// BenchmarkGetTokenHit measures Broker.GetToken when the key's token is
// cached and before its refresh point: resolving the selector, deriving
// the HMAC key, the cache lookup and marking the key used. Compare with
// BenchmarkGetTokenHitBaseline, run in the same invocation.
func BenchmarkGetTokenHit(b *testing.B) {
	f := &benchFetcher{lifetime: time.Hour}
	br, cache := newBenchBroker(b, f, 64<<20, Config{})
	defer cache.Close()
	ctx := context.Background()
	req := benchHitRequest()
	if _, err := br.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.GetToken(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	// Every call must have been a hit, or this measured something else.
	if got := f.calls.Load(); got != 1 {
		b.Fatalf("got %d upstream fetches, want 1 (only the warm-up)", got)
	}
}

// BenchmarkGetTokenHitBaseline measures the least a cache hit must do: one
// tokencache.Cache.Get of the same key, already derived. GetTokenHit's
// ns/op divided by this one's is the broker's overhead on a hit.
func BenchmarkGetTokenHitBaseline(b *testing.B) {
	f := &benchFetcher{lifetime: time.Hour}
	br, cache := newBenchBroker(b, f, 64<<20, Config{})
	defer cache.Close()
	req := benchHitRequest()
	if _, err := br.GetToken(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	t, err := br.resolve(req.Selector)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := cache.Get(t.key); !ok {
				b.Error("cache miss: the baseline must measure hits")
				return
			}
		}
	})
}

// BenchmarkScheduler100kKeys measures what it costs to bring 100,000 keys
// under the refresh scheduler: one op is GetToken on 100,000 distinct cold
// keys (an instant fetcher, one-hour tokens, default refresh fraction and
// jitter, Run running), after which every key is in the timer heap.
//
// Custom metrics:
//   - ns/key: the op's time per key - the whole cold GetToken path
//     (derivation, miss, shared fetch, cache insert, entry and heap push),
//     so an upper bound for the scheduling itself;
//   - B/key: live heap (after GC) the broker holds per scheduled key:
//     its entry (with its sealed copy of the token), map and heap slots,
//     and the cached sealed record with the cache's bookkeeping.
//
// B/op and allocs/op are per op (100,000 keys), garbage included.
func BenchmarkScheduler100kKeys(b *testing.B) {
	if testing.Short() {
		b.Skip("100,000 keys per op")
	}
	const keys = 100_000
	reqs := make([]Request, keys)
	for i := range reqs {
		reqs[i] = Request{Selector: Selector{Client: "held", Scopes: []string{"scope-" + strconv.Itoa(i)}}}
	}
	f := &benchFetcher{lifetime: time.Hour}
	var retained int64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		// Large enough that the cache admits every record (about 1.1 KiB
		// each with its cost overhead and the 800-byte token).
		br, cache := newBenchBroker(b, f, 512<<20, Config{RefreshJitter: 0.05})
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan error, 1)
		go func() { ran <- br.Run(ctx) }()
		before := liveHeap()
		b.StartTimer()

		for _, r := range reqs {
			if _, err := br.GetToken(ctx, r); err != nil {
				b.Fatal(err)
			}
		}

		b.StopTimer()
		retained += int64(liveHeap()) - int64(before)
		br.mu.RLock()
		scheduled, entries := len(br.schedule), len(br.entries)
		br.mu.RUnlock()
		cancel()
		if err := <-ran; err != nil {
			b.Errorf("Run: %v", err)
		}
		br.Close()
		cache.Close()
		if scheduled != keys || entries != keys {
			b.Fatalf("got %d scheduled keys and %d entries, want %d of each", scheduled, entries, keys)
		}
		b.StartTimer()
	}
	perKey := float64(b.N) * keys
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/perKey, "ns/key")
	b.ReportMetric(float64(retained)/perKey, "B/key")
}

// liveHeap returns the bytes of live heap objects after a full GC.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
