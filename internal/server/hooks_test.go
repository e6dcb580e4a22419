package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// errAccessDenied stands in for the access package's sentinel, which wraps
// access.ErrPermissionDenied.
var errAccessDenied = fmt.Errorf("access: %w", access.ErrPermissionDenied)

// TestNewRejectsBadHooks checks the configuration rules of the hooks.
func TestNewRejectsBadHooks(t *testing.T) {
	b := okBroker(broker.Token{})
	for _, tt := range []struct {
		name      string
		cfg       Config
		expectErr string
	}{
		{"separate admin without admin", Config{Broker: b, SeparateAdmin: true}, "SeparateAdmin requires Admin"},
		{"nil unary interceptor", Config{Broker: b, UnaryInterceptors: []grpc.UnaryServerInterceptor{nil}}, "UnaryInterceptors[0] is nil"},
		{"nil stream interceptor", Config{Broker: b, StreamInterceptors: []grpc.StreamServerInterceptor{nil}}, "StreamInterceptors[0] is nil"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(configured(tt.cfg))
			if err == nil || !strings.Contains(err.Error(), tt.expectErr) {
				t.Fatalf("New: got error %v, want one containing %q", err, tt.expectErr)
			}
		})
	}
}

// TestStatusFromErrorPermissionDenied checks the access.ErrPermissionDenied row:
// the denial's own text, sanitised, whatever wraps it.
func TestStatusFromErrorPermissionDenied(t *testing.T) {
	for _, tt := range []struct {
		name      string
		err       error
		expectMsg string
	}{
		{"bare", access.ErrPermissionDenied, "permission denied"},
		{"wrapped", fmt.Errorf("client %q: %w", "payments", access.ErrPermissionDenied), `client "payments": permission denied`},
		{"through another sentinel", fmt.Errorf("scope %q not granted to %s: %w", "b/write", "spiffe://prod/ns/x/sa/y", errAccessDenied), `scope "b/write" not granted to spiffe://prod/ns/x/sa/y: access: permission denied`},
		{"control characters dropped", fmt.Errorf("client \"a\nb\": %w", access.ErrPermissionDenied), `client "ab": permission denied`},
		{"cut to size", fmt.Errorf("%s: %w", strings.Repeat("c", 2*maxDetailBytes), access.ErrPermissionDenied), strings.Repeat("c", maxDetailBytes)},
		{"before other kinds", errors.Join(access.ErrPermissionDenied, broker.ErrUnknownClient), "permission deniedunknown client"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := StatusFromError(tt.err, false)
			if st.Code() != codes.PermissionDenied || st.Message() != tt.expectMsg {
				t.Errorf("got %v %q, want PermissionDenied %q", st.Code(), st.Message(), tt.expectMsg)
			}
		})
	}
}

