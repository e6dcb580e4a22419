package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// The fan-out benchmarks measure how long one new token takes to reach N
// WatchToken streams of one key over loopback TCP, and what an idle stream
// costs in memory; BenchmarkWatchFanoutBaseline measures the same with a
// bare grpc-go server, in the same run, so the broker's figures can be
// reported as ratios.
//
// Each op is one refresh: the token is replaced and the op ends when
// every stream has received it. Custom metrics:
//
//   - p50-ms, p99-ms: the time from the new token's issued_at to its
//     arrival at a stream (the client's Recv returning), over every
//     stream and every refresh. For the broker, issued_at is when it sent
//     the upstream request, so the figure includes the token endpoint's
//     round trip; for the baseline it is when the payload was published.
//   - last-ms: for each refresh, the same time to the last stream to
//     receive it; the median over refreshes. last-p99-ms is the
//     nearest-rank p99 over refreshes of that time: the slowest refresh
//     when there are fewer than 100.
//   - B/watcher: heap (after GC) plus goroutine stacks added by opening
//     the N streams and receiving their first message, divided by N. The
//     clients run in the same process, so this counts the client's side
//     of every stream too (its stream state and the goroutine grpc-go
//     keeps per client stream): an upper bound for the server's memory
//     per idle watcher. heapB/watcher is the heap part alone.
//   - msg-B: the size of one refresh message, to show both servers push
//     the same payload.
//
// The clients share the process's two cores with the server, so their
// own scheduling delays are part of every figure, for the broker and the
// baseline alike.

// fanoutWatchers are the sub-benchmarks' stream counts.
var fanoutWatchers = []int{1_000, 10_000}

// fanoutWait bounds every wait of the fan-out benchmarks: opening the
// streams, one refresh's deliveries, the streams' end.
const fanoutWait = 60 * time.Second

// fanoutOpeners is how many goroutines open the streams.
const fanoutOpeners = 64

// The broker's fan-out trigger: Broker.Invalidate of the key (what
// tokenbrokerctl invalidate does over the admin API), which drops the
// token and refetches it at once because the key has watchers; the new
// token reaches them through the same install-and-notify path as a
// scheduled refresh, encoded once for all of them, as EVENT_INVALIDATED.
// (A GetToken with a min_ttl near the token's whole life used to be the
// trigger; the min_ttl rule now refuses more than lifetime − min_remaining.)
// Tokens live 100 s and are refreshed at 90%, so the scheduler never adds
// a refresh of its own during a run (verify counts the upstream
// requests).
const (
	fanoutLifetime = 100 * time.Second
	fanoutFraction = 0.9
)

// The token endpoint's client in the fan-out benchmarks.
const (
	fanoutClientID = "fanout-client"
	fanoutSecret   = "fanout-secret-value"
	fanoutScope    = "api/read"
)

func fanoutSelector() *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: []string{fanoutScope}}
}

// BenchmarkWatchFanout: the whole product (gRPC over loopback TCP, the
// devissuer token endpoint over HTTP) pushing each new token of one key to
// N watchers.
func BenchmarkWatchFanout(b *testing.B) {
	if testing.Short() {
		b.Skip("thousands of streams over loopback")
	}
	for _, n := range fanoutWatchers {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			measureFanout(b, n, startFanoutBroker(b, n))
		})
	}
}

// BenchmarkWatchFanoutBaseline: a bare grpc-go server (no interceptors,
// no broker) pushing a payload of the same size to N streams of the same
// method, on the same number of connections.
func BenchmarkWatchFanoutBaseline(b *testing.B) {
	if testing.Short() {
		b.Skip("thousands of streams over loopback")
	}
	for _, n := range fanoutWatchers {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			measureFanout(b, n, startFanoutBaseline(b))
		})
	}
}

// fanoutSource is a server under measurement and the way to make it push
// a new token.
type fanoutSource struct {
	addr string
	// perConn is the server's limit of concurrent streams per connection.
	perConn int
	req     *tokenbrokerv1.WatchTokenRequest
	// prepare runs, untimed, before each refresh.
	prepare func(ctx context.Context) error
	// refresh makes the server push a new token and returns its
	// issued_at, or the zero time when it cannot know it: the deliveries
	// then tell it (every stream must report the same one, later than the
	// previous token's).
	refresh func(ctx context.Context) (time.Time, error)
	// event is the event every pushed token arrives as.
	event tokenbrokerv1.WatchTokenResponse_Event
	// verify checks the server after the given number of refreshes.
	verify func(refreshes int) error
}

