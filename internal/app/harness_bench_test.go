package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// The performance harness starts the real product (gRPC over loopback
// TCP, the drop-in HTTP endpoint, the devissuer token endpoint over HTTP)
// and measures, each figure side by side with a baseline in the same run:
//
//   - BenchmarkGetTokenVsEcho: GetToken cache hits against a bare grpc-go
//     unary echo of a response of the same size.
//   - BenchmarkAmplification: upstream requests per key per refresh window
//     of a single broker under load (the ideal count is the baseline).
//   - BenchmarkMemoryPerCachedToken: the live heap one cached token costs.
//   - BenchmarkHTTPVsBare: the drop-in endpoint's cache hits against a
//     bare net/http handler writing the same body.
//
// BenchmarkProcGetTokenVsBare and BenchmarkProcHTTPVsBare
// (proc_bench_test.go) run the same comparisons with the built binaries,
// each server in a process of its own. WatchToken fan-out and the memory
// per open stream are compared by BenchmarkProcWatchFanoutVsBare
// (proc_fanout_bench_test.go), in separate processes too, and its
// in-process counterpart BenchmarkWatchFanout (bench_test.go), with the
// same interleaved rounds (interleave) and ratios (reportRatios).
//
// The throughput comparisons run the broker and its baseline in
// interleaved rounds of fixed length (harnessRounds of each, the order
// alternating between rounds), so drift and noise on the machine hit
// both alike. The clients share the process, and its cores, with the
// servers, for the broker and the baseline alike. Each scenario has a
// fixed length, so b.N means nothing to it: each b.Loop iteration runs
// it whole (a plain run does one), rounds pool over iterations, and the
// built-in ns/op is suppressed; with -benchmem, B/op and allocs/op are
// the whole scenario's, both sides and their clients together.
//
// CPU per call is the process's CPU time (getrusage RUSAGE_SELF, user +
// system) over a round divided by the calls it completed. Both sides
// share the process, but their rounds never overlap, so a round's CPU is
// its own side's; it includes the callers' own CPU (the gRPC or HTTP
// client, alike for both sides), so cpu-ratio understates the server's
// own difference: the server-only ratio is larger. The separate-process
// comparisons charge each round the CPU of its side's server process
// alone (comparison.brokerCPU and baseCPU).

// The interleaved throughput comparisons.
const (
	harnessRounds = 5
	harnessRound  = time.Second
	// harnessWarmup is run on each side, unrecorded, before the rounds
	// of each concurrency.
	harnessWarmup = 200 * time.Millisecond
	// harnessWait bounds every blocking step beyond a round's length.
	harnessWait = 30 * time.Second
)

// harnessCallers are the comparisons' concurrencies: sub-benchmarks
// callers=1, callers=16, callers=64.
var harnessCallers = []int{1, 16, 64}

// discardLogger is the broker's logger in the harness: the log lines are
// formatted (their cost is part of the figures) and thrown away.
func discardLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

// round is what one fixed-length round of callers measured on one side.
type round struct {
	perSec   float64 // calls completed per second
	p50, p99 float64 // per-call latency, µs
	// cpu is the CPU time (user + system) per call, µs, of what the
	// round's clock reads: this process (processCPU), or the side's
	// server process alone when it runs apart (procCPU).
	cpu float64
}

// cpuClock returns the CPU time (user + system) a process has used so far.
type cpuClock func() (time.Duration, error)

