package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// The fan-out comparison measures how long one new token takes to reach
// n WatchToken streams of one key, and what an open stream costs in
// memory, for the broker and for a bare grpc-go broadcast of the same
// message (package barewatch: a plain stream.Send per stream, so the
// message is marshaled once for every stream), side by side in one run.
// BenchmarkProcWatchFanoutVsBare runs each server in a process of its own
// (the figures the README quotes); BenchmarkWatchFanout (bench_test.go)
// is its in-process counterpart, for profiling the broker's fan-out with
// -cpuprofile and -memprofile.
//
// For each n (fanoutWatchers), n streams are opened to each server, on
// ceil(n / server.max_concurrent_streams) client connections per server
// (the bare server has the broker's default limit), from this process,
// with the same request and metadata. Then each side pushes one
// unrecorded warm-up token (its delivery times are reported apart, as
// first-p99-ms: the first push after the streams opened), and
// fanoutRounds interleaved rounds follow (the order alternating between
// rounds, as the throughput comparisons' rounds: interleave), each
// pushing fanoutPushes new tokens on one side, one at a time, each
// waited for until every stream has it.
//
// A delivery's latency is the client's arrival time (its Recv returning)
// minus the pushed token's issued_at. For the broker issued_at is when it
// sent its upstream request, so the broker's figures include the round
// trip to the token endpoint (the devissuer in this process), which the
// bare server does not have; for the bare server it is the moment it
// published the message. Neither includes the trigger's own path (the
// admin RPC; the line on the bare server's stdin). Per side and round:
// p50 and p99 over every delivery of the round, and last, the median over
// the round's pushes of the time to the last stream. Metrics: the median
// over the rounds of the per-round ratios broker ÷ bare (p50-ratio,
// p99-ratio, last-ratio) with the lowest and highest of them (-min,
// -max); each side's medians over the rounds (broker-p50-ms,
// bare-p99-ms, ...); each side's p99 of the warm-up push
// (broker-first-p99-ms, bare-first-p99-ms); the size of the last message
// a stream received on each side (broker-msg-B, bare-msg-B); and the
// memory per open stream (broker-B/stream, bare-B/stream, mem-ratio),
// whose measure is the side's memory clock, read just before the side's
// streams are opened (its client connections already are) and just after
// every one of them received its first message, divided by n.
//
// The run checks that every stream received every pushed token once, in
// turn, as the side's event (EVENT_INVALIDATED for the broker,
// EVENT_REFRESHED for the bare server), and that the broker asked the
// token endpoint once for the first token and once per push.

// The fan-out comparison's rounds.
const (
	fanoutRounds = 7
	fanoutPushes = 10 // per side and round
)

// fanoutSide is one server of the fan-out comparison and the ways to
// drive and weigh it.
type fanoutSide struct {
	name    string // in the metrics: "broker" or "bare"
	addr    string
	perConn int // the server's limit of concurrent streams per connection
	// push makes the server push a new token to every stream.
	push func(ctx context.Context) error
	// event is what every pushed token arrives as.
	event tokenbrokerv1.WatchTokenResponse_Event
	// mem returns the memory, in bytes, that the side's open streams are
	// charged by.
	mem func() (int64, error)
	// verify, when set, checks the server after the given number of
	// pushes.
	verify func(pushes int) error
}

// delivery is one message as a stream received it.
type delivery struct {
	event  tokenbrokerv1.WatchTokenResponse_Event
	issued time.Time
	at     time.Time
}

// fanoutStreams are one side's open streams and what they received.
type fanoutStreams struct {
	fanoutSide
	n    int
	recs [][]delivery // per stream, every message after its first, in order
	// pushes counts the pushes so far; rounds holds, for each recorded
	// round, the indexes of its pushes (push 0 is the warm-up).
	pushes          int
	rounds          [][]int
	memPer          float64 // bytes per stream
	last            atomic.Pointer[tokenbrokerv1.WatchTokenResponse]
	arrived         chan struct{} // a reader saw the deliveries reach want
	readErr         chan error
	delivered, want atomic.Int64
}

