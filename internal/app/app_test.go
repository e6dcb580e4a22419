package app

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

const (
	heldID     = "held-client"
	heldSecret = "held-secret-value"
	passID     = "pass-client"
	passSecret = "pass-secret-value"
)

// stack is the whole product over real sockets: a devissuer token endpoint
// over HTTP and the broker's gRPC server on loopback TCP.
type stack struct {
	issuer *devissuer.Issuer
	addr   string
	client tokenbrokerv1.TokenBrokerServiceClient
	stop   func() // shuts the broker down and waits for Serve to return
}

func startStack(t *testing.T) *stack {
	t.Helper()
	return startStackWith(t, nil)
}

// startStackWith lets the test adjust the configuration and the token
// endpoint before the broker starts.
func startStackWith(t *testing.T, adjust func(*config.Config, *devissuer.Issuer)) *stack {
	t.Helper()
	return startStackHandler(t, adjust, nil)
}

// startStackHandler also lets the test wrap the token endpoint's handler.
func startStackHandler(t *testing.T, adjust func(*config.Config, *devissuer.Issuer), wrap func(http.Handler) http.Handler) *stack {
	t.Helper()
	issuer, tokenURL := startIssuer(t, wrap)
	cfg := stackConfig(tokenURL)
	if adjust != nil {
		adjust(&cfg, issuer)
	}
	addr, stop := serveApp(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	s := &stack{issuer: issuer, addr: addr, stop: stop}
	s.client = s.dial(t)
	return s
}

// startIssuer serves a token endpoint that knows the held and the
// pass-through client, through wrap when it is not nil, until the test
// ends. It returns the issuer and its token URL.
func startIssuer(t testing.TB, wrap func(http.Handler) http.Handler) (*devissuer.Issuer, string) {
	t.Helper()
	issuer, err := devissuer.New(devissuer.Config{Lifetime: time.Hour, Clients: []devissuer.Client{
		{ID: heldID, Secret: heldSecret, Scopes: []string{"api/read", "api/write"}},
		{ID: passID, Secret: passSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = issuer.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return issuer, hs.URL + devissuer.TokenPath
}

// stackConfig is the configuration the tests start from: provider "test"
// at tokenURL, broker-held client "held", pass-through on, every caller
// accepted and an admin. Its listeners are on free ports, never the
// defaults (a broker started with `make run` may hold those).
func stackConfig(tokenURL string) config.Config {
	cfg := config.Default()
	cfg.Listen, cfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", tokenURL, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: "held", Provider: "test", ClientID: heldID, Secret: secret.String(heldSecret)}}
	cfg.Passthrough = true
	cfg.Auth.AllowUnauthenticated = true
	cfg.Admin.Identities = []string{"*", "anonymous"}
	return cfg
}

// serveApp serves cfg on a free loopback port until the test ends, or
// until the returned stop function (which waits for Serve) is called.
func serveApp(t testing.TB, cfg config.Config, keys Keys, logger *slog.Logger) (addr string, stop func()) {
	t.Helper()
	addr, _, stop = serveAppHTTP(t, cfg, keys, logger)
	return addr, stop
}

// serveAppHTTP is serveApp that also returns the address of the HTTP
// listener ("" when cfg.HTTPListen is empty).
func serveAppHTTP(t testing.TB, cfg config.Config, keys Keys, logger *slog.Logger) (addr, httpAddr string, stop func()) {
	t.Helper()
	a, err := New(cfg, keys, logger)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var httpL net.Listener
	if cfg.HTTPListen != "" {
		if httpL, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		httpAddr = httpL.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, l, nil, httpL) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return l.Addr().String(), httpAddr, stop
}

// dial opens a new client connection to the broker.
func (s *stack) dial(t *testing.T) tokenbrokerv1.TokenBrokerServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn)
}

func heldSelector(scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}, Scopes: scopes}
}

func passSelector(sec string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
		ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: passID, ClientSecret: sec},
	}, Scopes: scopes}
}

// TestThousandConcurrentCallersOneUpstreamRequest: 1,000 concurrent
// GetToken calls for one cold key, with scopes in varying order, cause
// exactly one request at the real token endpoint and all get its token.
func TestThousandConcurrentCallersOneUpstreamRequest(t *testing.T) {
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 1000
	tokens := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			scopes := []string{"api/read", "api/write"}
			if i%2 == 1 {
				scopes = []string{"api/write", "api/read", "api/write"}
			}
			resp, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector(scopes...)})
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			tokens[i] = resp.GetToken().GetAccessToken()
		})
	}
	close(start)
	wg.Wait()
	if got := s.issuer.Requests(); got != 1 {
		t.Errorf("got %d upstream requests, want 1", got)
	}
	for i, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("call %d got a different token than call 0", i)
		}
	}
}

