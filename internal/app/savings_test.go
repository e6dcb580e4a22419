package app

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
)

const savingsPrice = 2.5 // per 1,000 requests, for provider "test"

// savingsTotals sums one provider's figures of a GetStats answer, and
// checks each client's saved and cost figures against its served and
// upstream counts.
func savingsTotals(t *testing.T, st *tokenbrokerv1.GetStatsResponse, provider string) (served, upstream int64) {
	t.Helper()
	for _, c := range st.GetSavings() {
		if c.GetProvider() != provider {
			continue
		}
		served += c.GetCallsServed()
		upstream += c.GetUpstreamRequests()
		if want := max(0, c.GetCallsServed()-c.GetUpstreamRequests()); c.GetRequestsSaved() != want {
			t.Errorf("client %q: requests_saved %d, want served − upstream = %d", c.GetClient(), c.GetRequestsSaved(), want)
		}
		if want := float64(c.GetRequestsSaved()) * savingsPrice / 1000; c.GetCostSaved() == nil || math.Abs(c.GetCostSaved().GetValue()-want) > 1e-9 {
			t.Errorf("client %q: cost_saved %v, want saved × %v / 1000 = %v", c.GetClient(), c.GetCostSaved(), savingsPrice, want)
		}
	}
	return served, upstream
}

