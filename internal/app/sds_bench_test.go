package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/sds"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// BenchmarkSDSFanout measures how long one new token takes to reach
// 10,000 Envoy SDS streams (StreamSecrets, each ACKing every response as
// Envoy does), beside the same figure for 10,000 WatchToken streams, in
// the same run against the same broker: two keys of one broker-held
// client (scope api/read watched over WatchToken, api/write served as the
// SDS secret "fanout"), all 20,000 streams open at once, and each op
// replaces first the WatchToken key's token, then the SDS key's, waiting
// each time until every stream of that kind has it (interleaved rounds,
// so both kinds see the same machine state). The trigger is the
// fan-out benchmarks' GetToken with a min_ttl (see fanoutFraction).
//
// Metrics: watch-p50-ms, watch-p99-ms, sds-p50-ms, sds-p99-ms: the time
// from the new token's issued_at to its arrival at a stream, over every
// stream and refresh; sds/watch-p50 and sds/watch-p99 their ratios.
func BenchmarkSDSFanout(b *testing.B) {
	if testing.Short() {
		b.Skip("tens of thousands of streams over loopback")
	}
	const n = 10_000
	issuer, err := devissuer.New(devissuer.Config{
		Lifetime: fanoutLifetime,
		Clients:  []devissuer.Client{{ID: fanoutClientID, Secret: fanoutSecret, Scopes: []string{"api/read", "api/write"}}},
		Logger:   slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(issuer.Handler())
	b.Cleanup(hs.Close)

	cfg := config.Default()
	cfg.Auth.AllowUnauthenticated = true
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", hs.URL+devissuer.TokenPath, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: "held", Provider: "test", ClientID: fanoutClientID, Secret: secret.String(fanoutSecret)}}
	cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = fanoutFraction, 0
	cfg.Cache.MinRemaining = config.Duration(time.Second)
	cfg.Server.MaxWatchesPerCaller = 2 * n
	cfg.Server.WatchOpensPerSecond, cfg.Server.WatchOpenBurst = 1e6, 2*n
	cfg.SDS.Enabled = true
	cfg.SDSSecrets = []config.SDSSecret{{Name: "fanout", Client: "held", Scopes: []string{"api/write"}}}
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
	addr := l.Addr().String()
	perConn := int(cfg.Server.MaxConcurrentStreams)

	trigger := tokenbrokerv1.NewTokenBrokerServiceClient(sdsDialReady(b, addr))
	keys := map[string]*fanoutKey{
		"watch": {sel: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: []string{"api/read"}}},
		"sds":   {sel: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: []string{"api/write"}}},
	}
	for _, k := range keys {
		k.minRemaining = time.Duration(cfg.Cache.MinRemaining)
		gctx, gcancel := context.WithTimeout(context.Background(), fanoutWait)
		resp, err := trigger.GetToken(gctx, &tokenbrokerv1.GetTokenRequest{Selector: k.sel})
		gcancel()
		if err != nil {
			b.Fatal(err)
		}
		k.cur = resp.GetToken()
	}

	kinds := []*fanKind{{name: "watch", key: keys["watch"]}, {name: "sds", key: keys["sds"]}}
	for _, k := range kinds {
		k.recs = make([][]arrival, n)
	}
	arrived := make(chan struct{}, 1)
	got := func(k *fanKind, i int, a arrival) {
		k.recs[i] = append(k.recs[i], a)
		if k.delivered.Add(1) >= k.want.Load() {
			select {
			case arrived <- struct{}{}:
			default:
			}
		}
	}

	sctx, cancelStreams := context.WithCancel(context.Background())
	defer cancelStreams()
	var readers sync.WaitGroup
	defer func() {
		cancelStreams()
		if !waitTimeout(&readers, fanoutWait) {
			b.Errorf("stream readers still running %v after the streams were cancelled", fanoutWait)
		}
	}()
	readErr := make(chan error, 1)
	fail := func(err error) {
		if sctx.Err() == nil {
			select {
			case readErr <- err:
			default:
			}
		}
	}

	// Open both kinds of streams, interleaved, each kind on connections of
	// its own; each stream's reader starts once its first message came.
	var watchConns []tokenbrokerv1.TokenBrokerServiceClient
	var sdsConns []secretv3.SecretDiscoveryServiceClient
	for range (n + perConn - 1) / perConn {
		watchConns = append(watchConns, tokenbrokerv1.NewTokenBrokerServiceClient(sdsDialReady(b, addr)))
		sdsConns = append(sdsConns, secretv3.NewSecretDiscoveryServiceClient(sdsDialReady(b, addr)))
	}
	var opening sync.WaitGroup
	var next atomic.Int64
	for range fanoutOpeners {
		opening.Go(func() {
			for {
				j := int(next.Add(1)) - 1
				if j >= 2*n {
					return
				}
				i := j / 2
				if j%2 == 0 {
					var st grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse]
					if err := openStream(sctx, watchConns[i%len(watchConns)], &tokenbrokerv1.WatchTokenRequest{Selector: keys["watch"].sel}, &st); err != nil {
						fail(fmt.Errorf("watch stream %d: %w", i, err))
						return
					}
					readers.Go(func() {
						for {
							msg, err := st.Recv()
							at := time.Now()
							if err != nil {
								fail(fmt.Errorf("watch stream %d: %w", i, err))
								return
							}
							got(kinds[0], i, arrival{issued: msg.GetToken().GetIssuedAt().AsTime(), at: at})
						}
					})
					continue
				}
				st, err := sdsConns[i%len(sdsConns)].StreamSecrets(sctx)
				if err == nil {
					err = st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar-" + strconv.Itoa(i)}, TypeUrl: sds.TypeURL, ResourceNames: []string{"fanout"}})
				}
				var first *discoveryv3.DiscoveryResponse
				if err == nil {
					first, err = st.Recv()
				}
				if err == nil {
					err = sdsAck(st, first)
				}
				if err != nil {
					fail(fmt.Errorf("sds stream %d: %w", i, err))
					return
				}
				readers.Go(func() {
					for {
						resp, err := st.Recv()
						at := time.Now()
						if err == nil {
							err = sdsAck(st, resp)
						}
						var v int64
						if err == nil {
							v, err = strconv.ParseInt(resp.GetVersionInfo(), 10, 64)
						}
						if err != nil {
							fail(fmt.Errorf("sds stream %d: %w", i, err))
							return
						}
						got(kinds[1], i, arrival{issued: time.Unix(0, v), at: at})
					}
				})
			}
		})
	}
	if !waitTimeout(&opening, fanoutWait) {
		b.Fatalf("opening %d streams took more than %v", 2*n, fanoutWait)
	}
	select {
	case err := <-readErr:
		b.Fatal(err)
	default:
	}

	refreshes := 0
	for b.Loop() {
		for _, k := range kinds {
			b.StopTimer()
			pctx, pcancel := context.WithTimeout(context.Background(), fanoutWait)
			need, err := k.key.waitReplaceable(pctx)
			pcancel()
			if err != nil {
				b.Fatalf("%s refresh %d: %v", k.name, refreshes+1, err)
			}
			target := int64(n * (len(k.issued) + 1))
			k.want.Store(target)
			select { // a stale wake-up
			case <-arrived:
			default:
			}
			b.StartTimer()
			rctx, rcancel := context.WithTimeout(context.Background(), fanoutWait)
			at, err := k.key.replace(rctx, trigger, need)
			rcancel()
			if err != nil {
				b.Fatalf("%s refresh %d: %v", k.name, refreshes+1, err)
			}
			timeout := time.NewTimer(fanoutWait)
			for k.delivered.Load() < target {
				select {
				case <-arrived:
				case err := <-readErr:
					b.Fatal(err)
				case <-timeout.C:
					b.Fatalf("%s refresh %d: %d of %d deliveries after %v", k.name, len(k.issued)+1, k.delivered.Load()-target+int64(n), n, fanoutWait)
				}
			}
			timeout.Stop()
			k.issued = append(k.issued, at)
		}
		refreshes++
	}
	b.StopTimer()
	cancelStreams()
	if !waitTimeout(&readers, fanoutWait) {
		b.Fatalf("stream readers still running %v after the streams were cancelled", fanoutWait)
	}

	// Every stream must have received every new token of its key, once,
	// in turn.
	p50 := map[string]float64{}
	p99 := map[string]float64{}
	for _, k := range kinds {
		all := make([]float64, 0, n*len(k.issued))
		for i, rs := range k.recs {
			if len(rs) != len(k.issued) {
				b.Fatalf("%s stream %d received %d messages after its first, want %d (one per refresh)", k.name, i, len(rs), len(k.issued))
			}
			for r, d := range rs {
				if !d.issued.Equal(k.issued[r]) {
					b.Fatalf("%s stream %d message %d: got a token issued at %v, want %v", k.name, i, r+1, d.issued, k.issued[r])
				}
				all = append(all, float64(d.at.Sub(d.issued))/float64(time.Millisecond))
			}
		}
		slices.Sort(all)
		p50[k.name], p99[k.name] = percentile(all, 0.50), percentile(all, 0.99)
		b.ReportMetric(p50[k.name], k.name+"-p50-ms")
		b.ReportMetric(p99[k.name], k.name+"-p99-ms")
	}
	b.ReportMetric(p50["sds"]/p50["watch"], "sds/watch-p50")
	b.ReportMetric(p99["sds"]/p99["watch"], "sds/watch-p99")
	// One upstream request per key for its first token, one per refresh.
	if got, want := issuer.Requests(), int64(2+2*refreshes); got != want {
		b.Fatalf("got %d upstream requests, want %d", got, want)
	}
}

