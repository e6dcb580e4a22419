package app

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// The fleet benchmarks measure the Redis tier on fleets that startFleet
// builds: replicas of the whole product over loopback TCP, one real
// redis-server, one devissuer token endpoint over HTTP.
//
// BenchmarkFleetAmplification measures promise 1 of the design: one
// upstream request per key per refresh window, however many replicas run
// and however many callers ask. Its headline figure, upstream/key/window,
// is the upstream requests the fleet made divided by what a single,
// perfectly coalescing broker would make (one per key per window); the
// goal is 1.00 for every fleet size, so the baseline is the ideal count,
// and replicas=1 is the measured single-broker reference in the same run.
//
// BenchmarkFleetMissLatency measures what the tier adds to a local-cache
// miss, against a replica without Redis measured in the same run.

// The amplification scenario. Tokens live ampLifetime and are refreshed
// at ampFraction of it with no jitter, so refresh windows are exactly
// ampFraction × ampLifetime (1 s) long and every replica's refresh point
// for a key is the same instant (the worst case for the fleet lock).
const (
	ampKeys              = 8
	ampCallersPerReplica = 4
	ampWatchersPerKey    = 2 // on every replica
	ampWindows           = 5
	ampLifetime          = 4 * time.Second
	ampFraction          = 0.25
	// ampWait bounds every blocking step: one GetToken, the stats, the
	// goroutines' end.
	ampWait = 30 * time.Second
)

// ampReplicas are the fleet sizes of the sub-benchmarks.
var ampReplicas = []int{1, 3, 5}

// ampWindow is the length of one refresh window.
const ampWindow = time.Duration(ampFraction * float64(ampLifetime))

// BenchmarkFleetAmplification: ampKeys keys, cold at the start, asked for
// by ampCallersPerReplica callers on every replica (GetToken in a loop,
// each call for a random key) and watched by ampWatchersPerKey streams
// per key on every replica, for ampWindows refresh windows.
//
// The run lasts (ampWindows − ½) windows from the moment the load starts:
// every key's first token is fetched right then (window 1) and refreshed
// at every window's end, so by the stop, half-way through the last window,
// ampWindows windows have begun and no refresh is in flight; the upstream
// count is read at that instant. A perfect fleet has then made exactly
// ampKeys × ampWindows upstream requests.
//
// The scenario has a fixed length, so b.N means nothing to it: each
// b.Loop iteration runs the whole scenario once, on a fleet of its own
// (its own token endpoint, so iterations cannot count each other's
// requests), and the figures are pooled over iterations. One iteration
// takes (ampWindows − ½) s, more than the default -benchtime, so a plain
// run does exactly one; a longer -benchtime only repeats the scenario.
// The built-in ns/op, the scenario's length, is suppressed.
//
// Metrics, per scenario:
//   - upstream/key/window: upstream requests / (ampKeys × ampWindows);
//     the goal is 1.00.
//   - upstream-reqs and ideal-reqs: the raw counts behind that ratio.
//   - calls/s: GetToken calls answered per second, all replicas (the
//     load).
//   - min-pushes/watcher: the fewest refreshed tokens a watcher received;
//     ampWindows − 1 when every window's refresh reached every watcher.
//   - fleet-fetches, fleet-hits, fleet-waits, fallbacks: the replicas'
//     shared-tier counters, summed (fetches made under the fleet lock,
//     tokens found filed by another replica, waits for another replica's
//     lock, fetches made without the fleet because Redis failed).
func BenchmarkFleetAmplification(b *testing.B) {
	if testing.Short() {
		b.Skip("seconds of load on a fleet with a real redis-server")
	}
	for _, n := range ampReplicas {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			var sum ampResult
			runs := 0
			for b.Loop() {
				r := runAmplification(b, startFleet(b, n, ampConfig), ampScenario{keys: ampKeys, callers: ampCallersPerReplica, watchers: ampWatchersPerKey})
				sum.add(r)
				runs++
			}
			per := func(v int64) float64 { return float64(v) / float64(runs) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(sum.requests)/float64(runs*ampKeys*ampWindows), "upstream/key/window")
			b.ReportMetric(per(sum.requests), "upstream-reqs")
			b.ReportMetric(ampKeys*ampWindows, "ideal-reqs")
			b.ReportMetric(float64(sum.calls)/sum.elapsed.Seconds(), "calls/s")
			b.ReportMetric(per(sum.minPushes), "min-pushes/watcher")
			b.ReportMetric(per(sum.fetches), "fleet-fetches")
			b.ReportMetric(per(sum.hits), "fleet-hits")
			b.ReportMetric(per(sum.waits), "fleet-waits")
			b.ReportMetric(per(sum.fallbacks), "fallbacks")
		})
	}
}

// ampResult is what one amplification scenario counted.
type ampResult struct {
	requests  int64         // upstream requests during the run
	calls     int64         // GetToken calls answered
	elapsed   time.Duration // the run's length
	minPushes int64         // fewest refreshed tokens one watcher received
	// The shared-tier counters, summed over the replicas.
	fetches, hits, waits, fallbacks int64
}