// TestWrongSecretNeverGetsTheCachedToken: the secret is part of the key, so
// a caller with a wrong secret asks the endpoint itself and is refused.
func TestWrongSecretNeverGetsTheCachedToken(t *testing.T) {
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		resp, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector("wrong-"+passSecret, "api/read")})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("wrong secret: got %v, %v; want Unauthenticated", resp, err)
		}
		if resp.GetToken().GetAccessToken() == good.GetToken().GetAccessToken() {
			t.Fatal("wrong secret got the cached token")
		}
	}
	// The right secret is still served from the cache; the wrong one's
	// rejection is remembered for negative_ttl (one upstream request).
	again, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil || again.GetToken().GetAccessToken() != good.GetToken().GetAccessToken() {
		t.Errorf("right secret again: got %v, %v; want the cached token", again, err)
	}
	if got := s.issuer.Requests(); got != 2 {
		t.Errorf("got %d upstream requests, want 2", got)
	}
	// A broker-held client with a revoked secret is the operator's problem,
	// not the caller's: FailedPrecondition.
	s2 := startStack(t)
	s2.issuer.AddClient(devissuer.Client{ID: heldID, Secret: "rotated", Scopes: []string{"api/read"}})
	if _, err := s2.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("broker-held invalid_client: got %v, want FailedPrecondition", err)
	}
}

// gate holds token requests at the endpoint until the test lets them
// through, one permit each; the first request passes freely.
type gate struct {
	first   sync.Once
	permits chan struct{}
	done    chan struct{} // closed when the test ends
}

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		free := false
		g.first.Do(func() { free = true })
		if !free {
			select {
			case <-g.permits:
			case <-r.Context().Done():
				return
			case <-g.done:
				http.Error(w, "test over", http.StatusServiceUnavailable)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// TestTenThousandWatchersOverGRPC: 10,000 WatchToken streams over loopback
// TCP for one key cost one upstream request per refresh, and every stream
// receives every new token - also while one more stream stops reading.
// Refreshes are due 2 s after each token is issued, and the endpoint holds
// each refresh until the test lets it through, so the streams all open on
// the first token however slow the machine is, and each refresh can be
// counted exactly. The refresh timing itself is tested on a fake clock in
// internal/broker.
func TestTenThousandWatchersOverGRPC(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 streams")
	}
	const n, conns, refreshes = 10_000, 10, 2
	g := &gate{permits: make(chan struct{}, refreshes), done: make(chan struct{})}
	s := startStackHandler(t, func(cfg *config.Config, issuer *devissuer.Issuer) {
		issuer.SetLifetime(5 * time.Minute)
		cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = 2.0/300, 0
		// A held refresh must not time out and be retried meanwhile.
		cfg.Cache.FetchTimeout = config.Duration(3 * time.Minute)
		cfg.Providers[0].Timeout = cfg.Cache.FetchTimeout
		cfg.Cache.MinRemaining = config.Duration(time.Second)
		cfg.Server.MaxWatchesPerCaller = 2 * n
		cfg.Server.WatchOpensPerSecond, cfg.Server.WatchOpenBurst = 1e6, 2*n
	}, g.wrap)
	t.Cleanup(func() { close(g.done) }) // runs before the stack's cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// server.max_concurrent_streams (1,000) applies per connection.
	clients := make([]tokenbrokerv1.TokenBrokerServiceClient, conns)
	for i := range clients {
		clients[i] = s.dial(t)
	}
	req := &tokenbrokerv1.WatchTokenRequest{Selector: heldSelector("api/read")}

	// One stream, on a connection of its own, that is never read after
	// its first message. That message also means the first token is
	// installed before the other streams open.
	unread, err := s.dial(t).WatchToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unread.Recv(); err != nil {
		t.Fatal(err)
	}
	type msg struct {
		event tokenbrokerv1.WatchTokenResponse_Event
		token string
	}
	inbox := make([]chan msg, n)
	var opened sync.WaitGroup
	for i := range n {
		inbox[i] = make(chan msg, 1+refreshes)
		opened.Add(1)
		go func() {
			stream, err := clients[i%conns].WatchToken(ctx, req)
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				opened.Done()
				return
			}
			for k := range 1 + refreshes {
				m, err := stream.Recv()
				if err != nil {
					t.Errorf("stream %d: %v", i, err)
					if k == 0 {
						opened.Done()
					}
					break
				}
				inbox[i] <- msg{m.GetEvent(), m.GetToken().GetAccessToken()}
				if k == 0 {
					opened.Done()
				}
			}
			close(inbox[i])
		}()
	}
	opened.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var prev string
	for r := 0; r <= refreshes; r++ {
		if r > 0 {
			g.permits <- struct{}{} // let one refresh through
		}
		want := tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED
		if r == 0 {
			want = tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL
		}
		var tok string
		for i := range n {
			m, ok := <-inbox[i]
			if !ok {
				t.Fatalf("stream %d ended before message %d", i, r)
			}
			if i == 0 {
				tok = m.token
			}
			if m.event != want || m.token != tok || tok == prev {
				t.Fatalf("stream %d message %d: got %v (same token as stream 0: %v), want %v with a new token", i, r, m.event, m.token == tok, want)
			}
		}
		prev = tok
		// Every stream has the new token; the next refresh waits at the
		// gate, so the count is settled.
		if got := s.issuer.Requests(); got != int64(1+r) {
			t.Errorf("after refresh %d: got %d upstream requests, want %d", r, got, 1+r)
		}
	}
}

