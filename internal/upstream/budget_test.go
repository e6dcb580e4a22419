package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// passRequest is a pass-through request of caller for client id.
func passRequest(caller, id string) Request {
	return Request{ClientID: id, ClientSecret: secret.String("guessed-" + id), Passthrough: true, Caller: caller}
}

// TestPassthroughShareKeepsHeldBudget (issue 10, point 2): with the issue's
// budget of 2 requests/s, 20 pass-through callers with their own client
// ids hammering the provider for a minute spend at most its pass-through
// half, and a broker-held client asking once a second is served every
// time, never throttled.
func TestPassthroughShareKeepsHeldBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var passSent atomic.Int64
		tr := &scriptedTransport{answers: []func() *http.Response{answer(http.StatusOK, nil, okBody)}}
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit, p.Burst = 2, 2
			p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare = 0.5, 1, 1
		})
		const span = time.Minute
		ctx, cancel := context.WithTimeout(t.Context(), span)
		defer cancel()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				r := passRequest(fmt.Sprintf("caller-%d", i), fmt.Sprintf("client-%d", i))
				for ctx.Err() == nil {
					fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
					_, err := c.Fetch(fctx, r)
					fcancel()
					var ue *Error
					switch {
					case err == nil:
						passSent.Add(1)
					case errors.As(err, &ue) && ue.Local:
						_ = sleepCtx(ctx, max(ue.RetryAfter, 10*time.Millisecond))
					default:
						_ = sleepCtx(ctx, 10*time.Millisecond)
					}
				}
			})
		}
		held := 0
		for ctx.Err() == nil {
			fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := c.Fetch(fctx, testRequest())
			fcancel()
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				t.Fatalf("held Fetch %d: got %v, want a token", held, err)
			}
			held++
			_ = sleepCtx(ctx, time.Second)
		}
		cancel()
		wg.Wait()
		// The pass-through bucket holds 1 request and earns 1 a second.
		if got, most := passSent.Load(), int64(1+span/time.Second); got > most {
			t.Errorf("pass-through requests sent: got %d, want at most %d (half the budget)", got, most)
		}
		if got := passSent.Load(); got < int64(span/time.Second)/2 {
			t.Errorf("pass-through requests sent: got %d, want them to get their share", got)
		}
		if held < int(span/time.Second)/2 {
			t.Errorf("held fetches: got %d in %v, want one about every second", held, span)
		}
	})
}

// TestPassthroughCallerAndClientLimits (issue 10, point 2): one caller
// cannot spend more than its share of the pass-through budget, nor can
// all callers together for one client id; refusals are Local ErrThrottled
// errors with RetryAfter, sent nowhere, and other callers and client ids
// keep their own shares.
func TestPassthroughCallerAndClientLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{answer(http.StatusOK, nil, okBody)}}
		// Pass-through: 50/s, burst 50; each caller and client id: 12.5/s, burst 12.
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit, p.Burst = 100, 100
			p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare = 0.5, 0.25, 0.25
		})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		burst := func(n int, req func(i int) Request, wantDesc string) (ok int) {
			t.Helper()
			for i := range n {
				_, err := c.Fetch(ctx, req(i))
				if err == nil {
					ok++
					continue
				}
				var ue *Error
				if !errors.As(err, &ue) || ue.Kind != ErrThrottled || !ue.Local || ue.RetryAfter <= 0 || ue.Description != wantDesc {
					t.Fatalf("Fetch %d: got %v, want Local ErrThrottled %q with RetryAfter", i, err, wantDesc)
				}
			}
			return ok
		}
		// One anonymous caller, a new client id each time: its own limit.
		if got := burst(100, func(i int) Request { return passRequest("anonymous", fmt.Sprint("random-", i)) }, descCallerLimit); got != 12 {
			t.Errorf("one caller's burst: got %d served, want 12", got)
		}
		// Many callers, one client id: the client id's limit.
		if got := burst(100, func(i int) Request { return passRequest(fmt.Sprint("caller-", i), "victim") }, descClientLimit); got != 12 {
			t.Errorf("one client id's burst: got %d served, want 12", got)
		}
		// Another caller and client id still have theirs.
		if got := burst(5, func(int) Request { return passRequest("apikey:other", "other-client") }, ""); got != 5 {
			t.Errorf("other caller: got %d served, want 5", got)
		}
		if n := len(tr.arrivals()); n != 12+12+5 {
			t.Errorf("requests sent: got %d, want %d", n, 12+12+5)
		}
		// The caller's limit refills at its rate.
		time.Sleep(time.Second)
		if got := burst(20, func(i int) Request { return passRequest("anonymous", fmt.Sprint("later-", i)) }, descCallerLimit); got != 12 {
			t.Errorf("one caller after 1s: got %d served, want 12 (12.5/s)", got)
		}
	})
}

