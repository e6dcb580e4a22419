package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// UnknownCaller is the identity of a caller whose identity cannot be told
// (no peer address, or an IdentityFunc that returned "").
const UnknownCaller = "unknown"

// IdentityFunc names the caller of an RPC for the per-caller limits. It
// runs once per WatchToken stream, with the stream's context, and must be
// cheap and safe for concurrent use. All streams with the same identity
// share one set of limits.
type IdentityFunc func(ctx context.Context) string

// PeerIdentity is the default IdentityFunc: the IP address of the peer
// (the host part of its address, without the port), or UnknownCaller when
// the context has no peer. A peer address without a port (a Unix socket,
// an in-memory listener) is used whole.
//
// Every caller behind one address (a NAT gateway, a node's pods sharing an
// egress IP) is one caller. A later identity (mTLS subject, API key)
// plugs in through Config.Identity.
func PeerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return UnknownCaller
	}
	switch a := p.Addr.(type) {
	case *net.TCPAddr:
		if a.IP != nil {
			return a.IP.String()
		}
	case *net.UDPAddr:
		if a.IP != nil {
			return a.IP.String()
		}
	}
	s := p.Addr.String()
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	if s == "" {
		return UnknownCaller
	}
	return s
}

// Bookkeeping of callerLimits.
const (
	// minWatchRetryDelay is the least RetryInfo delay of a rejected
	// stream open.
	minWatchRetryDelay = time.Second
	// quotaWatches and quotaOpens are the QuotaFailure quota ids.
	quotaWatches = "watch_streams_per_caller"
	quotaOpens   = "watch_opens_per_caller"
	// sweepInterval is the longest time between two sweeps of idle
	// callers while streams are being opened.
	sweepInterval = time.Minute
	// minSweepSize is the smallest number of callers that triggers a
	// sweep by size.
	minSweepSize = 1024
)

// callerLimits enforces the per-caller WatchToken limits: at most
// maxWatches concurrent streams, and stream opens limited by a token bucket
// (rate opens per second, burst at once). Rejections are
// codes.ResourceExhausted statuses with errdetails.RetryInfo and
// errdetails.QuotaFailure.
//
// Its memory is bounded: a caller's state is dropped once it is idle, that
// is, it has no open stream and its token bucket is full again (burst/rate
// seconds after its last open at the latest). Dropping it then loses
// nothing, since a new state starts the same way. Idle states are swept
// when a stream of the caller ends, every sweepInterval, and whenever the
// number of states has doubled since the last sweep, so the work per open
// stays constant on average.
type callerLimits struct {
	maxWatches int
	rate       rate.Limit
	burst      int
	// now is the clock; tests replace it.
	now func() time.Time

	mu        sync.Mutex
	callers   map[string]*callerState
	lastSweep time.Time
	sweepSize int // len(callers) that triggers the next sweep
}

// callerState is one caller's share of callerLimits.
type callerState struct {
	watches int
	opens   *rate.Limiter
}

// newCallerLimits returns limits for the given values, which must be
// positive.
func newCallerLimits(maxWatches int, opensPerSecond float64, burst int) *callerLimits {
	return &callerLimits{
		maxWatches: maxWatches,
		rate:       rate.Limit(opensPerSecond),
		burst:      burst,
		now:        time.Now,
		callers:    make(map[string]*callerState),
		sweepSize:  minSweepSize,
	}
}

// acquire admits a new stream of caller id, or returns the
// ResourceExhausted status that rejects it. On admission the caller must
// call release exactly once when the stream ends. A stream refused for the
// concurrency cap does not use up an open from the bucket.
func (l *callerLimits) acquire(id string) (release func(), rejected *status.Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.lastSweep) >= sweepInterval || len(l.callers) >= l.sweepSize {
		l.sweepLocked(now)
	}
	c := l.callers[id]
	if c == nil {
		c = &callerState{opens: rate.NewLimiter(l.rate, l.burst)}
		l.callers[id] = c
	}
	if c.watches >= l.maxWatches {
		return nil, quotaStatus(
			"too many concurrent watch streams for this caller (limit "+strconv.Itoa(l.maxWatches)+")",
			quotaWatches, int64(l.maxWatches), minWatchRetryDelay)
	}
	r := c.opens.ReserveN(now, 1)
	if !r.OK() {
		// Only possible with a burst below 1, which New rules out.
		return nil, quotaStatus("watch streams opened too fast for this caller", quotaOpens, 0, minWatchRetryDelay)
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, quotaStatus(
			fmt.Sprintf("watch streams opened too fast for this caller (limit %v per second, burst %d)", float64(l.rate), l.burst),
			quotaOpens, 0, max(d, minWatchRetryDelay))
	}
	c.watches++
	var once sync.Once
	return func() { once.Do(func() { l.release(id, c) }) }, nil
}

// release ends one stream of caller id, whose state is c.
func (l *callerLimits) release(id string, c *callerState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.watches--
	if l.idle(c, l.now()) && l.callers[id] == c {
		delete(l.callers, id)
	}
}

// idle reports whether c can be dropped without changing any decision.
func (l *callerLimits) idle(c *callerState, now time.Time) bool {
	return c.watches <= 0 && c.opens.TokensAt(now) >= float64(l.burst)
}

// sweepLocked drops every idle caller. l.mu is held.
func (l *callerLimits) sweepLocked(now time.Time) {
	for id, c := range l.callers {
		if l.idle(c, now) {
			delete(l.callers, id)
		}
	}
	l.lastSweep = now
	l.sweepSize = max(2*len(l.callers), minSweepSize)
}

// size returns the number of callers with state, for tests.
func (l *callerLimits) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.callers)
}

// quotaStatus returns a ResourceExhausted status with RetryInfo (delay)
// and a QuotaFailure naming the quota and, when not zero, its value. The
// identity itself is not echoed.
func quotaStatus(msg, quota string, value int64, delay time.Duration) *status.Status {
	st := withRetryInfo(status.New(codes.ResourceExhausted, msg), delay)
	withQuota, err := st.WithDetails(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
		Subject:     "caller",
		Description: msg,
		QuotaId:     quota,
		QuotaValue:  value,
	}}})
	if err != nil {
		return st
	}
	return withQuota
}