// delivery is one message as a stream received it.
type delivery struct {
	event  tokenbrokerv1.WatchTokenResponse_Event
	issued time.Time
	at     time.Time
}

// measureFanout opens n streams to src, measures their memory, then
// drives one refresh per op and reports the metrics described above.
func measureFanout(b *testing.B, n int, src fanoutSource) {
	conns := make([]tokenbrokerv1.TokenBrokerServiceClient, (n+src.perConn-1)/src.perConn)
	for i := range conns {
		conns[i] = dialReady(b, src.addr)
	}
	sctx, cancelStreams := context.WithCancel(context.Background())
	defer cancelStreams()
	streams := make([]grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse], n)
	recs := make([][]delivery, n)

	// Open the streams and receive their first message.
	heap0, stack0 := memInUse()
	var opening sync.WaitGroup
	var nextStream atomic.Int64
	openErr := make(chan error, 1)
	for range fanoutOpeners {
		opening.Go(func() {
			for {
				i := int(nextStream.Add(1)) - 1
				if i >= n {
					return
				}
				if err := openStream(sctx, conns[i%len(conns)], src.req, &streams[i]); err != nil {
					select {
					case openErr <- fmt.Errorf("stream %d: %w", i, err):
					default:
					}
					return
				}
			}
		})
	}
	if !waitTimeout(&opening, fanoutWait) {
		b.Fatalf("opening %d streams took more than %v", n, fanoutWait)
	}
	select {
	case err := <-openErr:
		b.Fatal(err)
	default:
	}
	heap1, stack1 := memInUse()

	// One reader per stream records each message's arrival; the one that
	// completes a refresh's deliveries wakes the benchmark.
	var delivered, want atomic.Int64
	arrived := make(chan struct{}, 1)
	readErr := make(chan error, 1)
	var last atomic.Pointer[tokenbrokerv1.WatchTokenResponse]
	var readers sync.WaitGroup
	defer func() {
		cancelStreams()
		if !waitTimeout(&readers, fanoutWait) {
			b.Errorf("stream readers still running %v after the streams were cancelled", fanoutWait)
		}
	}()
	for i, st := range streams {
		readers.Go(func() {
			for {
				msg, err := st.Recv()
				at := time.Now()
				if err != nil {
					if sctx.Err() == nil {
						select {
						case readErr <- fmt.Errorf("stream %d: %w", i, err):
						default:
						}
					}
					return
				}
				recs[i] = append(recs[i], delivery{event: msg.GetEvent(), issued: msg.GetToken().GetIssuedAt().AsTime(), at: at})
				if i == 0 {
					last.Store(msg)
				}
				if delivered.Add(1) >= want.Load() {
					select {
					case arrived <- struct{}{}:
					default:
					}
				}
			}
		})
	}

	var issued []time.Time
	for b.Loop() {
		b.StopTimer()
		pctx, cancel := context.WithTimeout(context.Background(), fanoutWait)
		err := src.prepare(pctx)
		cancel()
		if err != nil {
			b.Fatalf("before refresh %d: %v", len(issued)+1, err)
		}
		target := int64(n * (len(issued) + 1))
		want.Store(target)
		select { // a stale wake-up
		case <-arrived:
		default:
		}
		b.StartTimer()

		rctx, cancel := context.WithTimeout(context.Background(), fanoutWait)
		at, err := src.refresh(rctx)
		cancel()
		if err != nil {
			b.Fatalf("refresh %d: %v", len(issued)+1, err)
		}
		timeout := time.NewTimer(fanoutWait)
		for delivered.Load() < target {
			select {
			case <-arrived:
			case err := <-readErr:
				b.Fatal(err)
			case <-timeout.C:
				b.Fatalf("refresh %d: %d of %d deliveries after %v", len(issued)+1, delivered.Load()-target+int64(n), n, fanoutWait)
			}
		}
		timeout.Stop()
		issued = append(issued, at)
	}
	cancelStreams()
	if !waitTimeout(&readers, fanoutWait) {
		b.Fatalf("stream readers still running %v after the streams were cancelled", fanoutWait)
	}
	select {
	case err := <-readErr:
		b.Fatal(err)
	default:
	}

	// Every stream must have received every new token, once, in turn.
	refreshes := len(issued)
	for k := range issued {
		if !issued[k].IsZero() || len(recs) == 0 || len(recs[0]) <= k {
			continue
		}
		issued[k] = recs[0][k].issued
		if k > 0 && !issued[k].After(issued[k-1]) {
			b.Fatalf("refresh %d: the token pushed was issued at %v, not after the previous one (%v)", k+1, issued[k], issued[k-1])
		}
	}
	all := make([]float64, 0, n*refreshes)
	lastPerRefresh := make([]float64, refreshes)
	for i, rs := range recs {
		if len(rs) != refreshes {
			b.Fatalf("stream %d received %d messages after its first, want %d (one per refresh)", i, len(rs), refreshes)
		}
		for k, d := range rs {
			if d.event != src.event || !d.issued.Equal(issued[k]) {
				b.Fatalf("stream %d message %d: got %v issued at %v, want %v issued at %v",
					i, k+1, d.event, d.issued, src.event, issued[k])
			}
			ms := float64(d.at.Sub(d.issued)) / float64(time.Millisecond)
			all = append(all, ms)
			lastPerRefresh[k] = max(lastPerRefresh[k], ms)
		}
	}
	if err := src.verify(refreshes); err != nil {
		b.Fatal(err)
	}
	slices.Sort(all)
	slices.Sort(lastPerRefresh)
	b.ReportMetric(percentile(all, 0.50), "p50-ms")
	b.ReportMetric(percentile(all, 0.99), "p99-ms")
	b.ReportMetric(percentile(lastPerRefresh, 0.50), "last-ms")
	b.ReportMetric(percentile(lastPerRefresh, 0.99), "last-p99-ms")
	heapDelta := float64(int64(heap1) - int64(heap0))
	stackDelta := float64(int64(stack1) - int64(stack0))
	b.ReportMetric((heapDelta+stackDelta)/float64(n), "B/watcher")
	b.ReportMetric(heapDelta/float64(n), "heapB/watcher")
	if m := last.Load(); m != nil {
		b.ReportMetric(float64(proto.Size(m)), "msg-B")
	}
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