// processCPU is the cpuClock of this process. The rounds of the two sides
// never overlap, so the difference over a round is that round's side (its
// server and the callers), and not the other's idle server.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// runRound runs c callers calling call in a loop for d and returns the
// throughput, the latency percentiles and the CPU per call that clock
// (processCPU when nil) counted over the round. Every call must succeed.
func runRound(c int, d time.Duration, call func(context.Context) error, clock cpuClock) (round, error) {
	if clock == nil {
		clock = processCPU
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+harnessWait)
	defer cancel()
	lats := make([][]time.Duration, c)
	errc := make(chan error, 1)
	start := make(chan struct{})
	var end time.Time
	var wg sync.WaitGroup
	for i := range c {
		wg.Go(func() {
			<-start
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				if err := call(ctx); err != nil {
					select {
					case errc <- fmt.Errorf("caller %d: %w", i, err):
					default:
					}
					cancel()
					return
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		})
	}
	cpu0, err := clock()
	if err != nil {
		return round{}, err
	}
	t0 := time.Now()
	end = t0.Add(d)
	close(start)
	if !waitTimeout(&wg, d+harnessWait) {
		return round{}, fmt.Errorf("callers still running %v after the round's end", harnessWait)
	}
	elapsed := time.Since(t0)
	cpu1, err := clock()
	if err != nil {
		return round{}, err
	}
	cpu := cpu1 - cpu0
	select {
	case err := <-errc:
		return round{}, err
	default:
	}
	var all []float64
	for _, l := range lats {
		for _, v := range l {
			all = append(all, float64(v)/float64(time.Microsecond))
		}
	}
	if len(all) == 0 {
		return round{}, errors.New("no call completed")
	}
	slices.Sort(all)
	return round{
		perSec: float64(len(all)) / elapsed.Seconds(),
		p50:    percentile(all, 0.50), p99: percentile(all, 0.99),
		cpu: float64(cpu) / float64(time.Microsecond) / float64(len(all)),
	}, nil
}

// comparison pools the rounds of the broker and of its baseline; pair i
// of the two slices ran next to each other. Its settings' zero values
// are the in-process harness's: harnessRounds rounds of harnessRound
// after a warm-up of harnessWarmup, CPU from processCPU.
type comparison struct {
	broker, base []round

	rounds         int           // interleaved rounds per side
	length, warmup time.Duration // of a round, and of the warm-up on each side
	// brokerCPU and baseCPU are the clocks each side's rounds are
	// charged by: the server processes' own when they run apart.
	brokerCPU, baseCPU cpuClock
}

// compare runs cmp.rounds interleaved rounds of c callers on each side,
// after an unrecorded warm-up of each, and adds them to cmp.
func (cmp *comparison) compare(b *testing.B, c int, broker, base func(context.Context) error) {
	b.Helper()
	rounds, length, warmup := cmp.rounds, cmp.length, cmp.warmup
	if rounds == 0 {
		rounds = harnessRounds
	}
	if length == 0 {
		length = harnessRound
	}
	if warmup == 0 {
		warmup = harnessWarmup
	}
	if _, err := runRound(c, warmup, broker, cmp.brokerCPU); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	if _, err := runRound(c, warmup, base, cmp.baseCPU); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	err := interleave(rounds, func(_ int, isBroker bool) error {
		if isBroker {
			r, err := runRound(c, length, broker, cmp.brokerCPU)
			cmp.broker = append(cmp.broker, r)
			return err
		}
		r, err := runRound(c, length, base, cmp.baseCPU)
		cmp.base = append(cmp.base, r)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

// interleave runs rounds rounds of the broker's side and of its
// baseline's, back to back, the broker first in even rounds (counting
// from 0) and the baseline first in odd ones, so that drift on the
// machine hits both alike; side runs round r of one side. It stops at
// the first error, which names the round.
func interleave(rounds int, side func(r int, isBroker bool) error) error {
	for r := range rounds {
		first := r%2 == 0
		for _, isBroker := range []bool{first, !first} {
			if err := side(r, isBroker); err != nil {
				return fmt.Errorf("round %d: %w", r+1, err)
			}
		}
	}
	return nil
}

// median returns the median (nearest rank) of v, which must not be empty;
// v is left as it was.
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return percentile(s, 0.5)
}

// reportRatios reports the median of the per-round ratios broker[i] ÷
// base[i] as metric name, and the lowest and the highest of them as
// name-min and name-max.
func reportRatios(b *testing.B, name string, broker, base []float64) {
	ratios := make([]float64, len(broker))
	for i := range ratios {
		ratios[i] = broker[i] / base[i]
	}
	b.ReportMetric(median(ratios), name)
	b.ReportMetric(slices.Min(ratios), name+"-min")
	b.ReportMetric(slices.Max(ratios), name+"-max")
}

// report reports the medians over the rounds: throughput in unit ("calls"
// or "req") per second on each side, their ratio (the median of the
// per-pair ratios, broker ÷ baseline) with the lowest and highest of
// those ratios, the same for CPU per call, and the latency percentiles.
// base names the baseline in the metrics.
func (cmp *comparison) report(b *testing.B, unit, base string) {
	// field returns f of every round of rs.
	field := func(rs []round, f func(round) float64) []float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return v
	}
	perSec := func(r round) float64 { return r.perSec }
	cpu := func(r round) float64 { return r.cpu }
	p50 := func(r round) float64 { return r.p50 }
	p99 := func(r round) float64 { return r.p99 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(field(cmp.broker, perSec)), "broker-"+unit+"/s")
	b.ReportMetric(median(field(cmp.base, perSec)), base+"-"+unit+"/s")
	reportRatios(b, "ratio", field(cmp.broker, perSec), field(cmp.base, perSec))
	b.ReportMetric(median(field(cmp.broker, cpu)), "broker-cpu-µs/call")
	b.ReportMetric(median(field(cmp.base, cpu)), base+"-cpu-µs/call")
	reportRatios(b, "cpu-ratio", field(cmp.broker, cpu), field(cmp.base, cpu))
	b.ReportMetric(median(field(cmp.broker, p50)), "broker-p50-µs")
	b.ReportMetric(median(field(cmp.broker, p99)), "broker-p99-µs")
	b.ReportMetric(median(field(cmp.base, p50)), base+"-p50-µs")
	b.ReportMetric(median(field(cmp.base, p99)), base+"-p99-µs")
}

// echoServer is the gRPC baseline: a TokenBrokerService whose GetToken
// returns a fixed response.
type echoServer struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp *tokenbrokerv1.GetTokenResponse
}

// GetToken implements tokenbrokerv1.TokenBrokerServiceServer.
func (s *echoServer) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return s.resp, nil
}