// arrival is one delivery as a stream received it.
type arrival struct {
	issued time.Time
	at     time.Time
}

// fanKind is one kind of stream of BenchmarkSDSFanout: its key, what its
// streams received, and the issue times of its refreshes.
type fanKind struct {
	name      string
	key       *fanoutKey
	recs      [][]arrival
	delivered atomic.Int64
	want      atomic.Int64
	issued    []time.Time
}

// fanoutKey is one key of BenchmarkSDSFanout and its current token.
type fanoutKey struct {
	sel          *tokenbrokerv1.TokenSelector
	cur          *tokenbrokerv1.Token
	minRemaining time.Duration
}

// waitReplaceable waits until a GetToken with the min_ttl it returns
// replaces the key's token (see fanoutFraction).
func (k *fanoutKey) waitReplaceable(ctx context.Context) (time.Duration, error) {
	exp := k.cur.GetExpiresAt().AsTime()
	life := exp.Sub(k.cur.GetIssuedAt().AsTime())
	// The broker refuses a min_ttl beyond the lifetime less min_remaining,
	// and the token endpoint's expiry is whole seconds: 2 s of margin.
	need := min(time.Duration(fanoutFraction*float64(life)), life-k.minRemaining-2*time.Second)
	t := time.NewTimer(time.Until(exp.Add(-need)) + time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return need, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// replace makes the broker replace the key's token and returns the new
// token's issue time.
func (k *fanoutKey) replace(ctx context.Context, trigger tokenbrokerv1.TokenBrokerServiceClient, need time.Duration) (time.Time, error) {
	resp, err := trigger.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: k.sel, MinTtl: durationpb.New(need)})
	if err != nil {
		return time.Time{}, err
	}
	tok := resp.GetToken()
	if !tok.GetIssuedAt().AsTime().After(k.cur.GetIssuedAt().AsTime()) {
		return time.Time{}, fmt.Errorf("the trigger did not replace the token")
	}
	k.cur = tok
	return tok.GetIssuedAt().AsTime(), nil
}

// sdsAck acknowledges resp as Envoy does.
func sdsAck(st grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse], resp *discoveryv3.DiscoveryResponse) error {
	return st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.TypeURL, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: []string{"fanout"}})
}

// sdsDialReady opens a client connection to addr and waits until it is
// connected.
func sdsDialReady(b *testing.B, addr string) *grpc.ClientConn {
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
	return conn
}