func (r *ampResult) add(o ampResult) {
	r.requests += o.requests
	r.calls += o.calls
	r.elapsed += o.elapsed
	r.minPushes += o.minPushes
	r.fetches += o.fetches
	r.hits += o.hits
	r.waits += o.waits
	r.fallbacks += o.fallbacks
}

// ampConfig sets the scenario's refresh point (ampFraction, no jitter)
// and a min_remaining below one window.
func ampConfig(cfg *config.Config) {
	cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = ampFraction, 0
	cfg.Cache.MinRemaining = config.Duration(time.Second)
}

// ampScenario is the load of one amplification run: keys keys, callers
// GetToken loops per replica, watchers streams per key on every replica.
type ampScenario struct {
	keys, callers, watchers int
}

// runAmplification runs the scenario described at
// BenchmarkFleetAmplification once, with sc's load, on f: a new fleet
// configured with ampConfig, whose replicas have seen no key yet.
func runAmplification(b *testing.B, f *testFleet, sc ampScenario) ampResult {
	b.Helper()
	n := len(f.replicas)
	f.issuer.SetLifetime(ampLifetime)
	sels := make([]*tokenbrokerv1.TokenSelector, sc.keys)
	for k := range sels {
		sels[k] = addPassClient(f.issuer, fmt.Sprintf("amp-client-%d", k))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// errc keeps the first failure seen while the run is live; failures
	// after the stop are the stop itself.
	errc := make(chan error, 1)
	fail := func(err error) {
		if ctx.Err() == nil {
			select {
			case errc <- err:
			default:
			}
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var calls atomic.Int64
	pushes := make([]atomic.Int64, n*sc.keys*sc.watchers)
	for r, rep := range f.replicas {
		for k, sel := range sels {
			for w := range sc.watchers {
				count := &pushes[(r*sc.keys+k)*sc.watchers+w]
				wg.Go(func() {
					<-start
					st, err := rep.client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: sel})
					if err != nil {
						fail(fmt.Errorf("replica %d key %d: WatchToken: %w", r, k, err))
						return
					}
					for {
						m, err := st.Recv()
						if err != nil {
							fail(fmt.Errorf("replica %d key %d: watcher: %w", r, k, err))
							return
						}
						if m.GetEvent() == tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED {
							count.Add(1)
						}
					}
				})
			}
		}
		for c := range sc.callers {
			wg.Go(func() {
				<-start
				rnd := rand.New(rand.NewPCG(uint64(r), uint64(c)))
				for ctx.Err() == nil {
					k := rnd.IntN(len(sels))
					cctx, ccancel := context.WithTimeout(ctx, ampWait)
					_, err := rep.client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Selector: sels[k]})
					ccancel()
					if err != nil {
						fail(fmt.Errorf("replica %d caller %d key %d: GetToken: %w", r, c, k, err))
						return
					}
					calls.Add(1)
				}
			})
		}
	}
	stopAll := func() {
		cancel()
		if !waitTimeout(&wg, ampWait) {
			b.Fatalf("callers and watchers still running %v after the stop", ampWait)
		}
	}

	t0 := time.Now()
	close(start)
	stop := time.NewTimer(time.Duration((ampWindows - 0.5) * float64(ampWindow)))
	defer stop.Stop()
	select {
	case <-stop.C:
	case err := <-errc:
		stopAll()
		b.Fatal(err)
	}
	res := ampResult{requests: f.issuer.Requests(), calls: calls.Load(), elapsed: time.Since(t0)}
	stopAll()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}

	res.minPushes = math.MaxInt64
	for i := range pushes {
		res.minPushes = min(res.minPushes, pushes[i].Load())
	}
	sctx, scancel := context.WithTimeout(context.Background(), ampWait)
	defer scancel()
	for i, rep := range f.replicas {
		st, err := rep.admin.GetStats(sctx, &tokenbrokerv1.GetStatsRequest{})
		if err != nil {
			b.Fatalf("replica %d: GetStats: %v", i, err)
		}
		tier := st.GetSharedTier()
		res.fetches += tier.GetFetches()
		res.hits += tier.GetHits()
		res.waits += tier.GetWaits()
		res.fallbacks += tier.GetFallbacks()
	}
	return res
}

// addPassClient registers a new client, id, with the token endpoint and
// returns a selector that presents its credentials (pass-through): a key
// no replica has seen.
func addPassClient(issuer *devissuer.Issuer, id string) *tokenbrokerv1.TokenSelector {
	sec := "s3cret-" + id
	issuer.AddClient(devissuer.Client{ID: id, Secret: sec, Scopes: []string{"api/read"}})
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
		ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: id, ClientSecret: sec},
	}, Scopes: []string{"api/read"}}
}

