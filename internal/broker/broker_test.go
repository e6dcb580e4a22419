package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// stubFetcher is a Fetcher whose behaviour is a function field; it counts
// calls.
type stubFetcher struct {
	calls atomic.Int64
	fn    func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error)
}

func (s *stubFetcher) Fetch(ctx context.Context, r upstream.Request) (upstream.Token, error) {
	return s.fn(ctx, s.calls.Add(1), r)
}

// lifetimeFetcher issues token "tok-N" (N = call number) living d.
func lifetimeFetcher(d time.Duration) *stubFetcher {
	return &stubFetcher{fn: func(_ context.Context, n int64, r upstream.Request) (upstream.Token, error) {
		now := time.Now()
		return upstream.Token{AccessToken: secret.String(fmt.Sprintf("tok-%d", n)), TokenType: "Bearer",
			Scopes: r.Scopes, IssuedAt: now, ExpiresAt: now.Add(d)}, nil
	}}
}

func newCache(t *testing.T, maxCost int64) *tokencache.Cache {
	t.Helper()
	c, err := tokencache.New(maxCost, tokencache.RandomKeyring())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// testConfig fills the fields cfg leaves zero with the values the tests
// assume (config's defaults, but jitter off): refresh fraction 0.75,
// min_remaining 30s, fetch timeout 30s, retries from 1s to 1m, the default
// logger.
func testConfig(cfg Config) Config {
	if cfg.RefreshFraction == 0 {
		cfg.RefreshFraction = 0.75
	}
	if cfg.MinRemaining == 0 {
		cfg.MinRemaining = 30 * time.Second
	}
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// newBroker builds a broker with provider "p", broker-held client "held"
// and pass-through enabled. Jitter is off unless cfg sets it.
func newBroker(t *testing.T, f Fetcher, cfg Config) *Broker {
	t.Helper()
	cfg.Providers = map[string]Fetcher{"p": f}
	cfg.Clients = map[string]Client{"held": {Provider: "p", ClientID: "held-id", ClientSecret: "held-secret"}}
	cfg.Passthrough = true
	if cfg.Cache == nil {
		cfg.Cache = newCache(t, 1<<20)
	}
	b, err := New(testConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func held(scopes ...string) Request {
	return Request{Selector: Selector{Client: "held", Scopes: scopes}}
}

func mustGet(t *testing.T, b *Broker, req Request) Token {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	return tok
}

// TestServingRule walks one key through its lifetime on a fake clock:
// 10-minute tokens, refresh point at 75% (7m30s), min_remaining 30s.
func TestServingRule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := lifetimeFetcher(10 * time.Minute)
		b := newBroker(t, f, Config{})
		start := time.Now()
		check := func(at time.Duration, req Request, wantTok string, wantCalls int64) {
			t.Helper()
			time.Sleep(time.Until(start.Add(at)))
			tok := mustGet(t, b, req)
			if got := tok.AccessToken.Reveal(); got != wantTok {
				t.Errorf("at %v: got token %q, want %q", at, got, wantTok)
			}
			if got := f.calls.Load(); got != wantCalls {
				t.Errorf("at %v: got %d upstream calls, want %d", at, got, wantCalls)
			}
		}
		check(0, held("a"), "tok-1", 1)
		check(time.Minute, held("a"), "tok-1", 1)
		check(7*time.Minute+29*time.Second, held("a"), "tok-1", 1)
		// At the refresh point the next caller fetches a new token.
		check(7*time.Minute+30*time.Second, held("a"), "tok-2", 2)
		tok := mustGet(t, b, held("a"))
		if want := start.Add(7*time.Minute + 30*time.Second); !tok.IssuedAt.Equal(want) {
			t.Errorf("IssuedAt = %v, want %v", tok.IssuedAt, want)
		}
		if want := tok.IssuedAt.Add(10 * time.Minute); !tok.ExpiresAt.Equal(want) {
			t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt, want)
		}
		if want := tok.IssuedAt.Add(7*time.Minute + 30*time.Second); !tok.RefreshAt.Equal(want) {
			t.Errorf("RefreshAt = %v, want %v", tok.RefreshAt, want)
		}
	})
}