// TestPassthroughRefusalTakesNothing: when one of the buckets a
// pass-through request needs refuses it, the others get back what was
// reserved, and held requests are never limited by the pass-through
// buckets.
func TestPassthroughRefusalTakesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{answer(http.StatusOK, nil, okBody)}}
		// Pass-through: 1/s, burst 4; caller: burst 2; client id: burst 1.
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit, p.Burst = 2, 8
			p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare = 0.5, 0.5, 0.25
		})
		short := func() context.Context {
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			t.Cleanup(cancel)
			return ctx
		}
		if _, err := c.Fetch(short(), passRequest("a", "x")); err != nil {
			t.Fatalf("first: got %v, want a token", err)
		}
		// Client id x is spent: the caller's reservation is given back...
		if _, err := c.Fetch(short(), passRequest("a", "x")); !errors.Is(err, ErrThrottled) {
			t.Fatalf("second for x: got %v, want ErrThrottled", err)
		}
		// ...so caller a still has the second request of its burst.
		if _, err := c.Fetch(short(), passRequest("a", "y")); err != nil {
			t.Fatalf("a for y: got %v, want a token (refused reservations are cancelled)", err)
		}
		// Pass-through has 2 of 4 left: callers b and c take them; d is
		// refused by the share, and gives back its caller and client
		// reservations.
		for _, r := range []Request{passRequest("b", "b1"), passRequest("c", "c1")} {
			if _, err := c.Fetch(short(), r); err != nil {
				t.Fatalf("%s: got %v, want a token", r.Caller, err)
			}
		}
		_, err := c.Fetch(short(), passRequest("d", "d1"))
		var ue *Error
		if !errors.As(err, &ue) || !ue.Local || ue.Description != descPassthrough {
			t.Fatalf("d: got %v, want the pass-through share exhausted", err)
		}
		if got := c.budget.callers.size(); got != 4 {
			t.Errorf("callers tracked: got %d, want 4", got)
		}
		// Held requests take the rest of the provider's burst: 8 - 4.
		for i := range 4 {
			if _, err := c.Fetch(short(), testRequest()); err != nil {
				t.Fatalf("held %d: got %v, want a token", i, err)
			}
		}
		if _, err := c.Fetch(short(), testRequest()); !errors.Is(err, ErrThrottled) {
			t.Errorf("held beyond the burst: got %v, want ErrThrottled", err)
		}
		// After 1s d's own buckets are untouched: the share refills, and d
		// gets through at once.
		time.Sleep(time.Second)
		if _, err := c.Fetch(short(), passRequest("d", "d1")); err != nil {
			t.Errorf("d after 1s: got %v, want a token", err)
		}
	})
}

// TestKeyedLimitersBounded: the per-key buckets are bounded; buckets that
// have filled up again make room for new keys, and while none has, a new
// key is refused (another key's limit is never reset).
func TestKeyedLimitersBounded(t *testing.T) {
	k := newKeyedLimiters(rate.Limit(1), 1, 3)
	t0 := time.Unix(1000, 0)
	for _, key := range []string{"a", "b", "c"} {
		if _, _, ok := k.reserve(key, t0); !ok {
			t.Fatalf("reserve(%q): got refused, want ok", key)
		}
	}
	res, d, ok := k.reserve("d", t0)
	if ok || res != nil || d < minKeyRetryAfter {
		t.Errorf("reserve(d) when full: got ok=%v res=%v d=%v, want refused with no bucket and d >= %v", ok, res, d, minKeyRetryAfter)
	}
	if _, _, ok := k.reserve("a", t0); ok {
		t.Error("reserve(a) again at once: got ok, want refused (its bucket is empty)")
	}
	t1 := t0.Add(time.Second)
	if _, _, ok := k.reserve("d", t1); !ok {
		t.Error("reserve(d) after the buckets refilled: got refused, want ok")
	}
	if got := k.size(); got > 3 {
		t.Errorf("size: got %d, want at most 3", got)
	}
	// Many keys over time: never more than the bound.
	for i := range 1000 {
		k.reserve(fmt.Sprint("k", i), t1.Add(time.Duration(i)*100*time.Millisecond))
		if got := k.size(); got > 3 {
			t.Fatalf("size after %d keys: got %d, want at most 3", i, got)
		}
	}
}