// startEcho serves an echoServer answering resp on a bare grpc.Server (no
// interceptors, no options) on loopback TCP until the benchmark ends, and
// returns its address.
func startEcho(b *testing.B, resp *tokenbrokerv1.GetTokenResponse) string {
	b.Helper()
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, &echoServer{resp: resp})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	b.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			b.Errorf("echo Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// BenchmarkGetTokenVsEcho: GetToken for a cached token (a broker-held
// client, open authentication as in -dev) against a bare grpc-go unary
// echo returning the GetTokenResponse the broker returned (same message,
// same size), with callers=1, 16 and 64 concurrent callers sharing one
// client connection per server (same dial options). Metrics, medians over
// the rounds: broker-calls/s and echo-calls/s, ratio (broker ÷ echo; the
// goal is at least 0.9), and each side's p50 and p99 latency in µs.
func BenchmarkGetTokenVsEcho(b *testing.B) {
	if testing.Short() {
		b.Skip("seconds of load over loopback")
	}
	issuer, tokenURL := startIssuer(b, nil)
	addr, _ := serveApp(b, stackConfig(tokenURL), Keys{}, discardLogger())
	broker := dialReady(b, addr)
	req := &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}
	ctx, cancel := context.WithTimeout(context.Background(), harnessWait)
	defer cancel()
	resp, err := broker.GetToken(ctx, req)
	if err != nil {
		b.Fatal(err)
	}
	echo := dialReady(b, startEcho(b, resp))
	callBroker := func(ctx context.Context) error {
		_, err := broker.GetToken(ctx, req)
		return err
	}
	callEcho := func(ctx context.Context) error {
		_, err := echo.GetToken(ctx, req)
		return err
	}
	for _, c := range harnessCallers {
		b.Run(fmt.Sprintf("callers=%d", c), func(b *testing.B) {
			var cmp comparison
			for b.Loop() {
				cmp.compare(b, c, callBroker, callEcho)
			}
			cmp.report(b, "calls", "echo")
		})
	}
	// Every call was a cache hit.
	if got := issuer.Requests(); got != 1 {
		b.Errorf("got %d upstream requests, want 1", got)
	}
}

// harnessTokenForm is the body of the HTTP comparisons' token requests.
var harnessTokenForm = url.Values{"grant_type": {"client_credentials"}, "scope": {"api/read"}}.Encode()

// postToken asks the token endpoint at u for the pass-through client's
// token (client_secret_basic) and returns the response's body and
// headers; any status but 200 is an error.
func postToken(ctx context.Context, hc *http.Client, u string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(harnessTokenForm))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(passID, passSecret)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("status %d, want %d", resp.StatusCode, http.StatusOK)
	}
	return body, resp.Header, nil
}