// TestShutdownEndsWatchesAndLeaksNothing: shutting down ends every watch
// stream with Unavailable "server shutting down", and once the broker and
// its clients are gone no goroutine is left behind.
func TestShutdownEndsWatchesAndLeaksNothing(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const n = 100
	errs := make(chan error, n)
	t.Run("serve", func(t *testing.T) {
		s := startStack(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
			t.Fatal(err)
		}
		for range n {
			stream, err := s.client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: heldSelector("api/read")})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			go func() {
				_, err := stream.Recv()
				errs <- err
			}()
		}
		s.stop()
		for range n {
			err := <-errs
			if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "server shutting down" {
				t.Errorf("watch stream ended with %v, want Unavailable \"server shutting down\"", err)
			}
		}
	})
	// None of the goroutines started since the test began is left.
	testkit.VerifyNone(t, ignore)
}

// TestCallerDeadlineThroughTheBroker: a caller whose deadline passes while
// the token endpoint hangs gets DeadlineExceeded.
func TestCallerDeadlineThroughTheBroker(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(release)
	s := startStackWith(t, func(cfg *config.Config, _ *devissuer.Issuer) {
		cfg.Providers[0].TokenURL = hang.URL + "/oauth2/token"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("got %v, want DeadlineExceeded", err)
	}
}

// TestPolicyAndAdminThroughTheApp: the app wires the policy and the admin
// check into the server: an identity authenticated by API key gets only
// what its rule grants, and only admins reach AdminService.
func TestPolicyAndAdminThroughTheApp(t *testing.T) {
	const workerKey, adminKey = "worker-key-value", "admin-key-value"
	digest := func(k string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(k))) }
	s := startStackWith(t, func(cfg *config.Config, _ *devissuer.Issuer) {
		cfg.Auth.AllowUnauthenticated = false
		cfg.Auth.APIKeys = []config.APIKey{{Identity: "worker", SHA256: digest(workerKey)}, {Identity: "ops", SHA256: digest(adminKey)}}
		cfg.Policy = []config.PolicyRule{{Identity: "apikey:worker", Clients: []string{"held"}, Scopes: []string{"api/read"}}}
		cfg.Admin.Identities = []string{"apikey:ops"}
	})
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, admin := tokenbrokerv1.NewTokenBrokerServiceClient(conn), tokenbrokerv1.NewAdminServiceClient(conn)
	as := func(key string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		sel  *tokenbrokerv1.TokenSelector
		want codes.Code
	}{
		{"granted", as(workerKey), heldSelector("api/read"), codes.OK},
		{"scope not granted", as(workerKey), heldSelector("api/write"), codes.PermissionDenied},
		{"passthrough not granted", as(workerKey), passSelector(passSecret, "api/read"), codes.PermissionDenied},
		{"no rule for ops", as(adminKey), heldSelector("api/read"), codes.PermissionDenied},
		{"bad key", as("nope"), heldSelector("api/read"), codes.Unauthenticated},
	} {
		_, err := client.GetToken(tc.ctx, &tokenbrokerv1.GetTokenRequest{Selector: tc.sel})
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := admin.GetStats(as(workerKey), &tokenbrokerv1.GetStatsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("admin as worker: got %v, want PermissionDenied", err)
	}
	stats, err := admin.GetStats(as(adminKey), &tokenbrokerv1.GetStatsRequest{})
	if err != nil || stats.GetMisses() != 1 {
		t.Errorf("admin as ops: got %v, %v; want stats with 1 miss", stats, err)
	}
}