// fanoutIssuer starts a devissuer token endpoint over HTTP that knows the
// fan-out client, and returns its token URL.
func fanoutIssuer(b *testing.B) (*devissuer.Issuer, string) {
	b.Helper()
	issuer, err := devissuer.New(devissuer.Config{
		Lifetime: fanoutLifetime,
		Clients:  []devissuer.Client{{ID: fanoutClientID, Secret: fanoutSecret, Scopes: []string{fanoutScope}}},
		Logger:   slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(issuer.Handler())
	b.Cleanup(hs.Close)
	return issuer, hs.URL + devissuer.TokenPath
}

// startFanoutBroker starts the whole product, configured to let one caller
// open 2n streams at once, and returns it as a fanoutSource whose refresh
// is the invalidation trigger described at fanoutFraction.
func startFanoutBroker(b *testing.B, n int) fanoutSource {
	b.Helper()
	issuer, tokenURL := fanoutIssuer(b)
	cfg := config.Default()
	cfg.Auth.AllowUnauthenticated = true
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", tokenURL, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: "held", Provider: "test", ClientID: fanoutClientID, Secret: secret.String(fanoutSecret)}}
	cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = fanoutFraction, 0
	cfg.Cache.MinRemaining = config.Duration(time.Second)
	cfg.Server.MaxWatchesPerCaller = 2 * n
	cfg.Server.WatchOpensPerSecond, cfg.Server.WatchOpenBurst = 1e6, 2*n
	a, err := New(cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l, nil, nil) }()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Errorf("Serve: %v", err)
		}
	})

	// The first token, fetched before the streams open.
	trigger := dialReady(b, l.Addr().String())
	gctx, gcancel := context.WithTimeout(context.Background(), fanoutWait)
	defer gcancel()
	resp, err := trigger.GetToken(gctx, &tokenbrokerv1.GetTokenRequest{Selector: fanoutSelector()})
	if err != nil {
		b.Fatal(err)
	}
	keyID := resp.GetToken().GetKeyId()
	return fanoutSource{
		addr:    l.Addr().String(),
		perConn: int(cfg.Server.MaxConcurrentStreams),
		req:     &tokenbrokerv1.WatchTokenRequest{Selector: fanoutSelector()},
		prepare: func(context.Context) error { return nil },
		refresh: func(ctx context.Context) (time.Time, error) {
			n, err := a.broker.Invalidate(ctx, broker.InvalidateSelector{KeyID: keyID})
			if err != nil {
				return time.Time{}, err
			}
			if n != 1 {
				return time.Time{}, fmt.Errorf("invalidated %d keys, want 1", n)
			}
			return time.Time{}, nil // the deliveries tell the new token's issued_at
		},
		event: tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
		verify: func(refreshes int) error {
			// One upstream request for the first token, one per refresh.
			if got, want := issuer.Requests(), int64(1+refreshes); got != want {
				return fmt.Errorf("got %d upstream requests, want %d", got, want)
			}
			return nil
		},
	}
}