// TestAuthorize checks the Authorize hook on GetToken and WatchToken: it
// sees the converted selector, a denial is PermissionDenied with its own
// message and the broker is not called, other errors go through the error
// table, and an allowed request is served.
func TestAuthorize(t *testing.T) {
	var (
		mu      sync.Mutex
		seen    []broker.Selector
		verdict error
	)
	var brokerCalls atomic.Int32
	sb := newSubBroker(broker.Token{AccessToken: "tok", KeyID: "k1"}, 16)
	watch := sb.watch
	sb.watch = func(ctx context.Context, req broker.Request) (Subscription, error) {
		brokerCalls.Add(1)
		return watch(ctx, req)
	}
	sb.getToken = func(context.Context, broker.Request) (broker.Token, error) {
		brokerCalls.Add(1)
		return broker.Token{AccessToken: "tok", KeyID: "k1"}, nil
	}
	ts := startServer(t, Config{
		Broker: sb,
		Authorize: func(_ context.Context, sel broker.Selector) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, sel)
			return verdict
		},
	})
	setVerdict := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		verdict, seen = err, nil
	}
	lastSeen := func() []broker.Selector {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	wantSel := broker.Selector{Client: "payments", Scopes: []string{"payments/read"}}

	for _, tt := range []struct {
		name       string
		verdict    error
		expectCode codes.Code
		expectMsg  string
	}{
		{"denied", fmt.Errorf("client %q is not granted: %w", "payments", errAccessDenied), codes.PermissionDenied, `client "payments" is not granted: access: permission denied`},
		{"unauthenticated", fmt.Errorf("no identity: %w", access.ErrPermissionDenied), codes.PermissionDenied, "no identity: permission denied"},
		{"failed", fmt.Errorf("policy store with %s down", leakyText), codes.Internal, "internal error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setVerdict(tt.verdict)
			before := brokerCalls.Load()
			_, err := ts.client.GetToken(rpcContext(t), heldReq())
			if st := status.Convert(err); st.Code() != tt.expectCode || st.Message() != tt.expectMsg {
				t.Errorf("GetToken: got %v %q, want %v %q", st.Code(), st.Message(), tt.expectCode, tt.expectMsg)
			}
			if st := watchErr(t, ts.client, watchReq()); st.Code() != tt.expectCode || st.Message() != tt.expectMsg {
				t.Errorf("WatchToken: got %v %q, want %v %q", st.Code(), st.Message(), tt.expectCode, tt.expectMsg)
			}
			if n := brokerCalls.Load() - before; n != 0 {
				t.Errorf("broker calls: got %d, want 0", n)
			}
			if got := lastSeen(); !reflect.DeepEqual(got, []broker.Selector{wantSel, wantSel}) {
				t.Errorf("Authorize selectors: got %+v, want %+v twice", got, wantSel)
			}
		})
	}

	t.Run("allowed", func(t *testing.T) {
		setVerdict(nil)
		resp, err := ts.client.GetToken(rpcContext(t), heldReq())
		if err != nil || resp.GetToken().GetKeyId() != "k1" {
			t.Fatalf("GetToken: got %v, %v; want key id k1", resp, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		openWatch(t, ctx, ts.client, watchReq())
	})

	t.Run("pass-through selector", func(t *testing.T) {
		setVerdict(fmt.Errorf("pass-through is not granted: %w", access.ErrPermissionDenied))
		_, err := ts.client.GetToken(rpcContext(t), passReq())
		if st := status.Convert(err); st.Code() != codes.PermissionDenied {
			t.Fatalf("GetToken: got %v, want PermissionDenied", err)
		}
		got := lastSeen()
		if len(got) != 1 || got[0].Credentials == nil || got[0].Credentials.ClientID != "abc123" || got[0].Credentials.ClientSecret.Reveal() != "s3cr3t-value" {
			t.Errorf("Authorize selector: got %+v, want the pass-through credentials", got)
		}
	})
}

// TestAuthorizeBeforeWatchLimits checks that a refused WatchToken stream
// spends none of the caller's open budget.
func TestAuthorizeBeforeWatchLimits(t *testing.T) {
	var deny atomic.Bool
	deny.Store(true)
	ts := startServer(t, Config{
		Broker:              newSubBroker(broker.Token{AccessToken: "tok", KeyID: "k1"}, 4),
		WatchOpenBurst:      1,
		WatchOpensPerSecond: 1e-9,
		Authorize: func(context.Context, broker.Selector) error {
			if deny.Load() {
				return access.ErrPermissionDenied
			}
			return nil
		},
	})
	for i := range 3 {
		if st := watchErr(t, ts.client, watchReq()); st.Code() != codes.PermissionDenied {
			t.Fatalf("refused watch %d: got %v, want PermissionDenied", i, st.Code())
		}
	}
	deny.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	openWatch(t, ctx, ts.client, watchReq())
}

// isOpenMethod reports whether a test interceptor lets method through
// without credentials.
func isOpenMethod(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

// rejecting returns interceptors that reject with Unauthenticated every
// method for which open is false.
func rejecting(open func(string) bool) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if open(info.FullMethod) {
			return handler(ctx, req)
		}
		return nil, status.Error(codes.Unauthenticated, "missing credentials")
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if open(info.FullMethod) {
			return handler(srv, ss)
		}
		return status.Error(codes.Unauthenticated, "missing credentials")
	}
	return unary, stream
}