// BenchmarkFleetMissLatency: the latency of one GetToken that misses the
// replica's local cache, three ways, measured side by side in every
// iteration on a key no replica has seen:
//
//   - (a) upstream-ns/op, the baseline: a replica without Redis fetches
//     the token from the token endpoint.
//   - (c) redis-cold-ns/op: replica A of a two-replica fleet, the key
//     absent from Redis too: the tier's read, lock, second read, the
//     upstream fetch, filing and announcing the token, unlocking.
//   - (b) redis-hit-ns/op: replica B of that fleet asks next for the
//     token A just filed: the tier's read finds it.
//
// c/a and b/a are the ratios to the baseline; redis-added-ns/op is c − a,
// what the tier adds to a miss that goes upstream. local-hit-ns/op, A
// asked once more, is a hit in A's own cache: the floor every GetToken
// pays (gRPC over loopback, the broker's lookup), for reference.
//
// The three replicas share one configuration (startFleet's, with a
// provider request budget too large to ever wait; the baseline only has
// no Redis address), and the calls interleave, so load and drift hit all
// paths alike. The built-in ns/op, the calls' sum, is suppressed; B/op
// and allocs/op are the four calls' together, client and servers (one
// process), per iteration. Registering the new key with the token
// endpoint is outside the timer; an untimed first round opens the
// connections (gRPC, HTTP, Redis).
func BenchmarkFleetMissLatency(b *testing.B) {
	if testing.Short() {
		b.Skip("a fleet with a real redis-server")
	}
	unthrottled := func(cfg *config.Config) {
		cfg.Providers[0].RateLimit, cfg.Providers[0].Burst = 1e6, 1e6
	}
	base := startFleet(b, 1, func(cfg *config.Config) {
		unthrottled(cfg)
		cfg.Shared.Redis.Addrs = nil
	})
	fleet := startFleet(b, 2, unthrottled)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// get asks rep for sel and returns the access token.
	get := func(rep replica, sel *tokenbrokerv1.TokenSelector, what string) string {
		cctx, ccancel := context.WithTimeout(ctx, ampWait)
		defer ccancel()
		resp, err := rep.client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Selector: sel})
		if err != nil {
			b.Fatalf("%s: GetToken: %v", what, err)
		}
		return resp.GetToken().GetAccessToken()
	}
	id := 0
	var upstream, cold, hit, local time.Duration
	round := func() {
		b.StopTimer()
		id++
		name := fmt.Sprintf("miss-client-%d", id)
		baseSel, fleetSel := addPassClient(base.issuer, name), addPassClient(fleet.issuer, name)
		b.StartTimer()
		t0 := time.Now()
		get(base.replicas[0], baseSel, "(a) no Redis")
		t1 := time.Now()
		filed := get(fleet.replicas[0], fleetSel, "(c) cold in Redis")
		t2 := time.Now()
		got := get(fleet.replicas[1], fleetSel, "(b) filed in Redis")
		t3 := time.Now()
		again := get(fleet.replicas[0], fleetSel, "local hit")
		t4 := time.Now()
		if got != filed || again != filed {
			b.Fatalf("round %d: replica B, or A again, got another token than the one A filed", id)
		}
		upstream, cold, hit, local = upstream+t1.Sub(t0), cold+t2.Sub(t1), hit+t3.Sub(t2), local+t4.Sub(t3)
	}
	round()
	upstream, cold, hit, local = 0, 0, 0, 0
	baseReqs, fleetReqs := base.issuer.Requests(), fleet.issuer.Requests()
	hits0, err := sharedHits(ctx, fleet.replicas[1])
	if err != nil {
		b.Fatal(err)
	}

	n := 0
	for b.Loop() {
		round()
		n++
	}
	b.StopTimer()

	// Each path must have been the one measured: one upstream request
	// per round on each side, and B's answers came from Redis.
	if got := base.issuer.Requests() - baseReqs; got != int64(n) {
		b.Fatalf("(a) no Redis: got %d upstream requests in %d rounds, want %d", got, n, n)
	}
	if got := fleet.issuer.Requests() - fleetReqs; got != int64(n) {
		b.Fatalf("fleet: got %d upstream requests in %d rounds, want %d", got, n, n)
	}
	hits, err := sharedHits(ctx, fleet.replicas[1])
	if err != nil {
		b.Fatal(err)
	}
	if got := hits - hits0; got != int64(n) {
		b.Fatalf("(b) replica B: got %d tokens found in Redis in %d rounds, want %d", got, n, n)
	}

	mean := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(n) }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mean(upstream), "upstream-ns/op")
	b.ReportMetric(mean(hit), "redis-hit-ns/op")
	b.ReportMetric(mean(cold), "redis-cold-ns/op")
	b.ReportMetric(mean(local), "local-hit-ns/op")
	b.ReportMetric(mean(cold)-mean(upstream), "redis-added-ns/op")
	b.ReportMetric(float64(cold)/float64(upstream), "c/a")
	b.ReportMetric(float64(hit)/float64(upstream), "b/a")
}

// sharedHits returns how many tokens rep's shared tier found filed by
// another replica.
func sharedHits(ctx context.Context, rep replica) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, ampWait)
	defer cancel()
	st, err := rep.admin.GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		return 0, fmt.Errorf("GetStats: %w", err)
	}
	if st.GetSharedTier() == nil {
		return 0, errors.New("GetStats: no shared tier in the stats")
	}
	return st.GetSharedTier().GetHits(), nil
}
