package upstream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// scriptedTransport is an in-memory token endpoint (no sockets, so it is
// safe inside a synctest bubble). It answers request n with answers[n-1],
// or the last answer, and records when each request arrived.
type scriptedTransport struct {
	answers []func() *http.Response

	mu    sync.Mutex
	times []time.Time
}

func (s *scriptedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	s.mu.Lock()
	s.times = append(s.times, time.Now())
	n := len(s.times)
	s.mu.Unlock()
	resp := s.answers[min(n, len(s.answers))-1]()
	resp.Request = r
	return resp, nil
}

func (s *scriptedTransport) arrivals() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...)
}

func answer(status int, header http.Header, body string) func() *http.Response {
	return func() *http.Response {
		h := http.Header{}
		for k, v := range header {
			h[k] = v
		}
		return &http.Response{
			StatusCode: status,
			Header:     h,
			Body:       io.NopCloser(strings.NewReader(body)),
		}
	}
}

const okBody = `{"access_token":"tok","token_type":"Bearer","expires_in":3600}`

func newSyncClient(t *testing.T, tr http.RoundTripper, edit func(*Provider)) *Client {
	t.Helper()
	p := testProvider("https://auth.example.com/oauth2/token")
	if edit != nil {
		edit(&p)
	}
	o := testOptions()
	o.HTTPClient, o.Logger = &http.Client{Transport: tr}, slog.New(slog.DiscardHandler)
	c, err := New(p, o)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	return c
}

func TestRetryAfterHonouredInTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{
			answer(http.StatusTooManyRequests, http.Header{"Retry-After": {"3"}}, ""),
			answer(http.StatusOK, nil, okBody),
		}}
		c := newSyncClient(t, tr, nil)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		tok, err := c.Fetch(ctx, testRequest())
		if err != nil {
			t.Fatalf("Fetch: got error %v, want nil", err)
		}
		at := tr.arrivals()
		if len(at) != 2 {
			t.Fatalf("requests: got %d, want 2", len(at))
		}
		if gap := at[1].Sub(at[0]); gap < 3*time.Second {
			t.Errorf("second request: got it %v after the first, want >= 3s (Retry-After)", gap)
		}
		if !tok.IssuedAt.Equal(at[1]) {
			t.Errorf("IssuedAt: got %v, want the second request's time %v", tok.IssuedAt, at[1])
		}
	})
}

func TestBackoffWithinCeiling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{
			answer(http.StatusServiceUnavailable, nil, ""),
			answer(http.StatusServiceUnavailable, nil, ""),
			answer(http.StatusOK, nil, okBody),
		}}
		c := newSyncClient(t, tr, nil)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if _, err := c.Fetch(ctx, testRequest()); err != nil {
			t.Fatalf("Fetch: got error %v, want nil", err)
		}
		at := tr.arrivals()
		if len(at) != 3 {
			t.Fatalf("requests: got %d, want 3", len(at))
		}
		for i, ceiling := range []time.Duration{testOptions().BaseBackoff, 2 * testOptions().BaseBackoff} {
			if gap := at[i+1].Sub(at[i]); gap > ceiling {
				t.Errorf("wait before retry %d: got %v, want <= %v", i+1, gap, ceiling)
			}
		}
	})
}

func TestBudgetWaitInTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{answer(http.StatusOK, nil, okBody)}}
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit = 0.5 // one request per 2s
			p.Burst = 1
		})
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		for i := range 3 {
			if _, err := c.Fetch(ctx, testRequest()); err != nil {
				t.Fatalf("Fetch %d: got error %v, want nil", i, err)
			}
		}
		at := tr.arrivals()
		for i := 1; i < len(at); i++ {
			if gap := at[i].Sub(at[i-1]); gap < 2*time.Second {
				t.Errorf("request %d: got it %v after the previous, want >= 2s (budget)", i+1, gap)
			}
		}
		// With 1s left the next one does not fit: Local throttled, nothing sent.
		short, cancelShort := context.WithTimeout(t.Context(), time.Second)
		defer cancelShort()
		_, err := c.Fetch(short, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || ue.Kind != ErrThrottled || !ue.Local || ue.RetryAfter != 2*time.Second {
			t.Errorf("Fetch with 1s left: got %v, want Local ErrThrottled with RetryAfter 2s", err)
		}
		if n := len(tr.arrivals()); n != 3 {
			t.Errorf("requests: got %d, want 3", n)
		}
	})
}

func TestBudgetStopsRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{
			answer(http.StatusServiceUnavailable, nil, ""),
			answer(http.StatusOK, nil, okBody),
		}}
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit = 0.01 // one request per 100s
			p.Burst = 1
		})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := c.Fetch(ctx, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || ue.Kind != ErrUnavailable || ue.Local || ue.Status != http.StatusServiceUnavailable {
			t.Fatalf("Fetch: got %v, want the upstream 503 error", err)
		}
		if n := len(tr.arrivals()); n != 1 {
			t.Errorf("requests: got %d, want 1", n)
		}
	})
}

func TestBudgetWaitCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &scriptedTransport{answers: []func() *http.Response{answer(http.StatusOK, nil, okBody)}}
		c := newSyncClient(t, tr, func(p *Provider) {
			p.RateLimit = 0.01
			p.Burst = 1
		})
		if _, err := c.Fetch(t.Context(), testRequest()); err != nil {
			t.Fatalf("first Fetch: got error %v, want nil", err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := c.Fetch(ctx, testRequest())
			done <- err
		}()
		time.Sleep(time.Second) // fake time: the Fetch is waiting for the budget
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Fetch: got %v, want context.Canceled", err)
		}
		if n := len(tr.arrivals()); n != 1 {
			t.Errorf("requests: got %d, want 1", n)
		}
	})
}

func TestSleepCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := sleepCtx(t.Context(), 5*time.Second); err != nil {
			t.Fatalf("sleepCtx: got %v, want nil", err)
		}
		if got := time.Since(start); got != 5*time.Second {
			t.Errorf("slept: got %v, want 5s", got)
		}
		if err := sleepCtx(t.Context(), 0); err != nil {
			t.Errorf("sleepCtx(0): got %v, want nil", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := sleepCtx(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("sleepCtx past deadline: got %v, want DeadlineExceeded", err)
		}
		if got := time.Since(start); got != 6*time.Second {
			t.Errorf("elapsed: got %v, want 6s", got)
		}
	})
}