// BenchmarkHTTPVsBare: the drop-in token endpoint (POST /oauth2/token,
// client_secret_basic, a pass-through client, a cached token) against a
// bare net/http handler writing the broker's response body with its
// headers, with 1, 16 and 64 concurrent callers sharing one http.Client
// per concurrency (keep-alive, MaxIdleConnsPerHost = callers). Metrics,
// medians over the rounds: broker-req/s and bare-req/s, ratio (broker ÷
// bare), and each side's p50 and p99 latency in µs.
func BenchmarkHTTPVsBare(b *testing.B) {
	if testing.Short() {
		b.Skip("seconds of load over loopback")
	}
	issuer, tokenURL := startIssuer(b, nil)
	_, httpAddr, _ := serveAppHTTP(b, stackConfig(tokenURL), Keys{}, discardLogger())
	brokerURL := "http://" + httpAddr + "/oauth2/token"

	ctx, cancel := context.WithTimeout(context.Background(), harnessWait)
	defer cancel()
	body, header, err := postToken(ctx, http.DefaultClient, brokerURL)
	if err != nil {
		b.Fatalf("the broker's token endpoint: %v", err)
	}
	header.Del("Date") // net/http sets its own
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		for k, v := range header {
			h[k] = v
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	}))
	b.Cleanup(bare.Close)
	if got, _, err := postToken(ctx, http.DefaultClient, bare.URL); err != nil || string(got) != string(body) {
		b.Fatalf("the bare handler: got another body or %v", err)
	}

	for _, c := range harnessCallers {
		b.Run(fmt.Sprintf("callers=%d", c), func(b *testing.B) {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.MaxIdleConnsPerHost = c
			tr.MaxIdleConns = 0 // no limit across the two hosts
			b.Cleanup(tr.CloseIdleConnections)
			hc := &http.Client{Transport: tr}
			callBroker := func(ctx context.Context) error {
				_, _, err := postToken(ctx, hc, brokerURL)
				return err
			}
			callBare := func(ctx context.Context) error {
				_, _, err := postToken(ctx, hc, bare.URL)
				return err
			}
			var cmp comparison
			for b.Loop() {
				cmp.compare(b, c, callBroker, callBare)
			}
			cmp.report(b, "req", "bare")
		})
	}
	if got := issuer.Requests(); got != 1 {
		b.Errorf("got %d upstream requests, want 1", got)
	}
}

// The single-broker amplification scenario: ampScenario's load on one
// broker without Redis.
const (
	harnessAmpKeys    = 16
	harnessAmpCallers = 32
)

// BenchmarkAmplification: promise 1 on a single broker without Redis:
// harnessAmpKeys keys, cold at the start, asked for by harnessAmpCallers
// callers (GetToken in a loop, each call for a random key) and watched by
// one stream each, over ampWindows refresh windows of ampWindow (tokens
// living ampLifetime, refreshed at ampFraction with no jitter); the
// scenario itself is runAmplification's (fleet_bench_test.go). Metrics:
// upstream/key/window (upstream requests ÷ (keys × windows); the goal is
// 1.00), the raw upstream-reqs and ideal-reqs, calls/s, and
// min-pushes/watcher (ampWindows − 1 when every refresh reached every
// watcher).
func BenchmarkAmplification(b *testing.B) {
	if testing.Short() {
		b.Skip("seconds of load over loopback")
	}
	var sum ampResult
	runs := 0
	for b.Loop() {
		sum.add(runAmplification(b, startSingle(b), ampScenario{keys: harnessAmpKeys, callers: harnessAmpCallers, watchers: 1}))
		runs++
	}
	per := func(v int64) float64 { return float64(v) / float64(runs) }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(sum.requests)/float64(runs*harnessAmpKeys*ampWindows), "upstream/key/window")
	b.ReportMetric(per(sum.requests), "upstream-reqs")
	b.ReportMetric(harnessAmpKeys*ampWindows, "ideal-reqs")
	b.ReportMetric(float64(sum.calls)/sum.elapsed.Seconds(), "calls/s")
	b.ReportMetric(per(sum.minPushes), "min-pushes/watcher")
}

