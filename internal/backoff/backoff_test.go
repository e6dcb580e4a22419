package backoff

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestCeiling: the ceiling doubles from Base, stops at Max, and does not
// overflow at large n or with a Max near the largest duration.
func TestCeiling(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{-1, 100 * time.Millisecond},
		{0, 100 * time.Millisecond},
		{1, 200 * time.Millisecond},
		{5, 3200 * time.Millisecond},
		{6, 5 * time.Second},
		{63, 5 * time.Second},
		{1 << 30, 5 * time.Second},
		{math.MaxInt, 5 * time.Second},
	} {
		if got := p.Ceiling(tc.n); got != tc.want {
			t.Errorf("Ceiling(%d): got %v, want %v", tc.n, got, tc.want)
		}
	}
	huge := Policy{Base: time.Nanosecond, Max: math.MaxInt64}
	for _, n := range []int{62, 63, 64, 100, math.MaxInt} {
		if got := huge.Ceiling(n); got <= 0 || (n >= 63 && got != math.MaxInt64) {
			t.Errorf("huge Ceiling(%d): got %v, want positive and capped at MaxInt64 from n = 63", n, got)
		}
	}
	if got := (Policy{Base: time.Second, Max: time.Second}).Ceiling(10); got != time.Second {
		t.Errorf("Base = Max: got %v, want %v", got, time.Second)
	}
}

// TestDelayBounds: a delay is in [0, Ceiling(n)], both ends reachable
// (full jitter), with a real random source too.
func TestDelayBounds(t *testing.T) {
	p := Policy{Base: time.Second, Max: time.Minute}
	low := p
	low.Rand = func(int64) int64 { return 0 }
	high := p
	var asked []int64
	high.Rand = func(n int64) int64 { asked = append(asked, n); return n - 1 }
	for n := 0; n < 10; n++ {
		c := p.Ceiling(n)
		if got := low.Delay(n, 0); got != 0 {
			t.Errorf("Delay(%d) with the lowest draw: got %v, want 0", n, got)
		}
		if got := high.Delay(n, 0); got != c {
			t.Errorf("Delay(%d) with the highest draw: got %v, want the ceiling %v", n, got, c)
		}
		if asked[len(asked)-1] != int64(c)+1 {
			t.Errorf("Delay(%d): asked Rand for [0, %d), want [0, %d)", n, asked[len(asked)-1], int64(c)+1)
		}
	}
	r := Policy{Base: time.Millisecond, Max: 8 * time.Millisecond, Rand: rand.New(rand.NewPCG(1, 2)).Int64N}
	for i := 0; i < 1000; i++ {
		n := i % 6
		if got := r.Delay(n, 0); got < 0 || got > r.Ceiling(n) {
			t.Fatalf("Delay(%d): got %v, want in [0, %v]", n, got, r.Ceiling(n))
		}
	}
	// nil Rand uses math/rand/v2.
	if got := (Policy{Base: time.Millisecond, Max: time.Millisecond}).Delay(3, 0); got < 0 || got > time.Millisecond {
		t.Errorf("default Rand: got %v, want in [0, 1ms]", got)
	}
}

// TestDelayRetryAfter: a longer Retry-After wins, a shorter one does not
// shorten the jittered wait, and the wait is never negative.
func TestDelayRetryAfter(t *testing.T) {
	p := Policy{Base: time.Second, Max: 4 * time.Second, Rand: func(n int64) int64 { return n / 2 }}
	if got := p.Delay(0, 10*time.Second); got != 10*time.Second {
		t.Errorf("longer Retry-After: got %v, want 10s", got)
	}
	if got, want := p.Delay(2, time.Millisecond), p.Jitter(4*time.Second); got != want {
		t.Errorf("shorter Retry-After: got %v, want the jittered %v", got, want)
	}
	if got := p.Delay(0, -time.Second); got < 0 {
		t.Errorf("negative Retry-After: got %v, want >= 0", got)
	}
}

// TestJitterEdges: a zero or negative ceiling waits 0 without calling
// Rand; the largest ceiling does not overflow the Rand bound.
func TestJitterEdges(t *testing.T) {
	called := false
	p := Policy{Rand: func(n int64) int64 { called = true; return n - 1 }}
	if got := p.Jitter(0); got != 0 || called {
		t.Errorf("Jitter(0): got %v (Rand called %v), want 0 without Rand", got, called)
	}
	if got := p.Jitter(-time.Second); got != 0 {
		t.Errorf("Jitter(-1s): got %v, want 0", got)
	}
	if got := p.Jitter(math.MaxInt64); got != math.MaxInt64-1 {
		t.Errorf("Jitter(MaxInt64): got %v, want MaxInt64-1 (the bound may not overflow)", got)
	}
}