// TestMinTTL: a caller may ask for up to the tokens' lifetime less
// min_remaining (9m30s of 10m here); a token with less left is replaced
// (also before its refresh point), and more than that is refused without
// an upstream request, with an error that states the largest min_ttl.
func TestMinTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := lifetimeFetcher(10 * time.Minute)
		b := newBroker(t, f, Config{})
		mustGet(t, b, held())
		need := 7*time.Minute + 30*time.Second
		time.Sleep(10*time.Minute - need)
		if got := mustGet(t, b, Request{Selector: held().Selector, MinTTL: need}).AccessToken.Reveal(); got != "tok-1" {
			t.Errorf("min_ttl %v with exactly that left: got %q, want tok-1", need, got)
		}
		time.Sleep(time.Second)
		if got := mustGet(t, b, Request{Selector: held().Selector, MinTTL: need}).AccessToken.Reveal(); got != "tok-2" {
			t.Errorf("min_ttl %v with a second less left: got %q, want tok-2", need, got)
		}
		// tok-2 now has 7m30s left: enough for need; a caller who wants
		// more than the refresh window (but no more than a new token
		// gives) gets a new token.
		time.Sleep(10*time.Minute - need)
		if got := mustGet(t, b, Request{Selector: held().Selector, MinTTL: need + time.Second}).AccessToken.Reveal(); got != "tok-3" {
			t.Errorf("min_ttl %v beyond the refresh window: got %q, want a new token tok-3", need+time.Second, got)
		}
		// More than the tokens' lifetime less min_remaining is refused
		// without an upstream request, and the error says the numbers.
		for _, tooLong := range []time.Duration{9*time.Minute + 31*time.Second, 11 * time.Minute} {
			_, err := b.GetToken(context.Background(), Request{Selector: held().Selector, MinTTL: tooLong})
			if !errors.Is(err, ErrTokenTooShort) || !strings.Contains(err.Error(), "at most 9m30s") || !strings.Contains(err.Error(), "10m0s") {
				t.Errorf("min_ttl %v: got %v, want ErrTokenTooShort naming the largest min_ttl 9m30s and the 10m0s lifetime", tooLong, err)
			}
		}
		if got := f.calls.Load(); got != 3 {
			t.Errorf("got %d upstream calls, want 3", got)
		}
	})
}

// TestShortLivedTokensAreRemembered: an endpoint issuing tokens that live
// less than min_remaining gets one request per negative_ttl, not one per
// call, and the error says why.
func TestShortLivedTokensAreRemembered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := lifetimeFetcher(20 * time.Second)
		b := newBroker(t, f, Config{NegativeTTL: 5 * time.Second})
		for range 5 {
			_, err := b.GetToken(context.Background(), held())
			if !errors.Is(err, ErrTokenTooShort) || !strings.Contains(err.Error(), "min_remaining") {
				t.Fatalf("got %v, want ErrTokenTooShort naming min_remaining", err)
			}
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("got %d upstream calls, want 1", got)
		}
	})
}

// TestFailedRefreshServesOldTokenUntilMinRemaining: past the refresh point
// a failing upstream leaves the old token in service while it has at least
// min_remaining, and never after.
func TestFailedRefreshServesOldTokenUntilMinRemaining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		ok := lifetimeFetcher(10 * time.Minute)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if down.Load() {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrUnavailable, Provider: "p", Status: 503}
			}
			return ok.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{NegativeTTL: time.Minute})
		start := time.Now()
		mustGet(t, b, held())
		down.Store(true)
		time.Sleep(8 * time.Minute)
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-1" {
			t.Errorf("after failed refresh: got %q, want tok-1", got)
		}
		time.Sleep(time.Until(start.Add(10*time.Minute - 30*time.Second)))
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-1" {
			t.Errorf("with exactly min_remaining left: got %q, want tok-1", got)
		}
		time.Sleep(time.Nanosecond)
		_, err := b.GetToken(context.Background(), held())
		if !errors.Is(err, upstream.ErrUnavailable) {
			t.Errorf("with less than min_remaining left: got %v, want ErrUnavailable", err)
		}
		calls := f.calls.Load()
		down.Store(false)
		// A retryable failure holds the key off for its backoff step (at
		// most 5 s for a key without a servable token); then the next
		// caller's request finds the endpoint back.
		time.Sleep(starvedRetryMax)
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got == "tok-1" {
			t.Errorf("after recovery: got the old token")
		}
		if got := f.calls.Load(); got != calls+1 {
			t.Errorf("got %d calls, want %d", got, calls+1)
		}
	})
}

func TestNegativeTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &stubFetcher{fn: func(context.Context, int64, upstream.Request) (upstream.Token, error) {
			return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidScope, Provider: "p", Status: 400, Code: "invalid_scope"}
		}}
		b := newBroker(t, f, Config{NegativeTTL: 5 * time.Second})
		for range 3 {
			if _, err := b.GetToken(context.Background(), held("x")); !errors.Is(err, upstream.ErrInvalidScope) {
				t.Fatalf("got %v, want ErrInvalidScope", err)
			}
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("within negative_ttl: got %d calls, want 1", got)
		}
		// Another key is not affected.
		b.GetToken(context.Background(), held("y"))
		if got := f.calls.Load(); got != 2 {
			t.Errorf("other key: got %d calls, want 2", got)
		}
		time.Sleep(5 * time.Second)
		b.GetToken(context.Background(), held("x"))
		if got := f.calls.Load(); got != 3 {
			t.Errorf("after negative_ttl: got %d calls, want 3", got)
		}
	})
}