// openFanout opens n streams of req to side on ctx, weighing them with
// side.mem, and starts one reader per stream in readers.
func openFanout(b *testing.B, ctx context.Context, side fanoutSide, n int, req *tokenbrokerv1.WatchTokenRequest, readers *sync.WaitGroup) *fanoutStreams {
	b.Helper()
	f := &fanoutStreams{fanoutSide: side, n: n, recs: make([][]delivery, n), arrived: make(chan struct{}, 1), readErr: make(chan error, 1)}
	conns := make([]tokenbrokerv1.TokenBrokerServiceClient, (n+side.perConn-1)/side.perConn)
	for i := range conns {
		conns[i] = dialReady(b, side.addr)
	}
	streams := make([]grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse], n)
	m0, err := side.mem()
	if err != nil {
		b.Fatal(err)
	}
	var opening sync.WaitGroup
	var next atomic.Int64
	openErr := make(chan error, 1)
	for range fanoutOpeners {
		opening.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := openStream(ctx, conns[i%len(conns)], req, &streams[i]); err != nil {
					select {
					case openErr <- fmt.Errorf("%s stream %d: %w", side.name, i, err):
					default:
					}
					return
				}
			}
		})
	}
	if !waitTimeout(&opening, fanoutWait) {
		b.Fatalf("opening %d %s streams took more than %v", n, side.name, fanoutWait)
	}
	select {
	case err := <-openErr:
		b.Fatal(err)
	default:
	}
	m1, err := side.mem()
	if err != nil {
		b.Fatal(err)
	}
	f.memPer = float64(m1-m0) / float64(n)

	for i, st := range streams {
		readers.Go(func() {
			for {
				msg, err := st.Recv()
				at := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						select {
						case f.readErr <- fmt.Errorf("%s stream %d: %w", side.name, i, err):
						default:
						}
					}
					return
				}
				f.recs[i] = append(f.recs[i], delivery{event: msg.GetEvent(), issued: msg.GetToken().GetIssuedAt().AsTime(), at: at})
				if i == 0 {
					f.last.Store(msg)
				}
				if f.delivered.Add(1) >= f.want.Load() {
					select {
					case f.arrived <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	return f
}

// pushAndWait makes the side push a new token and waits until every
// stream has received it.
func (f *fanoutStreams) pushAndWait() error {
	f.pushes++
	target := int64(f.n * f.pushes)
	f.want.Store(target)
	select { // a stale wake-up
	case <-f.arrived:
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), fanoutWait)
	defer cancel()
	if err := f.push(ctx); err != nil {
		return fmt.Errorf("%s push %d: %w", f.name, f.pushes, err)
	}
	for f.delivered.Load() < target {
		select {
		case <-f.arrived:
		case err := <-f.readErr:
			return err
		case <-ctx.Done():
			return fmt.Errorf("%s push %d: %d of %d deliveries after %v", f.name, f.pushes, f.delivered.Load()-target+int64(f.n), f.n, fanoutWait)
		}
	}
	return nil
}

// latencies checks that every stream received every pushed token once,
// in turn, as f.event, and returns for each push the latencies (ms) of
// its n deliveries. It may run only once the readers have returned.
func (f *fanoutStreams) latencies() ([][]float64, error) {
	issued := make([]time.Time, f.pushes)
	for k := range issued {
		if len(f.recs[0]) <= k {
			return nil, fmt.Errorf("%s stream 0 received %d messages after its first, want %d (one per push)", f.name, len(f.recs[0]), f.pushes)
		}
		issued[k] = f.recs[0][k].issued
		if k > 0 && !issued[k].After(issued[k-1]) {
			return nil, fmt.Errorf("%s push %d: the token was issued at %v, not after the previous one (%v)", f.name, k+1, issued[k], issued[k-1])
		}
	}
	lat := make([][]float64, f.pushes)
	for k := range lat {
		lat[k] = make([]float64, 0, f.n)
	}
	for i, rs := range f.recs {
		if len(rs) != f.pushes {
			return nil, fmt.Errorf("%s stream %d received %d messages after its first, want %d (one per push)", f.name, i, len(rs), f.pushes)
		}
		for k, d := range rs {
			if d.event != f.event || !d.issued.Equal(issued[k]) {
				return nil, fmt.Errorf("%s stream %d message %d: got %v issued at %v, want %v issued at %v", f.name, i, k+1, d.event, d.issued, f.event, issued[k])
			}
			lat[k] = append(lat[k], float64(d.at.Sub(d.issued))/float64(time.Millisecond))
		}
	}
	return lat, nil
}

// fanoutRound is what one round measured on one side, in ms.
type fanoutRound struct{ p50, p99, last float64 }

// roundFigures returns the figures of each recorded round of f, from the
// latencies of its pushes.
func (f *fanoutStreams) roundFigures(lat [][]float64) []fanoutRound {
	out := make([]fanoutRound, len(f.rounds))
	for r, pushes := range f.rounds {
		var all, lasts []float64
		for _, k := range pushes {
			all = append(all, lat[k]...)
			lasts = append(lasts, slices.Max(lat[k]))
		}
		slices.Sort(all)
		out[r] = fanoutRound{p50: percentile(all, 0.50), p99: percentile(all, 0.99), last: median(lasts)}
	}
	return out
}

// compareFanout runs the fan-out comparison described above with n
// streams of req on each side; authz, unless "", is sent to both as the
// authorization metadata of every stream.
func compareFanout(b *testing.B, n int, req *tokenbrokerv1.WatchTokenRequest, authz string, broker, bare fanoutSide) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if authz != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", authz)
	}
	var readers sync.WaitGroup
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if !waitTimeout(&readers, fanoutWait) {
			b.Fatalf("stream readers still running %v after the streams were cancelled", fanoutWait)
		}
	}
	defer stop()
	sides := []*fanoutStreams{
		openFanout(b, ctx, broker, n, req, &readers),
		openFanout(b, ctx, bare, n, req, &readers),
	}
	for _, f := range sides { // the warm-up push, push 0
		if err := f.pushAndWait(); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		err := interleave(fanoutRounds, func(_ int, isBroker bool) error {
			f := sides[1]
			if isBroker {
				f = sides[0]
			}
			var pushes []int
			for range fanoutPushes {
				if err := f.pushAndWait(); err != nil {
					return err
				}
				pushes = append(pushes, f.pushes-1)
			}
			f.rounds = append(f.rounds, pushes)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	stop()
	for _, f := range sides {
		select {
		case err := <-f.readErr:
			b.Fatal(err)
		default:
		}
	}

	b.ReportMetric(0, "ns/op")
	figures := make([][]fanoutRound, len(sides))
	for i, f := range sides {
		lat, err := f.latencies()
		if err != nil {
			b.Fatal(err)
		}
		if f.verify != nil {
			if err := f.verify(f.pushes); err != nil {
				b.Fatal(err)
			}
		}
		figures[i] = f.roundFigures(lat)
		first := slices.Clone(lat[0])
		slices.Sort(first)
		b.ReportMetric(percentile(first, 0.99), f.name+"-first-p99-ms")
	}
	field := func(rs []fanoutRound, g func(fanoutRound) float64) []float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = g(r)
		}
		return v
	}
	for _, m := range []struct {
		name string
		g    func(fanoutRound) float64
	}{
		{"p50", func(r fanoutRound) float64 { return r.p50 }},
		{"p99", func(r fanoutRound) float64 { return r.p99 }},
		{"last", func(r fanoutRound) float64 { return r.last }},
	} {
		brokerV, bareV := field(figures[0], m.g), field(figures[1], m.g)
		reportRatios(b, m.name+"-ratio", brokerV, bareV)
		b.ReportMetric(median(brokerV), sides[0].name+"-"+m.name+"-ms")
		b.ReportMetric(median(bareV), sides[1].name+"-"+m.name+"-ms")
	}
	for _, f := range sides {
		b.ReportMetric(f.memPer, f.name+"-B/stream")
		if m := f.last.Load(); m != nil {
			b.ReportMetric(float64(proto.Size(m)), f.name+"-msg-B")
		}
	}
	b.ReportMetric(sides[0].memPer/sides[1].memPer, "mem-ratio")
}

