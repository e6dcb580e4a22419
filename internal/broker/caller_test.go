package broker

import (
	"context"
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