// callKeys makes n GetToken calls on each of keys through clients (in
// turn), half of them concurrently, and returns how many it made.
func callKeys(t *testing.T, ctx context.Context, clients []tokenbrokerv1.TokenBrokerServiceClient, keys []*tokenbrokerv1.TokenSelector, n int) int64 {
	t.Helper()
	var calls atomic.Int64
	call := func(i int, sel *tokenbrokerv1.TokenSelector) {
		if _, err := clients[i%len(clients)].GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel}); err != nil {
			t.Errorf("GetToken: %v", err)
			return
		}
		calls.Add(1)
	}
	var wg sync.WaitGroup
	for _, sel := range keys {
		for i := range n / 2 {
			wg.Go(func() { call(i, sel) })
		}
	}
	wg.Wait()
	for _, sel := range keys {
		for i := n / 2; i < n; i++ {
			call(i, sel)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return calls.Load()
}

// savingsKeys are 4 keys of provider "test": 3 of the held client, one
// pass-through.
func savingsKeys() []*tokenbrokerv1.TokenSelector {
	return []*tokenbrokerv1.TokenSelector{
		heldSelector("api/read"), heldSelector("api/write"), heldSelector("api/read", "api/write"),
		passSelector(passSecret, "api/read"),
	}
}

// TestSavingsMatchIssuer: one replica, tier off. After N GetToken calls
// on 4 keys (half concurrent), with the token endpoint failing the first
// two requests with 503 (so the first fetch is retried), calls served −
// requests saved = upstream requests = the requests the endpoint
// received, retries included; cost = saved × price / 1000; the figures
// are the replica's (savings_fleet_wide false, scope="replica").
func TestSavingsMatchIssuer(t *testing.T) {
	var received, failing atomic.Int64
	failing.Store(2)
	wrap := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			received.Add(1)
			if failing.Add(-1) >= 0 {
				http.Error(w, `{"error":"temporarily_unavailable"}`, http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	issuer, tokenURL := startIssuer(t, wrap)
	cfg := stackConfig(tokenURL)
	cfg.Providers[0].PricePer1000Requests = savingsPrice
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const n = 40
	keys := savingsKeys()
	calls := callKeys(t, ctx, []tokenbrokerv1.TokenBrokerServiceClient{tokenbrokerv1.NewTokenBrokerServiceClient(conn)}, keys, n)

	st, err := tokenbrokerv1.NewAdminServiceClient(conn).GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetSavingsFleetWide() {
		t.Error("savings_fleet_wide true without a Redis tier")
	}
	served, upstream := savingsTotals(t, st, "test")
	if served != calls {
		t.Errorf("calls served %d, want the %d calls made", served, calls)
	}
	if got := received.Load(); upstream != got || got != issuer.Requests()+2 || got != int64(len(keys))+2 {
		t.Errorf("upstream requests %d; the endpoint received %d (issuer %d + 2 refused), want all equal to %d keys + 2 retries", upstream, got, issuer.Requests(), len(keys))
	}
	if saved := served - upstream; saved <= 0 {
		t.Errorf("requests saved %d, want > 0", saved)
	}

	// The metrics show the same figures, as the replica's.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var held int64
	for _, c := range st.GetSavings() {
		if c.GetClient() == "held" {
			held = c.GetUpstreamRequests()
		}
	}
	if want := `tokenbroker_savings_upstream_requests_total{client="held",provider="test",scope="replica"} ` + itoa(held); !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

// TestSavingsFleet: 3 replicas with a real redis-server. N GetToken calls
// per key spread over all replicas (each key fetched by one replica,
// adopted from Redis by the others, which count no upstream request):
// GetStats on every replica reports the fleet's figures
// (savings_fleet_wide), whose served total is every call made through
// any replica and whose upstream total is the issuer's own count; the
// metrics carry scope="fleet". A replica that stops flushes its last
// counts.
func TestSavingsFleet(t *testing.T) {
	rs := redistest.Start(t)
	issuer, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Providers[0].PricePer1000Requests = savingsPrice
	cfg.Shared.Redis.Addrs = []string{rs.Addr()}
	cfg.Shared.Redis.OpTimeout = config.Duration(time.Second)
	keys := Keys{Sealing: []byte("k1:" + randomB64(t) + "\n")}
	var err error
	if keys.HMAC, err = base64.StdEncoding.DecodeString(randomB64(t)); err != nil {
		t.Fatal(err)
	}
	var (
		clients  []tokenbrokerv1.TokenBrokerServiceClient
		admins   []tokenbrokerv1.AdminServiceClient
		httpAddr []string
		stops    []func()
	)
	for range 3 {
		addr, ha, stop := serveAppHTTP(t, cfg, keys, slog.New(slog.NewJSONHandler(io.Discard, nil)))
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		clients = append(clients, tokenbrokerv1.NewTokenBrokerServiceClient(conn))
		admins = append(admins, tokenbrokerv1.NewAdminServiceClient(conn))
		httpAddr = append(httpAddr, ha)
		stops = append(stops, stop)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const n = 30
	calls := callKeys(t, ctx, clients, savingsKeys(), n)
	if got := issuer.Requests(); got != int64(len(savingsKeys())) {
		t.Fatalf("issuer requests %d, want one per key (%d)", got, len(savingsKeys()))
	}

	// Each replica flushes about once a second: wait until all did.
	fleetFigures := func(i int) (served, upstream int64, fleet bool) {
		st, err := admins[i].GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
		if err != nil {
			t.Fatalf("replica %d GetStats: %v", i, err)
		}
		served, upstream = savingsTotals(t, st, "test")
		return served, upstream, st.GetSavingsFleetWide()
	}
	for i := range admins {
		for {
			served, upstream, fleet := fleetFigures(i)
			if !fleet {
				t.Fatalf("replica %d: savings_fleet_wide false with the tier on", i)
			}
			if served == calls && upstream == issuer.Requests() {
				break
			}
			if served > calls || upstream > issuer.Requests() {
				t.Fatalf("replica %d: fleet figures served %d, upstream %d exceed the %d calls and the issuer's %d requests", i, served, upstream, calls, issuer.Requests())
			}
			select {
			case <-ctx.Done():
				t.Fatalf("replica %d: fleet figures served %d, upstream %d; want %d calls, the issuer's %d requests", i, served, upstream, calls, issuer.Requests())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr[2]+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `tokenbroker_savings_calls_served_total{client="held",provider="test",scope="fleet"} ` + itoa(calls*3/4); !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}

	// Calls on replica 0, which then stops: its shutdown flushes them
	// (the next tick would be too late: it is gone).
	for range 7 {
		if _, err := clients[0].GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
			t.Fatal(err)
		}
	}
	stops[0]()
	served, _, _ := fleetFigures(1)
	if served != calls+7 {
		t.Errorf("after replica 0 stopped: fleet calls served %d, want %d (its last calls flushed at shutdown)", served, calls+7)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