// firstWatchMessage opens a WatchToken stream of req with c on ctx and
// returns its first message (EVENT_INITIAL), closing the stream.
func firstWatchMessage(b *testing.B, ctx context.Context, c tokenbrokerv1.TokenBrokerServiceClient, req *tokenbrokerv1.WatchTokenRequest) *tokenbrokerv1.WatchTokenResponse {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, fanoutWait)
	defer cancel()
	st, err := c.WatchToken(ctx, req)
	if err != nil {
		b.Fatal(err)
	}
	msg, err := st.Recv()
	if err != nil {
		b.Fatal(err)
	}
	if got, want := msg.GetEvent(), tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL; got != want {
		b.Fatalf("first message: got %v, want %v", got, want)
	}
	return msg
}

// invalidatePush returns the broker's push: AdminService.InvalidateTokens
// of keyID (what tokenbrokerctl invalidate does) with authz, unless "",
// as the authorization metadata. The key is watched, so the broker
// refetches it at once and pushes the new token to its watchers as
// EVENT_INVALIDATED, through the same path as a scheduled refresh.
func invalidatePush(admin tokenbrokerv1.AdminServiceClient, keyID, authz string) func(context.Context) error {
	return func(ctx context.Context) error {
		if authz != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", authz)
		}
		resp, err := admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_KeyId{KeyId: keyID}})
		if err != nil {
			return fmt.Errorf("InvalidateTokens: %w", err)
		}
		if got := resp.GetInvalidated(); got != 1 {
			return fmt.Errorf("InvalidateTokens: invalidated %d keys, want 1", got)
		}
		return nil
	}
}