// listServices asks the reflection service for the service names.
func listServices(t *testing.T, conn *grpc.ClientConn) ([]string, error) {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(rpcContext(t))
	if err != nil {
		return nil, err
	}
	defer func() { _ = stream.CloseSend() }()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

// healthStatus returns the health of service, or the call's error.
func healthStatus(t *testing.T, conn *grpc.ClientConn, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	resp, err := healthpb.NewHealthClient(conn).Check(rpcContext(t), &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

// TestInterceptors checks that the extra interceptors run on every call,
// health and reflection included (the interceptor decides), after logging
// and panic recovery, in order.
func TestInterceptors(t *testing.T) {
	t.Run("health and reflection let through", func(t *testing.T) {
		var brokerCalls atomic.Int32
		sb := newSubBroker(broker.Token{}, 1)
		sb.getToken = func(context.Context, broker.Request) (broker.Token, error) {
			brokerCalls.Add(1)
			return broker.Token{}, nil
		}
		unary, stream := rejecting(isOpenMethod)
		ts := startServer(t, Config{
			Broker: sb, Admin: &stubAdmin{}, Reflection: true,
			UnaryInterceptors: []grpc.UnaryServerInterceptor{unary}, StreamInterceptors: []grpc.StreamServerInterceptor{stream},
		})
		_, err := ts.client.GetToken(rpcContext(t), heldReq())
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "missing credentials" {
			t.Errorf("GetToken: got %v %q, want Unauthenticated %q", st.Code(), st.Message(), "missing credentials")
		}
		if st := watchErr(t, ts.client, watchReq()); st.Code() != codes.Unauthenticated {
			t.Errorf("WatchToken: got %v, want Unauthenticated", st.Code())
		}
		if _, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("GetStats: got %v, want Unauthenticated", err)
		}
		if n := brokerCalls.Load(); n != 0 {
			t.Errorf("broker calls: got %d, want 0", n)
		}
		if st, err := healthStatus(t, ts.conn, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health: got %v, %v; want SERVING", st, err)
		}
		if names, err := listServices(t, ts.conn); err != nil || !slices.Contains(names, serviceName) {
			t.Errorf("reflection: got %v, %v; want %s among the services", names, err, serviceName)
		}
		// The rejection was logged: logging runs before the interceptor.
		var codesLogged []any
		for _, rec := range ts.logs.Records(t) {
			if rec["msg"] == "finished call" && rec["grpc.method"] == "GetToken" {
				codesLogged = append(codesLogged, rec["grpc.code"])
			}
		}
		if !reflect.DeepEqual(codesLogged, []any{"Unauthenticated"}) {
			t.Errorf("logged GetToken codes: got %v, want [Unauthenticated]", codesLogged)
		}
	})

	t.Run("everything rejected", func(t *testing.T) {
		unary, stream := rejecting(func(string) bool { return false })
		ts := startServer(t, Config{
			Broker: okBroker(broker.Token{}), Reflection: true,
			UnaryInterceptors: []grpc.UnaryServerInterceptor{unary}, StreamInterceptors: []grpc.StreamServerInterceptor{stream},
		})
		if _, err := healthStatus(t, ts.conn, ""); status.Code(err) != codes.Unauthenticated {
			t.Errorf("health: got %v, want Unauthenticated", err)
		}
		if _, err := listServices(t, ts.conn); status.Code(err) != codes.Unauthenticated {
			t.Errorf("reflection: got %v, want Unauthenticated", err)
		}
	})

	t.Run("panics recovered", func(t *testing.T) {
		ts := startServer(t, Config{
			Broker: okBroker(broker.Token{}),
			UnaryInterceptors: []grpc.UnaryServerInterceptor{func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
				panic("unary interceptor with " + leakyText)
			}},
			StreamInterceptors: []grpc.StreamServerInterceptor{func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
				panic("stream interceptor with " + leakyText)
			}},
		})
		_, err := ts.client.GetToken(rpcContext(t), heldReq())
		if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
			t.Errorf("GetToken: got %v %q, want Internal %q", st.Code(), st.Message(), "internal error")
		}
		if st := watchErr(t, ts.client, watchReq()); st.Code() != codes.Internal || st.Message() != "internal error" {
			t.Errorf("WatchToken: got %v %q, want Internal %q", st.Code(), st.Message(), "internal error")
		}
		if logs := ts.logs.String(); strings.Contains(logs, "hunter2") {
			t.Errorf("logs contain the panic value:\n%s", logs)
		}
	})

	t.Run("order", func(t *testing.T) {
		var (
			mu    sync.Mutex
			order []string
		)
		mark := func(name string) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, name)
		}
		unaryMark := func(name string) grpc.UnaryServerInterceptor {
			return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				mark(name)
				return handler(ctx, req)
			}
		}
		streamMark := func(name string) grpc.StreamServerInterceptor {
			return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
				mark(name)
				return handler(srv, ss)
			}
		}
		ts := startServer(t, Config{
			Broker:             newSubBroker(broker.Token{KeyID: "k1"}, 1),
			UnaryInterceptors:  []grpc.UnaryServerInterceptor{unaryMark("u1"), unaryMark("u2")},
			StreamInterceptors: []grpc.StreamServerInterceptor{streamMark("s1"), streamMark("s2")},
		})
		if _, err := healthStatus(t, ts.conn, ""); err != nil {
			t.Fatalf("health: got error %v, want nil", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		openWatch(t, ctx, ts.client, watchReq())
		mu.Lock()
		defer mu.Unlock()
		if want := []string{"u1", "u2", "s1", "s2"}; !slices.Equal(order, want) {
			t.Errorf("interceptor order: got %v, want %v", order, want)
		}
	})
}

