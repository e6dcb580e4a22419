package server

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// rpcTimeout bounds every RPC and every wait in these tests.
const rpcTimeout = 5 * time.Second

// configured returns cfg with each zero limit that has a configuration
// key (server.*) set to config.Default()'s value: the tests take the
// defaults from the configuration, their one home.
func configured(cfg Config) Config {
	d := config.Default().Server
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if cfg.KeepaliveMinTime == 0 {
		cfg.KeepaliveMinTime = time.Duration(d.KeepaliveMinTime)
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = time.Duration(d.ShutdownTimeout)
	}
	if cfg.MaxConnectionAge == 0 {
		cfg.MaxConnectionAge = time.Duration(d.MaxConnectionAge)
	}
	if cfg.MaxConnectionAgeGrace == 0 {
		cfg.MaxConnectionAgeGrace = time.Duration(d.MaxConnectionAgeGrace)
	}
	if cfg.MaxWatchesPerCaller == 0 {
		cfg.MaxWatchesPerCaller = d.MaxWatchesPerCaller
	}
	if cfg.WatchOpensPerSecond == 0 {
		cfg.WatchOpensPerSecond = d.WatchOpensPerSecond
	}
	if cfg.WatchOpenBurst == 0 {
		cfg.WatchOpenBurst = d.WatchOpenBurst
	}
	if cfg.MaxHeaderListSize == 0 {
		cfg.MaxHeaderListSize = uint32(d.MaxHeaderListSize)
	}
	return cfg
}

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }

// stubBroker is a Broker whose behaviour is in function fields. A nil
// field fails the call with an error the server maps to Internal.
type stubBroker struct {
	getToken func(ctx context.Context, req broker.Request) (broker.Token, error)
	watch    func(ctx context.Context, req broker.Request) (Subscription, error)
}

func (b *stubBroker) GetToken(ctx context.Context, req broker.Request) (broker.Token, error) {
	if b.getToken == nil {
		return broker.Token{}, errors.New("stub: no getToken")
	}
	return b.getToken(ctx, req)
}

func (b *stubBroker) Watch(ctx context.Context, req broker.Request) (Subscription, error) {
	if b.watch == nil {
		return nil, errors.New("stub: no watch")
	}
	return b.watch(ctx, req)
}

// fakeSub is a Subscription whose events the test sends on events.
type fakeSub struct {
	initial broker.Token
	events  chan broker.Event
	closed  chan struct{}
	closes  atomic.Int32
}

// newFakeSub returns a subscription that starts with initial.
func newFakeSub(initial broker.Token) *fakeSub {
	return &fakeSub{initial: initial, events: make(chan broker.Event), closed: make(chan struct{})}
}

func (s *fakeSub) Initial() broker.Token       { return s.initial }
func (s *fakeSub) Events() <-chan broker.Event { return s.events }

func (s *fakeSub) Close() {
	if s.closes.Add(1) == 1 {
		close(s.closed)
	}
}

// send hands ev to the handler, failing the test after rpcTimeout.
func (s *fakeSub) send(t *testing.T, ev broker.Event) {
	t.Helper()
	select {
	case s.events <- ev:
	case <-time.After(rpcTimeout):
		t.Fatalf("timed out handing a %v event to the handler", ev.Kind)
	}
}

// okBroker returns a broker that answers every request with tok.
func okBroker(tok broker.Token) *stubBroker {
	return &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) { return tok, nil }}
}

// testServer is a Server running on a bufconn listener.
type testServer struct {
	srv    *Server
	conn   *grpc.ClientConn
	client tokenbrokerv1.TokenBrokerServiceClient
	admin  tokenbrokerv1.AdminServiceClient
	logs   *testkit.LogBuffer
	cancel context.CancelFunc
	done   chan error
}

// startServer runs a Server for cfg (with a JSON logger into logs unless
// cfg.Logger is set) through Serve, and returns a connected client. The
// server is shut down at cleanup.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{logs: &testkit.LogBuffer{}, done: make(chan error, 1)}
	if cfg.Logger == nil {
		cfg.Logger = testkit.JSONLogger(ts.logs)
	}
	srv, err := New(configured(cfg))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	ts.srv = srv
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- srv.Serve(ctx, lis) }()

	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Let the client send what the server must reject.
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(1<<20)),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient: got error %v, want nil", err)
	}
	ts.conn = conn
	ts.client = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	ts.admin = tokenbrokerv1.NewAdminServiceClient(conn)
	t.Cleanup(func() {
		_ = conn.Close()
		ts.stop(t)
	})
	return ts
}

// stop cancels Serve's context and waits for it to return nil. It may be
// called more than once.
func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	ts.cancel()
	if ts.done == nil {
		return
	}
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: got error %v, want nil", err)
		}
		ts.done = nil
	case <-time.After(rpcTimeout + time.Duration(config.Default().Server.ShutdownTimeout)):
		t.Fatalf("Serve did not return after its context was cancelled")
	}
}

// rpcContext returns a context bounded by rpcTimeout.
func rpcContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	t.Cleanup(cancel)
	return ctx
}

// serving is a Serve or ServeAdmin call running in the background.
type serving struct {
	cancel context.CancelFunc
	done   chan error
	waited bool
}

// stop cancels the call's context and checks that it returns nil in time.
// It may be called more than once.
func (s *serving) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	if s.waited {
		return
	}
	s.waited = true
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("serve: got error %v, want nil", err)
		}
	case <-time.After(rpcTimeout + time.Duration(config.Default().Server.ShutdownTimeout)):
		t.Errorf("serve did not return after its context was cancelled")
	}
}

// serveBufconn runs serve (Serve or ServeAdmin of a Server) on a new
// bufconn listener and returns the listener and the running call, which is
// stopped at cleanup.
func serveBufconn(t *testing.T, serve func(context.Context, net.Listener) error) (*bufconn.Listener, *serving) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- serve(ctx, lis) }()
	t.Cleanup(func() { s.stop(t) })
	return lis, s
}

// dialBufconn connects to lis with creds; the connection is closed at
// cleanup (before the server registered earlier is stopped).
func dialBufconn(t *testing.T, lis *bufconn.Listener, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(creds),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient: got error %v, want nil", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
