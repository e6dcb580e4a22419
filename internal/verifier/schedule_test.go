package verifier

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// roundTripFunc is an in-memory HTTP transport.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestScheduledRefresh: Run fetches the keys at once and every
// RefreshInterval; after a failure it retries after MinRefreshInterval,
// doubling, and the keys fetched before keep verifying meanwhile.
func TestScheduledRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newKey(t, jose.ES256, "k1")
		body, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k.pub}})
		if err != nil {
			t.Fatal(err)
		}
		var hits atomic.Int64
		var failing atomic.Bool
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			hits.Add(1)
			if failing.Load() {
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: io.NopCloser(strings.NewReader("down")), Request: r}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader(string(body))), Request: r}, nil
		})
		const issuer = "https://issuer.example"
		cfg := testConfig(Provider{Name: "p", Issuer: issuer, JWKSURI: issuer + "/jwks"})
		cfg.HTTPClient = &http.Client{Transport: rt}
		cfg.RefreshInterval = time.Hour
		cfg.MinRefreshInterval = 30 * time.Second
		v, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = v.Run(ctx); close(done) }()
		step := func(d time.Duration, want int64) {
			t.Helper()
			time.Sleep(d)
			synctest.Wait()
			if got := hits.Load(); got != want {
				t.Fatalf("after %s: JWKS requests = %d, want %d", d, got, want)
			}
		}
		step(0, 1)
		step(time.Hour-time.Second, 1)
		step(time.Second, 2)
		failing.Store(true)
		step(time.Hour, 3)
		step(30*time.Second, 4)
		step(59*time.Second, 4)
		step(time.Second, 5) // the retry interval doubled to 1m
		tok := k.sign(t, claimsFor(issuer), nil)
		if _, err := v.Verify(context.Background(), Request{Token: tok}); err != nil {
			t.Errorf("Verify with stale keys during the outage = %v", err)
		}
		failing.Store(false)
		step(2*time.Minute, 6)
		step(time.Hour, 7) // back to the interval
		cancel()
		<-done
		v.Close()
	})
}