// selfSigned returns a self-signed certificate for localhost and a pool
// that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("GenerateKey: got error %v, want nil", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tokenbroker test"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("CreateCertificate: got error %v, want nil", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: got error %v, want nil", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLS checks that Config.TLS is used by the main and the admin server:
// a TLS client is served, a plaintext client is not.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	var handshakes atomic.Int32
	srv, err := New(configured(Config{
		Broker:        okBroker(broker.Token{AccessToken: "tok", KeyID: "k1"}),
		Admin:         &stubAdmin{},
		SeparateAdmin: true,
		Logger:        slog.New(slog.DiscardHandler),
		TLS: &tls.Config{
			MinVersion: tls.VersionTLS13,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				handshakes.Add(1)
				return &cert, nil
			},
		},
	}))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	mainLis, _ := serveBufconn(t, srv.Serve)
	adminLis, _ := serveBufconn(t, srv.ServeAdmin)
	tlsCreds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13})

	for _, tt := range []struct {
		name string
		lis  *bufconn.Listener
		call func(*grpc.ClientConn) error
	}{
		{"main", mainLis, func(c *grpc.ClientConn) error {
			_, err := tokenbrokerv1.NewTokenBrokerServiceClient(c).GetToken(rpcContext(t), heldReq())
			return err
		}},
		{"admin", adminLis, func(c *grpc.ClientConn) error {
			_, err := tokenbrokerv1.NewAdminServiceClient(c).GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := handshakes.Load()
			if err := tt.call(dialBufconn(t, tt.lis, tlsCreds)); err != nil {
				t.Errorf("TLS client: got error %v, want nil", err)
			}
			if handshakes.Load() == before {
				t.Errorf("TLS client: the server's certificate callback did not run")
			}
			if err := tt.call(dialBufconn(t, tt.lis, insecure.NewCredentials())); status.Code(err) != codes.Unavailable {
				t.Errorf("plaintext client: got %v, want Unavailable", err)
			}
		})
	}
}

