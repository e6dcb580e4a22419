package broker

import (
	"context"
	"fmt"
	"runtime"
	"slices"
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
	// Held as the product holds it: a Credential bound to its source.
	cr := &upstream.Credential{Name: "held", Method: upstream.AuthBasic, Binding: "bench-source"}
	cr.Set(upstream.Material{Secret: "held-secret"})
	cfg.Clients = map[string]Client{"held": {Provider: "p", ClientID: "held-id", ClientSecret: "held-secret", Credential: cr}}
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

// uniqueFetcher is an instant Fetcher whose every token is distinct (an
// 800-byte body ending in the call number), so that no two records share
// bytes.
type uniqueFetcher struct{ calls atomic.Int64 }

func (f *uniqueFetcher) Fetch(_ context.Context, r upstream.Request) (upstream.Token, error) {
	n := f.calls.Add(1)
	now := time.Now()
	tok := benchTokenBody[:800-20] + secret.String(fmt.Sprintf("%020d", n))
	return upstream.Token{AccessToken: tok, TokenType: "Bearer", Scopes: r.Scopes,
		IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, nil
}

// BenchmarkMemoryPerToken fills a 4 MiB cache with ten times more
// distinct 800-byte tokens (on distinct keys) than it holds, then twenty
// times, and measures the live heap after each (broker and cache, the
// cache's fixed admission counters excluded).
//
// Custom metrics:
//   - heap/cost: live heap per held token divided by the cost the cache
//     charges for it (target ≤ 1.25): how honestly max_cost bounds memory;
//   - B/evicted: live heap per evicted key - what the broker keeps of a
//     key whose token the cache let go (target ≤ 256);
//   - cost/token: the cost charged per held token;
//   - cache-heap/cost: the same for the cache alone (the broker's
//     entries dropped before measuring);
//   - B/entry: live heap per entry of a held key (its metadata);
//   - held: tokens held at 10×.
func BenchmarkMemoryPerToken(b *testing.B) {
	const maxCost = 4 << 20
	for b.Loop() {
		f := &uniqueFetcher{}
		br, cache := newBenchBroker(b, f, maxCost, Config{})
		ctx := context.Background()
		base := liveHeap()
		fill := func(from, to int) {
			for i := from; i < to; i++ {
				if _, err := br.GetToken(ctx, Request{Selector: Selector{Client: "held", Scopes: []string{"s" + strconv.Itoa(i)}}}); err != nil {
					b.Fatal(err)
				}
			}
			cache.Wait()
		}
		held := func(n int) (count int) {
			for i := range n {
				t, _ := br.resolve(Selector{Client: "held", Scopes: []string{"s" + strconv.Itoa(i)}})
				if cache.Has(t.key) {
					count++
				}
			}
			return count
		}
		perToken := int64(maxCost / 1100) // about what fits
		n1 := int(10 * perToken)
		fill(0, n1)
		h1, held1, used1 := float64(liveHeap()-base), held(n1), cache.Used()
		n2 := 2 * n1
		fill(n1, n2)
		h2, held2 := float64(liveHeap()-base), held(n2)
		cost := float64(used1) / float64(held1)
		ev1, ev2 := float64(n1-held1), float64(n2-held2)
		// The held tokens' part is the same at 10× and 20× (up to the
		// difference in their number): what grows is per evicted key.
		meta := max(0, (h2-h1-float64(held2-held1)*cost)/(ev2-ev1))
		perHeld := (h1 - ev1*meta) / float64(held1)
		// The cache alone: the same heap without the broker's entries.
		br.mu.Lock()
		entries := len(br.entries)
		br.entries, br.schedule = make(map[string]*entry), nil
		br.mu.Unlock()
		cacheOnly := float64(liveHeap() - base)
		b.ReportMetric((h2-cacheOnly)/float64(entries), "B/entry")
		b.ReportMetric(cacheOnly/float64(held2)/cost, "cache-heap/cost")
		b.ReportMetric(perHeld/cost, "heap/cost")
		b.ReportMetric(meta, "B/evicted")
		b.ReportMetric(cost, "cost/token")
		b.ReportMetric(float64(held1), "held")
		br.Close()
		cache.Close()
	}
}

// BenchmarkHitLatencyUnderInstalls measures GetToken hit latency on one
// key, p50 and p99, while another goroutine installs 1,000 other keys
// (cold GetTokens: fetch, cache Set, entry, schedule) against the same
// without installs, in interleaved rounds of the same run. The ratios are
// the median of the per-round ratios (target p99 ratio ≤ 1.5).
func BenchmarkHitLatencyUnderInstalls(b *testing.B) {
	const rounds, samples, installs = 15, 20_000, 1000
	f := &uniqueFetcher{}
	br, cache := newBenchBroker(b, f, 256<<20, Config{})
	defer cache.Close()
	defer br.Close()
	ctx := context.Background()
	req := benchHitRequest()
	if _, err := br.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	measure := func(d []time.Duration, stop func() bool) []time.Duration {
		d = d[:0]
		for len(d) < samples && !stop() {
			start := time.Now()
			if _, err := br.GetToken(ctx, req); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(start))
		}
		slices.Sort(d)
		return d
	}
	pct := func(d []time.Duration, p float64) float64 { return float64(d[int(p*float64(len(d)-1))]) }
	var quiet50, quiet99, busy50, busy99, r50, r99 []float64
	buf := make([]time.Duration, 0, samples)
	next := 0
	for b.Loop() {
		for range rounds {
			q := measure(buf, func() bool { return false })
			quiet50, quiet99 = append(quiet50, pct(q, 0.5)), append(quiet99, pct(q, 0.99))
			var done atomic.Bool
			from := next
			next += installs
			go func() {
				defer done.Store(true)
				for i := from; i < from+installs; i++ {
					if _, err := br.GetToken(ctx, Request{Selector: Selector{Client: "held", Scopes: []string{"k" + strconv.Itoa(i)}}}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
			busy := measure(buf, done.Load)
			for !done.Load() {
				runtime.Gosched()
			}
			if len(busy) < 100 {
				continue // the installs ended too soon to measure
			}
			busy50, busy99 = append(busy50, pct(busy, 0.5)), append(busy99, pct(busy, 0.99))
			r50 = append(r50, busy50[len(busy50)-1]/quiet50[len(quiet50)-1])
			r99 = append(r99, busy99[len(busy99)-1]/quiet99[len(quiet99)-1])
		}
	}
	median := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	b.ReportMetric(median(quiet50), "quiet-p50-ns")
	b.ReportMetric(median(quiet99), "quiet-p99-ns")
	b.ReportMetric(median(busy50), "busy-p50-ns")
	b.ReportMetric(median(busy99), "busy-p99-ns")
	b.ReportMetric(median(r50), "p50-ratio")
	b.ReportMetric(median(r99), "p99-ratio")
}
