package app

import (
	"context"
	"fmt"
	"math"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/benchserver/barewatch"
)

// The fan-out benchmarks and their shared pieces. The comparison itself
// (what is measured, how, and the metrics) is described in
// proc_fanout_bench_test.go, beside BenchmarkProcWatchFanoutVsBare;
// BenchmarkWatchFanout is its in-process counterpart.

// fanoutWatchers are the sub-benchmarks' stream counts.
var fanoutWatchers = []int{1_000, 10_000}

// fanoutWait bounds every wait of the fan-out benchmarks: opening the
// streams, one refresh's deliveries, the streams' end.
const fanoutWait = 60 * time.Second

// fanoutOpeners is how many goroutines open the streams.
const fanoutOpeners = 64

// BenchmarkSDSFanout's tokens live fanoutLifetime and are refreshed at
// fanoutFraction of it, so the scheduler adds no refresh of its own
// during a run.
const (
	fanoutLifetime = 100 * time.Second
	fanoutFraction = 0.9
)

// The token endpoint's client in BenchmarkSDSFanout.
const (
	fanoutClientID = "fanout-client"
	fanoutSecret   = "fanout-secret-value"
)

// BenchmarkWatchFanout: the fan-out comparison of
// BenchmarkProcWatchFanoutVsBare with both servers in this process,
// beside the streams' clients: the whole product (App.Serve on loopback
// TCP, the stack configuration: open authentication and admin, with the
// per-caller watch limits raised so that every stream may open at once;
// the devissuer token endpoint over HTTP, one-hour tokens) against
// barewatch on a bare grpc.Server with the broker's stream limit per
// connection. Each broker push is an InvalidateTokens of the watched key
// over the admin API (invalidatePush); each bare push a Publish. It is
// there to profile the broker's fan-out (-cpuprofile, -memprofile, which
// cover both servers and the clients); the README quotes the
// separate-process figures. Metrics as BenchmarkProcWatchFanoutVsBare's,
// except memory: broker-B/stream and bare-B/stream are the growth of
// this process's live heap (after a GC) and goroutine stacks while that
// side's streams open, divided by n, which counts the clients' side of
// every stream as well as the server's (alike for both sides).
func BenchmarkWatchFanout(b *testing.B) {
	if testing.Short() {
		b.Skip("thousands of streams over loopback")
	}
	req := &tokenbrokerv1.WatchTokenRequest{Selector: heldSelector("api/read")}
	for _, n := range fanoutWatchers {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			broker, first := startFanoutBroker(b, n, req)
			compareFanout(b, n, req, "", broker, startFanoutBare(b, first))
		})
	}
}

// heapAndStacks is the in-process memory clock: the live heap and the
// goroutine stacks after a GC (memInUse), in bytes.
func heapAndStacks() (int64, error) {
	heap, stacks := memInUse()
	return int64(heap + stacks), nil
}

// openStream opens one WatchToken stream and receives its EVENT_INITIAL.
func openStream(ctx context.Context, c tokenbrokerv1.TokenBrokerServiceClient, req *tokenbrokerv1.WatchTokenRequest, out *grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse]) error {
	st, err := c.WatchToken(ctx, req)
	if err != nil {
		return err
	}
	msg, err := st.Recv()
	if err != nil {
		return err
	}
	if got, want := msg.GetEvent(), tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL; got != want {
		return fmt.Errorf("first message: got %v, want %v", got, want)
	}
	*out = st
	return nil
}

// percentile returns the nearest-rank p-quantile of sorted, which must not
// be empty.
func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// memInUse returns the live heap and the goroutine stacks after a GC.
func memInUse() (heap, stacks uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// waitTimeout waits for wg for at most d and reports whether it finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// dialReady opens a client connection to addr and waits until it is
// connected, so that its set-up is not counted as the streams' memory.
func dialReady(b *testing.B, addr string) tokenbrokerv1.TokenBrokerServiceClient {
	b.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), fanoutWait)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			b.Fatalf("connecting to %s: still %v after %v", addr, s, fanoutWait)
		}
	}
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn)
}

// startFanoutBroker serves the whole product in this process, configured
// to let one caller hold 2n streams and open them all at once, and
// returns it as the broker's side of BenchmarkWatchFanout with the first
// message of a stream of req.
func startFanoutBroker(b *testing.B, n int, req *tokenbrokerv1.WatchTokenRequest) (fanoutSide, *tokenbrokerv1.WatchTokenResponse) {
	b.Helper()
	issuer, tokenURL := startIssuer(b, nil)
	cfg := stackConfig(tokenURL)
	cfg.Server.MaxWatchesPerCaller = 2 * n
	cfg.Server.WatchOpensPerSecond, cfg.Server.WatchOpenBurst = 1e6, 2*n
	addr, _ := serveApp(b, cfg, Keys{}, discardLogger())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	first := firstWatchMessage(b, context.Background(), tokenbrokerv1.NewTokenBrokerServiceClient(conn), req)
	return fanoutSide{
		name:    "broker",
		addr:    addr,
		perConn: int(cfg.Server.MaxConcurrentStreams),
		push:    invalidatePush(tokenbrokerv1.NewAdminServiceClient(conn), first.GetToken().GetKeyId(), ""),
		event:   tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
		mem:     heapAndStacks,
		verify:  upstreamCount(issuer.Requests),
	}, first
}

// startFanoutBare serves barewatch with first, the broker's first
// message, on a bare grpc.Server with the broker's default stream limit
// per connection (no interceptors, no other option) until the benchmark
// ends, and returns it as the bare side of BenchmarkWatchFanout.
func startFanoutBare(b *testing.B, first *tokenbrokerv1.WatchTokenResponse) fanoutSide {
	b.Helper()
	perConn := stackConfig("").Server.MaxConcurrentStreams
	srv := barewatch.New(first)
	gs := grpc.NewServer(grpc.MaxConcurrentStreams(perConn))
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	b.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			b.Errorf("Serve: %v", err)
		}
	})
	return fanoutSide{
		name:    "bare",
		addr:    l.Addr().String(),
		perConn: int(perConn),
		push: func(context.Context) error {
			srv.Publish(time.Now())
			return nil
		},
		event: tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
		mem:   heapAndStacks,
	}
}
