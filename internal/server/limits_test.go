package server

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// fakeClock is a settable clock for callerLimits.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// newTestLimits returns callerLimits on a fake clock.
func newTestLimits(maxWatches int, opensPerSecond float64, burst int) (*callerLimits, *fakeClock) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := newCallerLimits(maxWatches, opensPerSecond, burst)
	l.now = clock.now
	l.lastSweep = clock.t
	return l, clock
}

func TestCallerLimitsRate(t *testing.T) {
	l, clock := newTestLimits(100, 2, 3) // 2 opens/s, burst 3
	for i := range 3 {
		if _, st := l.acquire("a"); st != nil {
			t.Fatalf("open %d: got %v, want admitted", i, st.Err())
		}
	}
	_, st := l.acquire("a")
	if st == nil || st.Code() != codes.ResourceExhausted {
		t.Fatalf("open 4: got %v, want ResourceExhausted", st)
	}
	// The bucket is empty; the next token comes in 500ms, which the
	// RetryInfo raises to the 1s floor.
	if got := retryDelayOf(st); got != time.Second {
		t.Errorf("retry delay: got %v, want 1s", got)
	}
	// Rejections do not use up tokens: after 500ms exactly one more open.
	clock.advance(500 * time.Millisecond)
	if _, st := l.acquire("a"); st != nil {
		t.Fatalf("open after 500ms: got %v, want admitted", st.Err())
	}
	if _, st := l.acquire("a"); st == nil {
		t.Fatal("second open after 500ms: admitted, want rejected")
	}
	// Another caller has its own bucket.
	if _, st := l.acquire("b"); st != nil {
		t.Fatalf("other caller: got %v, want admitted", st.Err())
	}

	// A long wait is reported as it is.
	l2, _ := newTestLimits(100, 0.1, 1)
	l2.acquire("a")
	_, st = l2.acquire("a")
	if got := retryDelayOf(st); got != 10*time.Second {
		t.Errorf("retry delay at 0.1/s: got %v, want 10s", got)
	}
}

func TestCallerLimitsConcurrency(t *testing.T) {
	l, _ := newTestLimits(2, 1000, 1000)
	r1, _ := l.acquire("a")
	r2, st := l.acquire("a")
	if st != nil {
		t.Fatalf("second stream: got %v, want admitted", st.Err())
	}
	if _, st := l.acquire("a"); st == nil || retryDelayOf(st) != time.Second || quotaIDOf(st) != quotaWatches {
		t.Fatalf("third stream: got %v, want ResourceExhausted with 1s and quota %s", st, quotaWatches)
	}
	r1()
	r1() // a second release is a no-op
	if _, st := l.acquire("a"); st != nil {
		t.Fatalf("after a release: got %v, want admitted", st.Err())
	}
	if _, st := l.acquire("a"); st == nil {
		t.Fatal("after a double release: admitted a third stream, want rejected")
	}
	r2()
}

func TestCallerLimitsCapDoesNotSpendOpens(t *testing.T) {
	l, _ := newTestLimits(1, 0.001, 2)
	release, _ := l.acquire("a")
	for range 5 {
		if _, st := l.acquire("a"); quotaIDOf(st) != quotaWatches {
			t.Fatalf("got %v, want the concurrency rejection", st)
		}
	}
	release()
	if _, st := l.acquire("a"); st != nil {
		t.Fatalf("second open: got %v, want admitted (the burst is 2)", st.Err())
	}
}

// TestCallerLimitsForgetIdle checks that the state of idle callers is
// dropped, so the memory stays bounded by the callers that hold a stream
// or opened one in the last burst/rate seconds.
func TestCallerLimitsForgetIdle(t *testing.T) {
	l, clock := newTestLimits(10, 50, 100) // a bucket refills in 2s

	// A stream of one-off callers, 100 a second for 200 s (20,000 in
	// all): at any time about 200 of them opened within the last 2 s.
	held, _ := l.acquire("holder")
	peak := 0
	for i := range 20000 {
		clock.advance(10 * time.Millisecond)
		release, st := l.acquire("2001:db8::" + strconv.FormatInt(int64(i), 16))
		if st != nil {
			t.Fatalf("caller %d: got %v, want admitted", i, st.Err())
		}
		release()
		peak = max(peak, l.size())
	}
	if peak > 2*minSweepSize {
		t.Errorf("peak number of callers: got %d, want at most %d", peak, 2*minSweepSize)
	}

	// After a sweep only the caller holding a stream and the new one are
	// left.
	clock.advance(sweepInterval)
	release, _ := l.acquire("new")
	if got := l.size(); got != 2 {
		t.Errorf("callers after a sweep: got %d, want 2 (the one with a stream and the new one)", got)
	}
	// A release of an idle caller drops it at once.
	clock.advance(2 * time.Second)
	release()
	held()
	if got := l.size(); got != 0 {
		t.Errorf("callers after the last releases: got %d, want 0", got)
	}
	// A caller whose bucket is not full yet is kept: forgetting it would
	// hand it a full burst again.
	r, _ := l.acquire("busy")
	r()
	if got := l.size(); got != 1 {
		t.Errorf("callers right after an open and release: got %d, want 1", got)
	}
}

type strAddr string

func (a strAddr) Network() string { return "test" }
func (a strAddr) String() string  { return string(a) }

func TestPeerIdentity(t *testing.T) {
	with := func(a net.Addr) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{Addr: a})
	}
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"no peer", context.Background(), UnknownCaller},
		{"nil addr", with(nil), UnknownCaller},
		{"tcp v4", with(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 5555}), "192.0.2.7"},
		{"tcp v6 with zone", with(&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 5555, Zone: "eth0"}), "fe80::1"},
		{"host:port string", with(strAddr("198.51.100.1:443")), "198.51.100.1"},
		{"no port", with(strAddr("bufconn")), "bufconn"},
		{"empty", with(strAddr("")), UnknownCaller},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := PeerIdentity(tt.ctx); got != tt.want {
				t.Errorf("PeerIdentity: got %q, want %q", got, tt.want)
			}
		})
	}
}