// TestSeparateAdmin checks that with SeparateAdmin the AdminService is
// served only on the admin listener, with health and reflection, and that
// each listener shuts down on its own.
func TestSeparateAdmin(t *testing.T) {
	ts := startServer(t, Config{
		Broker:        okBroker(broker.Token{AccessToken: "tok", KeyID: "k1"}),
		Admin:         &stubAdmin{stats: func() broker.Stats { return broker.Stats{Hits: 3} }},
		SeparateAdmin: true,
		Reflection:    true,
	})
	adminLis, adminServing := serveBufconn(t, ts.srv.ServeAdmin)
	adminConn := dialBufconn(t, adminLis, insecure.NewCredentials())
	admin := tokenbrokerv1.NewAdminServiceClient(adminConn)

	if _, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetStats on the main listener: got %v, want Unimplemented", err)
	}
	if resp, err := admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{}); err != nil || resp.GetHits() != 3 {
		t.Errorf("GetStats on the admin listener: got %v, %v; want hits 3", resp, err)
	}
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(adminConn).GetToken(rpcContext(t), heldReq()); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetToken on the admin listener: got %v, want Unimplemented", err)
	}
	for _, svc := range []string{"", adminServiceName} {
		if st, err := healthStatus(t, adminConn, svc); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("admin health of %q: got %v, %v; want SERVING", svc, st, err)
		}
	}
	if _, err := healthStatus(t, ts.conn, adminServiceName); status.Code(err) != codes.NotFound {
		t.Errorf("main health of %s: got %v, want NotFound", adminServiceName, err)
	}
	if names, err := listServices(t, adminConn); err != nil || !slices.Contains(names, adminServiceName) || slices.Contains(names, serviceName) {
		t.Errorf("admin reflection: got %v, %v; want %s and not %s", names, err, adminServiceName, serviceName)
	}

	// Shut the admin listener down: its health turns NOT_SERVING, its
	// calls fail, and the main listener keeps serving.
	watchCtx, cancelWatch := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancelWatch()
	watch, err := healthpb.NewHealthClient(adminConn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: adminServiceName})
	if err != nil {
		t.Fatalf("admin health Watch: got error %v, want nil", err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first admin health status: got %v, %v; want SERVING", resp.GetStatus(), err)
	}
	adminServing.cancel()
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("admin health status after shutdown: got %v, %v; want NOT_SERVING", resp.GetStatus(), err)
	}
	cancelWatch()
	adminServing.stop(t)
	if _, err := admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("GetStats after the admin shutdown: got %v, want Unavailable", err)
	}
	if _, err := ts.client.GetToken(rpcContext(t), heldReq()); err != nil {
		t.Errorf("GetToken after the admin shutdown: got error %v, want nil", err)
	}
	ts.stop(t)
	if _, err := ts.client.GetToken(rpcContext(t), heldReq()); status.Code(err) != codes.Unavailable {
		t.Errorf("GetToken after shutdown: got %v, want Unavailable", err)
	}
}

// TestServeAdminWithoutSeparateAdmin checks that ServeAdmin refuses to run
// unless SeparateAdmin is set, and closes the listener.
func TestServeAdminWithoutSeparateAdmin(t *testing.T) {
	srv, err := New(configured(Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{}}))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	t.Cleanup(srv.Close)
	lis := bufconn.Listen(1 << 10)
	if err := srv.ServeAdmin(context.Background(), lis); err == nil || !strings.Contains(err.Error(), "SeparateAdmin is not set") {
		t.Fatalf("ServeAdmin: got %v, want an error about SeparateAdmin", err)
	}
	if c, err := lis.Dial(); err == nil {
		_ = c.Close()
		t.Errorf("Dial after ServeAdmin failed: got a connection, want the listener closed")
	}
}

// TestServeAdminListenerFailure checks that ServeAdmin reports a listener
// that fails.
func TestServeAdminListenerFailure(t *testing.T) {
	srv, err := New(configured(Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{}, SeparateAdmin: true}))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	t.Cleanup(srv.Close)
	done := make(chan error, 1)
	go func() {
		done <- srv.ServeAdmin(context.Background(), &failingListener{err: errors.New("accept exploded")})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "accept exploded") {
			t.Fatalf("ServeAdmin: got %v, want the listener's error", err)
		}
	case <-time.After(rpcTimeout):
		t.Fatal("ServeAdmin did not return after its listener failed")
	}
}
