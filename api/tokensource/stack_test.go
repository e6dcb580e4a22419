package tokensource

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// waitTimeout bounds every wait for something the broker or the Source
// does asynchronously.
const waitTimeout = 20 * time.Second

// dial opens a client connection to addr that reconnects quickly, with
// opts added, closed when the test ends.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func heldSelector(scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: apptest.HeldClient}, Scopes: scopes}
}

func passSelector(sec string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
		ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: apptest.Provider, ClientId: apptest.PassID, ClientSecret: sec},
	}, Scopes: scopes}
}

// testCtx returns a context that ends after waitTimeout or with the test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// clock is the Source's clock in tests: real time plus an offset the test
// sets.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time      { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) set(d time.Duration) { c.offset.Store(int64(d)) }

// withClock makes the Source read c.
func withClock(c *clock) Option { return func(o *options) { o.now = c.now } }

// watcher follows a Source's state changes through the test hook.
type watcher struct {
	signal chan struct{} // one slot, latest wins
}

// withWatcher returns an Option that signals w at every state change.
func withWatcher(w *watcher) Option {
	w.signal = make(chan struct{}, 1)
	return func(o *options) {
		o.changed = func() {
			select {
			case w.signal <- struct{}{}:
			default:
			}
		}
	}
}

// waitFor waits until cond holds for s's state; it fails the test after
// waitTimeout, naming what.
func (w *watcher) waitFor(t *testing.T, s *Source, what string, cond func(*state) bool) *state {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		if st := s.state.Load(); cond(st) {
			return st
		}
		select {
		case <-w.signal:
		case <-deadline.C:
			t.Fatalf("waited %s for %s; state: token held %v, error %v", waitTimeout, what, s.state.Load().token != nil, s.state.Load().err)
		}
	}
}

// withLogs logs at debug level into b.
func withLogs(b *testkit.LogBuffer) Option { return WithLogger(testkit.TextLogger(b)) }
