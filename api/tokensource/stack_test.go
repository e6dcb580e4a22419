package tokensource

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/app"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// The clients the test token endpoint knows.
const (
	heldID     = "held-client"
	heldSecret = "held-secret-value-5d1e"
	passID     = "pass-client"
	passSecret = "pass-secret-value-9a2c"
)

// waitTimeout bounds every wait for something the broker or the Source
// does asynchronously.
const waitTimeout = 20 * time.Second

// stack is the whole broker over real sockets: a devissuer token endpoint
// over HTTP and the broker's gRPC server on loopback TCP, as internal/app
// tests build it. The broker can be stopped and started again on the same
// address.
type stack struct {
	issuer *devissuer.Issuer
	cfg    config.Config
	addr   string
	stop   func() // shuts the broker down and waits for Serve to return
}

// startStack starts a token endpoint and a broker; adjust, when not nil,
// changes the configuration and the endpoint first.
func startStack(t *testing.T, adjust func(*config.Config, *devissuer.Issuer)) *stack {
	t.Helper()
	issuer, err := devissuer.New(devissuer.Config{Lifetime: time.Hour, Clients: []devissuer.Client{
		{ID: heldID, Secret: heldSecret, Scopes: []string{"api/read", "api/write"}},
		{ID: passID, Secret: passSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(issuer.Handler())
	t.Cleanup(hs.Close)

	cfg := config.Default()
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", hs.URL+devissuer.TokenPath, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: "held", Provider: "test", ClientID: heldID, Secret: secret.String(heldSecret)}}
	cfg.Passthrough = true
	cfg.Auth.AllowUnauthenticated = true
	cfg.Admin.Identities = []string{"*"}
	if adjust != nil {
		adjust(&cfg, issuer)
	}
	s := &stack{issuer: issuer, cfg: cfg}
	s.serve(t, "127.0.0.1:0")
	return s
}

// serve serves the broker on addr until the test ends or s.stop is called.
func (s *stack) serve(t *testing.T, addr string) {
	t.Helper()
	a, err := app.New(s.cfg, app.Keys{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, l, nil, nil) }()
	var once sync.Once
	s.addr = l.Addr().String()
	s.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(waitTimeout):
				t.Errorf("Serve did not return within %s of the shutdown", waitTimeout)
			}
		})
	}
	t.Cleanup(s.stop)
}

// restart starts a new broker on the address of the stopped one.
func (s *stack) restart(t *testing.T) {
	t.Helper()
	s.serve(t, s.addr)
}

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
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: scopes}
}

func passSelector(sec string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
		ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: passID, ClientSecret: sec},
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

// logBuffer collects a Source's log lines, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// withLogs logs at debug level into b.
func withLogs(b *logBuffer) Option {
	return WithLogger(slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})))
}
