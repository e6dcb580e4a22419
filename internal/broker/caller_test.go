package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestCallerReachesUpstreamNotTheKey (issue 10, point 2): the caller's
// identity and the pass-through flag reach the upstream request, for the
// provider's pass-through limits, but the identity is not part of the
// cache key: two callers presenting the same credentials share one token
// and one upstream request.
func TestCallerReachesUpstreamNotTheKey(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []upstream.Request
	)
	f := lifetimeFetcher(time.Hour)
	inner := f.fn
	f.fn = func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		return inner(ctx, n, r)
	}
	b := newBroker(t, f, Config{})
	pass := func(caller string) Request {
		return Request{Caller: caller, Selector: Selector{
			Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String("sec")},
			Scopes:      []string{"a"},
		}}
	}
	first := mustGet(t, b, pass("apikey:one"))
	second := mustGet(t, b, pass("anonymous"))
	if first.KeyID != second.KeyID || first.AccessToken != second.AccessToken {
		t.Errorf("two callers with the same credentials: got keys %s and %s, want one key and one token", first.KeyID, second.KeyID)
	}
	mustGet(t, b, Request{Caller: "apikey:one", Selector: Selector{Client: "held"}})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("upstream requests: got %d, want 2", len(seen))
	}
	if r := seen[0]; !r.Passthrough || r.Caller != "apikey:one" {
		t.Errorf("pass-through request: got Passthrough %v, Caller %q; want true, %q", r.Passthrough, r.Caller, "apikey:one")
	}
	if r := seen[1]; r.Passthrough {
		t.Error("broker-held request: got Passthrough true, want false")
	}
}

// TestCallerLimitHoldsOffOnlyThatCaller (issue 10, point 2, review): when
// the upstream client refuses a pass-through caller for its own budget
// share (a Local ErrThrottled; nothing was sent), the key is not put in
// hold-off: another caller presenting the same credentials is still
// fetched for at once.
func TestCallerLimitHoldsOffOnlyThatCaller(t *testing.T) {
	f := lifetimeFetcher(time.Hour)
	inner := f.fn
	f.fn = func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
		if r.Caller == "apikey:greedy" {
			return upstream.Token{}, &upstream.Error{Kind: upstream.ErrThrottled, Provider: "p", Local: true,
				RetryAfter: time.Minute, Description: "pass-through limit of the caller reached"}
		}
		return inner(ctx, n, r)
	}
	b := newBroker(t, f, Config{})
	pass := func(caller string) Request {
		return Request{Caller: caller, Selector: Selector{
			Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String("sec")},
			Scopes:      []string{"a"},
		}}
	}
	if _, err := b.GetToken(context.Background(), pass("apikey:greedy")); !errors.Is(err, upstream.ErrThrottled) {
		t.Fatalf("greedy caller: got %v, want its own limit (ErrThrottled)", err)
	}
	if _, err := b.GetToken(context.Background(), pass("apikey:other")); err != nil {
		t.Fatalf("other caller with the same credentials: got %v, want a token (the key must not be held off)", err)
	}
}