// startSingle starts one broker without Redis, configured with ampConfig,
// and its own token endpoint, as a fleet of one.
func startSingle(b *testing.B) *testFleet {
	b.Helper()
	issuer, tokenURL := startIssuer(b, nil)
	cfg := stackConfig(tokenURL)
	ampConfig(&cfg)
	addr, _ := serveApp(b, cfg, Keys{}, discardLogger())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &testFleet{issuer: issuer, replicas: []replica{{
		client: tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		admin:  tokenbrokerv1.NewAdminServiceClient(conn),
	}}}
}

// The memory scenario.
const (
	memKeys    = 10_000
	memFetches = 16 // concurrent GetToken calls filling the cache
)

// BenchmarkMemoryPerCachedToken: the live heap (after GC) that memKeys
// cached tokens add to the whole product, divided by memKeys. The keys
// are one broker-held client with memKeys distinct audiences, each
// fetched once; the connections, the cache's fixed structures and one
// first key are in place before the first measurement. The token
// endpoint keeps nothing per token, and the clients keep no response, so
// the difference is the broker's: the sealed record in the cache with
// ristretto's bookkeeping, and the broker's entry for a key in use.
// Metrics: B/cached-token; cost-B/cached-token, what the cache charges
// against cache.max_cost per token (the sealed record and a fixed
// overhead); token-B, the size of one access token. The run checks that
// every key was fetched once and is still cached.
func BenchmarkMemoryPerCachedToken(b *testing.B) {
	if testing.Short() {
		b.Skip("ten thousand token requests")
	}
	for b.Loop() {
		measureCachedTokens(b)
	}
}

// measureCachedTokens runs the scenario of BenchmarkMemoryPerCachedToken
// once, on a product of its own.
func measureCachedTokens(b *testing.B) {
	b.Helper()
	issuer, tokenURL := startIssuer(b, nil)
	cfg := stackConfig(tokenURL)
	cfg.Providers[0].RateLimit, cfg.Providers[0].Burst = 1e6, 1e6
	addr, _ := serveApp(b, cfg, Keys{}, discardLogger())
	client := dialReady(b, addr)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	admin := tokenbrokerv1.NewAdminServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*harnessWait)
	defer cancel()

	request := func(k int) *tokenbrokerv1.GetTokenRequest {
		sel := heldSelector("api/read")
		sel.Audience = fmt.Sprintf("https://api-%05d.example.com", k)
		return &tokenbrokerv1.GetTokenRequest{Selector: sel}
	}
	// fetchAll asks for every key once, memFetches at a time.
	fetchAll := func() error {
		keys := make(chan int)
		errc := make(chan error, 1)
		var wg sync.WaitGroup
		for range memFetches {
			wg.Go(func() {
				for k := range keys {
					if _, err := client.GetToken(ctx, request(k)); err != nil {
						select {
						case errc <- fmt.Errorf("key %d: %w", k, err):
						default:
						}
					}
				}
			})
		}
		for k := range memKeys {
			keys <- k
		}
		close(keys)
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	}
	stats := func() *tokenbrokerv1.GetStatsResponse {
		st, err := admin.GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
		if err != nil {
			b.Fatalf("GetStats: %v", err)
		}
		return st
	}

	// The first key, outside the count, opens the connections (gRPC and
	// the broker's to the token endpoint) and warms every path.
	first, err := client.GetToken(ctx, request(-1))
	if err != nil {
		b.Fatal(err)
	}
	st0 := stats()
	runtime.GC() // and memInUse's own: pooled buffers leave in two
	heap0, _ := memInUse()
	if err := fetchAll(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	heap1, _ := memInUse()
	st1 := stats()

	// Every key was fetched once and is still cached: asking again
	// costs no upstream request.
	if err := fetchAll(); err != nil {
		b.Fatal(err)
	}
	if got, want := issuer.Requests(), int64(1+memKeys); got != want {
		b.Fatalf("got %d upstream requests, want %d (one per key)", got, want)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(int64(heap1)-int64(heap0))/memKeys, "B/cached-token")
	b.ReportMetric(float64(st1.GetCostUsed()-st0.GetCostUsed())/memKeys, "cost-B/cached-token")
	b.ReportMetric(float64(len(first.GetToken().GetAccessToken())), "token-B")
}