// upstreamCount returns the broker's verify: the token endpoint was asked
// once for the first token and once per push.
func upstreamCount(requests func() int64) func(int) error {
	return func(pushes int) error {
		if got, want := requests(), int64(1+pushes); got != want {
			return fmt.Errorf("got %d upstream requests, want %d (the first token and one per push)", got, want)
		}
		return nil
	}
}

// BenchmarkProcWatchFanoutVsBare: the fan-out comparison described above,
// n = 1,000 and 10,000 streams on each side, with the real tokenbroker
// binary (built as make build builds it) against the benchserver program
// in its watch mode, each in a process of its own; the streams' clients
// run in this process.
//
// The broker runs with procConfig (every default: the log with its
// access lines to a file, metrics, recovery, sealing; callers
// authenticated by API key under a policy) plus what fan-out needs
// (procOptions.watchers: the per-caller watch limits raised so that one
// caller may open every stream at once, and AdminService on a unix
// socket for that caller), its token endpoint the devissuer in this
// process over HTTP, with one-hour tokens: no scheduled refresh falls in
// the run. The streams watch the broker-held client's api/read token;
// each broker push is an InvalidateTokens of its key (invalidatePush).
// The bare server sends the broker's own first message (the same devissuer
// token, the same fields) and allows the broker's default number of
// streams per connection (-max-concurrent-streams); each of its pushes is
// a line on its stdin, published with a new issued_at.
//
// Memory per stream (broker-B/stream, bare-B/stream) is the growth of the
// server process's resident anonymous memory (procAnonRSS: RssAnon of
// /proc/PID/status, the same measure for both processes) while its n
// streams open, divided by n: the server's stream state, goroutines and
// buffers, with whatever garbage the opening left that the process's
// garbage collector had not yet reclaimed, or reclaimed but not yet given
// back to the kernel. The clients' memory is not in it (they are in this
// process), nor the client connections' (opened before).
func BenchmarkProcWatchFanoutVsBare(b *testing.B) {
	skipProc(b)
	brokerBin, bareBin := procBins(b)
	perConn := int(config.Default().Server.MaxConcurrentStreams)
	req := &tokenbrokerv1.WatchTokenRequest{Selector: heldSelector("api/read")}
	for _, n := range fanoutWatchers {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			issuer, tokenURL := startIssuer(b, nil)
			broker := startProcBroker(b, brokerBin, tokenURL, procOptions{watchers: n})
			authz := "Bearer " + broker.apiKey
			first := firstWatchMessage(b, metadata.AppendToOutgoingContext(context.Background(), "authorization", authz),
				dialReady(b, broker.grpcAddr), req)
			msgFile := filepath.Join(b.TempDir(), "watch.pb")
			raw, err := proto.Marshal(first)
			if err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(msgFile, raw, 0o600); err != nil {
				b.Fatal(err)
			}
			bareAddr, bare := startProcBare(b, bareBin, "grpc", "-watch-message", msgFile, "-max-concurrent-streams", fmt.Sprint(perConn))

			adminConn, err := grpc.NewClient(broker.adminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { adminConn.Close() })
			compareFanout(b, n, req, authz, fanoutSide{
				name:    "broker",
				addr:    broker.grpcAddr,
				perConn: perConn,
				push:    invalidatePush(tokenbrokerv1.NewAdminServiceClient(adminConn), first.GetToken().GetKeyId(), authz),
				event:   tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
				mem:     procAnonRSS(broker.pid),
				verify:  upstreamCount(issuer.Requests),
			}, fanoutSide{
				name:    "bare",
				addr:    bareAddr,
				perConn: perConn,
				push: func(context.Context) error {
					_, err := io.WriteString(bare.stdin, "publish\n")
					return err
				},
				event: tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
				mem:   procAnonRSS(bare.pid),
			})
		})
	}
}
