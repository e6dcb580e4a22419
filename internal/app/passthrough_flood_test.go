package app

import (
	"context"
	"crypto/rand"
	"errors"
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

// TestPassthroughFloodSparesHeldClient (issue 10, point 2): anonymous
// callers flood the drop-in endpoint with random client secrets (at least
// 1,000, from 16 flooders at once), starting a second before the held
// client's refresh point and going on until its refresh is done and a few
// calls after, so the flood and the refresh compete for the provider's
// request budget. The held client's watcher gets the refreshed token
// without ever being told its token fell below min_remaining
// (EVENT_UNAVAILABLE, which the broker sends at that moment when no new
// token has come: the broker's own clock judges, not the test's), its
// GetToken callers are served throughout, and the flood costs the
// provider only what the anonymous caller's part of the pass-through share
// allows.
//
// The budget is small (0.2 requests a second, burst 4) so that a refresh
// that must wait for it is late: without the shares (passthrough_share,
// passthrough_caller_share and passthrough_client_share all 1, the old
// behaviour) the flood takes the whole burst just before the refresh
// point, the refresh waits about 4 s for its request, and the watcher is
// told EVENT_UNAVAILABLE 1.5 s after the refresh point.
func TestPassthroughFloodSparesHeldClient(t *testing.T) {
	const (
		lifetime     = 8 * time.Second
		minRemaining = 500 * time.Millisecond // 1.5 s after the refresh point
		floodLead    = time.Second            // the flood starts this long before the refresh point
		flooders     = 16
		minFlood     = 1000
		afterRefresh = 100 // flood calls after the refresh
	)
	issuer, err := devissuer.New(devissuer.Config{Lifetime: lifetime, Clients: []devissuer.Client{
		{ID: heldID, Secret: heldSecret, Scopes: []string{"api/read"}},
		{ID: passID, Secret: passSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var heldRequests, passRequests atomic.Int64
	issuerHandler := issuer.Handler()
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _, _ := r.BasicAuth()
		if id, _ := url.QueryUnescape(user); id == heldID {
			heldRequests.Add(1)
		} else {
			passRequests.Add(1)
		}
		issuerHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(endpoint.Close)

	cfg := stackConfig(endpoint.URL + devissuer.TokenPath)
	cfg.Providers[0].RateLimit, cfg.Providers[0].Burst = 0.2, 4 // shares at their defaults
	cfg.Cache.MinRemaining = config.Duration(minRemaining)
	cfg.Cache.RefreshJitter = 0 // the refresh point is exactly 0.75 of the lifetime
	addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	s := &stack{issuer: issuer, addr: addr}
	client := s.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	heldToken := func() (*tokenbrokerv1.Token, error) {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		resp, err := client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
		return resp.GetToken(), err
	}
	first, err := heldToken()
	if err != nil {
		t.Fatalf("held client's GetToken: got %v, want a token", err)
	}

	// The watcher: the broker tells it when the token is refreshed, or
	// when the token falls below min_remaining before that.
	stream, err := client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: heldSelector("api/read")})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL ||
		ev.GetToken().GetAccessToken() != first.GetAccessToken() {
		t.Fatalf("watch: got %v, %v; want EVENT_INITIAL with the held token", ev.GetEvent(), err)
	}
	refreshed := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				watchErr <- err
				return
			}
			switch ev.GetEvent() {
			case tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED:
				close(refreshed)
				watchErr <- nil
				return
			case tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE:
				watchErr <- errors.New("EVENT_UNAVAILABLE before the refresh: " + ev.GetError().GetMessage())
				return
			}
		}
	}()

	// Pacing only: nothing is timed. The flood starts shortly before the
	// refresh point, as the watcher is the one to say when it was reached.
	select {
	case <-time.After(time.Until(first.GetRefreshAt().AsTime().Add(-floodLead))):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}

	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: flooders, MaxIdleConnsPerHost: flooders}}
	t.Cleanup(hc.CloseIdleConnections)
	var (
		statuses sync.Map // status code -> *atomic.Int64
		floodErr atomic.Value
		sent     atomic.Int64
		after    atomic.Int64 // calls sent after the refresh
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
	// done reports whether the flood has made its point: the refresh is
	// done and afterRefresh calls followed it, and minFlood were sent.
	done := func() bool {
		select {
		case <-refreshed:
			return after.Add(1) > afterRefresh && sent.Load() >= minFlood
		default:
			return false
		}
	}
	var flood sync.WaitGroup
	for range flooders {
		flood.Go(func() {
			for !done() && ctx.Err() == nil && floodErr.Load() == nil {
				sent.Add(1)
				post()
			}
		})
	}

	// The held client's GetToken callers, served all along.
	var served, heldFailures atomic.Int64
	var heldErr atomic.Value
	var callers sync.WaitGroup
	callers.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond) // pacing only
		defer tick.Stop()
		for {
			tok, err := heldToken()
			if err != nil {
				heldFailures.Add(1)
				heldErr.Store(err)
			} else {
				served.Add(1)
			}
			if tok.GetAccessToken() != "" && tok.GetAccessToken() != first.GetAccessToken() {
				return // the refreshed token
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	})

	var watchResult error
	select {
	case watchResult = <-watchErr:
	case <-ctx.Done():
		watchResult = errors.New("no refresh and no EVENT_UNAVAILABLE before the test's deadline")
	}
	if watchResult != nil {
		// Let the flood and the callers end before failing.
		cancel()
	}
	flood.Wait()
	callers.Wait()
	if watchResult != nil {
		t.Fatalf("held client's watcher: %v (the refresh lost the budget to the flood)", watchResult)
	}

	if v := floodErr.Load(); v != nil {
		t.Errorf("flood: %v", v)
	}
	if n := heldFailures.Load(); n > 0 {
		t.Errorf("held client's GetToken: %d calls failed (last: %v), want every call served", n, heldErr.Load())
	}
	if served.Load() == 0 {
		t.Error("held client's GetToken: no call served")
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
	if total < minFlood || total != sent.Load() {
		t.Errorf("flood: got %d answers to %d calls, want an answer to each of at least %d", total, sent.Load(), minFlood)
	}
	// The anonymous caller may spend a quarter of the pass-through half of
	// the budget, burst 1: one request over the test, not the budget.
	if got := passRequests.Load(); got > 2 {
		t.Errorf("flood requests that reached the token endpoint: got %d, want at most 2 (the anonymous caller's share)", got)
	}
	if got := heldRequests.Load(); got != 2 {
		t.Errorf("held client's requests at the token endpoint: got %d, want 2 (its first token and the refresh)", got)
	}
	t.Logf("flood: %d calls, %d of them reached the token endpoint; held client: %d calls served", total, passRequests.Load(), served.Load())
}