// TestCallerCancelDoesNotCancelSharedFetch: one caller giving up leaves the
// shared fetch running for the others.
func TestCallerCancelDoesNotCancelSharedFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		inner := lifetimeFetcher(time.Hour)
		var fetchErr atomic.Value
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			<-release
			if err := ctx.Err(); err != nil {
				fetchErr.Store(err)
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{})
		ctxA, cancelA := context.WithCancel(context.Background())
		errA := make(chan error, 1)
		go func() { _, err := b.GetToken(ctxA, held()); errA <- err }()
		synctest.Wait() // A starts the flight.
		tokB := make(chan Token, 1)
		go func() { tokB <- mustGet(t, b, held()) }()
		synctest.Wait()
		cancelA()
		if err := <-errA; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller: got %v, want context.Canceled", err)
		}
		close(release)
		if got := (<-tokB).AccessToken.Reveal(); got != "tok-1" {
			t.Errorf("other caller: got %q, want tok-1", got)
		}
		if err := fetchErr.Load(); err != nil {
			t.Errorf("shared fetch saw %v, want a live context", err)
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("got %d calls, want 1", got)
		}
	})
}

// TestRejectedSetsCostNoErrors: a cache too small to admit anything never
// makes a caller fail, and concurrent callers still share one fetch; a
// dropped token costs one more upstream request later, nothing else.
func TestRejectedSetsCostNoErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		inner := lifetimeFetcher(time.Hour)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			<-release
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{Cache: newCache(t, 1)})
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-1" {
					t.Errorf("got %q, want tok-1", got)
				}
			})
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		if got := f.calls.Load(); got != 1 {
			t.Errorf("got %d calls, want 1", got)
		}
		// Nothing was cached, and nothing else holds the token (the
		// cache is its one home, bounded by max_cost): the next caller
		// gets a new one, at the cost of one more upstream request.
		if got := mustGet(t, b, held()).AccessToken.Reveal(); got != "tok-2" {
			t.Errorf("got %q, want tok-2", got)
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("got %d calls, want 2", got)
		}
	})
}

func TestResolveErrors(t *testing.T) {
	f := lifetimeFetcher(time.Hour)
	b := newBroker(t, f, Config{})
	noPass, err := New(testConfig(Config{Providers: map[string]Fetcher{"p": f}, Cache: newCache(t, 1<<20)}))
	if err != nil {
		t.Fatal(err)
	}
	creds := &Credentials{Provider: "p", ClientID: "id", ClientSecret: "s"}
	for _, tc := range []struct {
		name string
		b    *Broker
		sel  Selector
		want error
	}{
		{"unknown client", b, Selector{Client: "nope"}, ErrUnknownClient},
		{"unknown provider", b, Selector{Credentials: &Credentials{Provider: "q", ClientID: "id", ClientSecret: "s"}}, ErrUnknownProvider},
		{"passthrough disabled", noPass, Selector{Credentials: creds}, ErrPassthroughDisabled},
		{"no credentials", b, Selector{}, ErrInvalidArgument},
		{"both credentials", b, Selector{Client: "held", Credentials: creds}, ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.b.GetToken(context.Background(), Request{Selector: tc.sel})
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if got := f.calls.Load(); got != 0 {
		t.Errorf("got %d upstream calls, want 0", got)
	}
}

func TestKeys(t *testing.T) {
	b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
	key := func(sel Selector) string {
		t.Helper()
		tg, err := b.resolve(sel)
		if err != nil {
			t.Fatal(err)
		}
		return tg.key
	}
	pass := func(id, sec string, scopes ...string) Selector {
		return Selector{Credentials: &Credentials{Provider: "p", ClientID: id, ClientSecret: secret.String(sec)}, Scopes: scopes}
	}
	base := key(pass("id", "sec", "a", "b"))
	if got := key(pass("id", "sec", "b", "a", "b")); got != base {
		t.Error("scope order or duplicates changed the key")
	}
	if got := key(pass("id", "held-secret")); got == key(pass("id", "other")) {
		t.Error("a different secret gave the same key")
	}
	// The broker-held client and a caller that proves the same credentials
	// share an entry; field boundaries cannot be shifted.
	if key(Selector{Client: "held"}) != key(pass("held-id", "held-secret")) {
		t.Error("held client and identical pass-through credentials differ")
	}
	distinct := map[string]Selector{
		"base":      pass("id", "sec", "a", "b"),
		"shift":     pass("ids", "ec", "a", "b"),
		"scope-cat": pass("id", "sec", "ab"),
		"aud":       {Credentials: pass("id", "sec").Credentials, Scopes: []string{"a", "b"}, Audience: "x"},
		"res":       {Credentials: pass("id", "sec").Credentials, Scopes: []string{"a", "b"}, Resource: "x"},
		"none":      pass("id", "sec"),
		"empty":     pass("id", "sec", ""),
	}
	seen := map[string]string{}
	for name, sel := range distinct {
		k := key(sel)
		if other, dup := seen[k]; dup {
			t.Errorf("selectors %q and %q share a key", name, other)
		}
		seen[k] = name
	}
	if id := keyID(base); len(id) != 16 {
		t.Errorf("key id %q: got length %d, want 16", id, len(id))
	}
}
