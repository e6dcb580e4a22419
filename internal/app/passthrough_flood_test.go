package app

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// TestPassthroughFloodSparesHeldClient (issue 10, point 2): 1,000
// anonymous callers post random client secrets to the drop-in endpoint,
// half of them before the held client's refresh point and half while its
// refresh is at the token endpoint, with the budget of 2 requests
// a second. The held client's GetToken callers are served throughout, its
// token is refreshed, and the flood costs the provider only the little
// that the pass-through share, and within it the anonymous caller's part,
// allows. Before the fix the flood's requests reserved the provider's
// whole budget for half a minute ahead, the refresh waited behind them and
// the held client's callers got DeadlineExceeded.
func TestPassthroughFloodSparesHeldClient(t *testing.T) {
	const (
		lifetime = 4 * time.Second
		flood    = 1000
	)
	issuer, err := devissuer.New(devissuer.Config{Lifetime: lifetime, Clients: []devissuer.Client{
		{ID: heldID, Secret: heldSecret, Scopes: []string{"api/read"}},
		{ID: passID, Secret: passSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}

	var (
		heldRequests, passRequests atomic.Int64
		refreshing                 = make(chan struct{}) // closed when the held client's refresh arrives
		secondHalf                 = make(chan struct{}) // closed when the second half of the flood is answered
		testDone                   = make(chan struct{})
	)
	defer close(testDone)
	issuerHandler := issuer.Handler()
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _, _ := r.BasicAuth()
		if id, _ := url.QueryUnescape(user); id != heldID {
			passRequests.Add(1)
		} else if heldRequests.Add(1) == 2 {
			// The refresh: answer it only once the second half of the
			// flood has been answered, so the two overlap.
			close(refreshing)
			select {
			case <-secondHalf:
			case <-testDone:
			}
		}
		issuerHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(endpoint.Close)

	cfg := stackConfig(endpoint.URL + devissuer.TokenPath)
	cfg.Providers[0].RateLimit, cfg.Providers[0].Burst = 2, 2 // the budget; shares at their defaults
	cfg.Cache.MinRemaining = config.Duration(time.Second)
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	s := &stack{issuer: issuer, addr: addr}
	client := s.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	heldToken := func() string {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		resp, err := client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
		if err != nil {
			t.Fatalf("held client's GetToken: got %v, want a token", err)
		}
		return resp.GetToken().GetAccessToken()
	}
	first := heldToken()

	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 64, MaxIdleConnsPerHost: 64}}
	t.Cleanup(hc.CloseIdleConnections)
	var (
		statuses sync.Map // status code -> *atomic.Int64
		floodErr atomic.Value
	)
	post := func() {
		form := url.Values{"grant_type": {"client_credentials"}, "scope": {"api/read"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+httpAddr+"/oauth2/token", strings.NewReader(form.Encode()))
		if err != nil {
			floodErr.Store(err)
			return
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(passID, rand.Text()) // a random secret each time
		resp, err := hc.Do(req)
		if err != nil {
			floodErr.Store(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
			floodErr.Store("429 without Retry-After")
		}
		n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	send := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Go(post)
		}
		wg.Wait()
	}

	// First half: before the refresh point.
	send(flood / 2)
	// Second half: while the held client's refresh is at the endpoint.
	go func() {
		select {
		case <-refreshing:
		case <-ctx.Done():
			return
		}
		send(flood / 2)
		close(secondHalf)
	}()

	// The held client's callers are served all along, until they get the
	// refreshed token.
	tick := time.NewTicker(20 * time.Millisecond) // pacing only; nothing is timed
	defer tick.Stop()
	for heldToken() == first {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the held client's token was never refreshed")
		}
	}
	select {
	case <-secondHalf:
	case <-ctx.Done():
		t.Fatal("the second half of the flood was never answered")
	}
	if v := floodErr.Load(); v != nil {
		t.Errorf("flood: %v", v)
	}
	total := int64(0)
	statuses.Range(func(k, v any) bool {
		code, n := k.(int), v.(*atomic.Int64).Load()
		total += n
		if code != http.StatusTooManyRequests && code != http.StatusUnauthorized {
			t.Errorf("flood: got %d answers with status %d, want only 429 and 401", n, code)
		}
		return true
	})
	if total != flood {
		t.Errorf("flood: got %d answers, want %d", total, flood)
	}
	// The anonymous caller may spend a quarter of the pass-through half of
	// 2 requests a second, burst 1: a handful over the test, not the budget.
	if got := passRequests.Load(); got > 10 {
		t.Errorf("flood requests that reached the token endpoint: got %d, want a handful (the anonymous caller's share)", got)
	}
	if got := heldRequests.Load(); got < 2 {
		t.Errorf("held client's requests at the token endpoint: got %d, want at least 2 (a refresh)", got)
	}
}