// bareWatchServer is the baseline: a TokenBrokerService whose WatchToken
// sends the current message, then the new one each time it is published.
type bareWatchServer struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	mu      sync.Mutex
	msg     *tokenbrokerv1.WatchTokenResponse
	changed chan struct{} // closed when msg is replaced
}

// WatchToken implements tokenbrokerv1.TokenBrokerServiceServer.
func (s *bareWatchServer) WatchToken(_ *tokenbrokerv1.WatchTokenRequest, stream grpc.ServerStreamingServer[tokenbrokerv1.WatchTokenResponse]) error {
	s.mu.Lock()
	msg, changed := s.msg, s.changed
	s.mu.Unlock()
	for {
		if err := stream.Send(msg); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-changed:
		}
		s.mu.Lock()
		msg, changed = s.msg, s.changed
		s.mu.Unlock()
	}
}

// publish makes msg the message every stream sends next.
func (s *bareWatchServer) publish(msg *tokenbrokerv1.WatchTokenResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msg = msg
	close(s.changed)
	s.changed = make(chan struct{})
}

// startFanoutBaseline starts the baseline server, with the broker's
// per-connection stream limit, and returns it as a fanoutSource. Its
// payload is a real devissuer token for the fan-out client, in the
// message the broker would send.
func startFanoutBaseline(b *testing.B) fanoutSource {
	b.Helper()
	_, tokenURL := fanoutIssuer(b)
	ctx, cancel := context.WithTimeout(context.Background(), fanoutWait)
	defer cancel()
	cc := clientcredentials.Config{ClientID: fanoutClientID, ClientSecret: fanoutSecret, TokenURL: tokenURL, Scopes: []string{fanoutScope}}
	tok, err := cc.Token(ctx)
	if err != nil {
		b.Fatal(err)
	}
	message := func(event tokenbrokerv1.WatchTokenResponse_Event, issued time.Time) *tokenbrokerv1.WatchTokenResponse {
		return &tokenbrokerv1.WatchTokenResponse{Event: event, Token: &tokenbrokerv1.Token{
			AccessToken: tok.AccessToken,
			TokenType:   tok.TokenType,
			Scopes:      []string{fanoutScope},
			IssuedAt:    timestamppb.New(issued),
			ExpiresAt:   timestamppb.New(issued.Add(fanoutLifetime)),
			RefreshAt:   timestamppb.New(issued.Add(time.Duration(fanoutFraction * float64(fanoutLifetime)))),
			KeyId:       "0123456789abcdef",
		}}
	}

	perConn := config.Default().Server.MaxConcurrentStreams
	srv := &bareWatchServer{msg: message(tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL, time.Now()), changed: make(chan struct{})}
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
	return fanoutSource{
		addr:    l.Addr().String(),
		perConn: int(perConn),
		req:     &tokenbrokerv1.WatchTokenRequest{Selector: fanoutSelector()},
		prepare: func(context.Context) error { return nil },
		refresh: func(context.Context) (time.Time, error) {
			msg := message(tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED, time.Now())
			srv.publish(msg)
			return msg.GetToken().GetIssuedAt().AsTime(), nil
		},
		event:  tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
		verify: func(int) error { return nil },
	}
}
