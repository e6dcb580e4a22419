package tokensource

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// rpcCounter counts the RPCs a client connection starts.
type rpcCounter struct{ unary, streams atomic.Int64 }

func (c *rpcCounter) options() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.unary.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.streams.Add(1)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	}
}

// mustToken calls Token and fails the test on an error.
func mustToken(t *testing.T, s *Source) *oauth2.Token {
	t.Helper()
	tok, err := s.Token()
	if err != nil {
		t.Fatalf("Token: got error %v, want a token", err)
	}
	return tok
}

// checkClean fails the test when text contains one of the secrets.
func checkClean(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, sec := range secrets {
		if sec != "" && strings.Contains(text, sec) {
			t.Errorf("%s contains a token or secret: %q", what, text)
		}
	}
}

// TestFirstToken: New returns once the broker's first token arrived, and
// Token and GetRequestMetadata hand out that token: the one the broker
// serves GetToken callers, with its true expiry.
func TestFirstToken(t *testing.T) {
	st := apptest.Start(t, nil)
	conn := dial(t, st.Addr)
	ctx := testCtx(t)
	var logs testkit.LogBuffer
	start := time.Now()
	src, err := New(ctx, conn, heldSelector("api/read"), withLogs(&logs))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()

	got := mustToken(t, src)
	want, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessToken != want.GetToken().GetAccessToken() {
		t.Errorf("Token: got a different access token than GetToken's")
	}
	if !got.Expiry.Equal(want.GetToken().GetExpiresAt().AsTime()) {
		t.Errorf("Token: got expiry %v, want %v", got.Expiry, want.GetToken().GetExpiresAt().AsTime())
	}
	if lo, hi := start.Add(time.Hour-time.Minute), time.Now().Add(time.Hour+time.Second); got.Expiry.Before(lo) || got.Expiry.After(hi) {
		t.Errorf("Token: got expiry %v, want in [%v, %v]", got.Expiry, lo, hi)
	}
	if got.TokenType != "Bearer" || got.RefreshToken != "" {
		t.Errorf("Token: got type %q, refresh token %q; want \"Bearer\", none", got.TokenType, got.RefreshToken)
	}
	// A copy each time: a caller changing it changes nothing held.
	got.AccessToken = "changed"
	if again := mustToken(t, src); again.AccessToken != want.GetToken().GetAccessToken() {
		t.Errorf("Token after the caller changed its copy: got a different token")
	}

	md, err := src.GetRequestMetadata(ctx)
	if err != nil {
		t.Fatalf("GetRequestMetadata: %v", err)
	}
	if got, want := md["authorization"], "Bearer "+want.GetToken().GetAccessToken(); got != want || len(md) != 1 {
		t.Errorf("GetRequestMetadata: got %d entries, authorization set to the token: %v; want 1 entry, true", len(md), got == want)
	}
	if !src.RequireTransportSecurity() {
		t.Errorf("RequireTransportSecurity: got false, want true by default")
	}
	if n := st.Issuer.Requests(); n != 1 {
		t.Errorf("got %d upstream requests, want 1", n)
	}
	checkClean(t, "log", logs.String(), want.GetToken().GetAccessToken())
	if !strings.Contains(logs.String(), "token received") {
		t.Errorf("log: got %q, want a debug line for the first token", logs.String())
	}
}

// TestRefreshReplacesTokenWithoutRPC: tokens the broker pushes at their
// refresh point replace the held one, and Token asks the broker nothing:
// one WatchToken stream, no unary RPC, however often it is called.
func TestRefreshReplacesTokenWithoutRPC(t *testing.T) {
	st := apptest.Start(t, func(cfg *config.Config, issuer *devissuer.Issuer) {
		issuer.SetLifetime(10 * time.Minute)
		cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = 0.2/600, 0 // every 200ms
	})
	var rpcs rpcCounter
	conn := dial(t, st.Addr, rpcs.options()...)
	var w watcher
	var logs testkit.LogBuffer
	src, err := New(testCtx(t), conn, heldSelector("api/read"), withWatcher(&w), withLogs(&logs))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()

	seen := map[string]bool{mustToken(t, src).AccessToken: true}
	for len(seen) < 3 {
		prev := mustToken(t, src).AccessToken
		w.waitFor(t, src, "a refreshed token", func(s *state) bool { return s.token != nil && s.token.AccessToken != prev })
		for range 1000 {
			tok := mustToken(t, src)
			seen[tok.AccessToken] = true
		}
	}
	if got := rpcs.streams.Load(); got != 1 {
		t.Errorf("got %d streams opened, want 1", got)
	}
	if got := rpcs.unary.Load(); got != 0 {
		t.Errorf("got %d unary RPCs, want 0", got)
	}
	logText := logs.String()
	for tok := range seen {
		checkClean(t, "log", logText, tok)
	}
}

// TestBrokerStopAndRestart: while the broker is down the held token keeps
// being served, and its end is reported only once the token is no longer
// valid; when a broker is back on the same address the Source reconnects
// and holds the new broker's token.
func TestBrokerStopAndRestart(t *testing.T) {
	st := apptest.Start(t, nil)
	conn := dial(t, st.Addr)
	var (
		w    watcher
		c    clock
		logs testkit.LogBuffer
	)
	src, err := New(testCtx(t), conn, heldSelector("api/read"),
		WithBackoff(10*time.Millisecond, 100*time.Millisecond), withWatcher(&w), withClock(&c), withLogs(&logs))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()
	first := mustToken(t, src)

	st.Stop()
	w.waitFor(t, src, "the stream's end", func(s *state) bool { return s.err != nil })
	if got := mustToken(t, src); got.AccessToken != first.AccessToken {
		t.Errorf("Token with the broker down: got another token, want the held one")
	}

	// Once the held token has less than min_remaining left, the stream's
	// end is Token's error.
	c.set(time.Until(first.Expiry) - DefaultMinRemaining + time.Second)
	_, err = src.Token()
	if !errors.Is(err, ErrNoToken) || status.Code(err) != codes.Unavailable {
		t.Errorf("Token past min_remaining with the broker down: got %v, want ErrNoToken wrapping Unavailable", err)
	}
	if _, err := src.GetRequestMetadata(context.Background()); status.Code(err) != codes.Unavailable {
		t.Errorf("GetRequestMetadata past min_remaining: got %v, want Unavailable", err)
	}
	c.set(0)

	st.Restart(t)
	second := w.waitFor(t, src, "a token from the restarted broker", func(s *state) bool {
		return s.err == nil && s.token != nil && s.token.AccessToken != first.AccessToken
	})
	if got := mustToken(t, src); got.AccessToken != second.token.AccessToken {
		t.Errorf("Token after the restart: got another token than the one pushed")
	}
	if n := st.Issuer.Requests(); n != 2 {
		t.Errorf("got %d upstream requests, want 2 (one per broker)", n)
	}
	if !strings.Contains(logs.String(), "reconnecting") {
		t.Errorf("log: got %q, want a line for the reconnection", logs.String())
	}
	checkClean(t, "log", logs.String(), first.AccessToken, second.token.AccessToken)
}

// TestMaxConnectionAgeReconnects: the broker's max_connection_age ends the
// stream (GOAWAY, then the connection closes after the grace period); the
// Source opens it again on the new connection and keeps a valid token
// throughout.
func TestMaxConnectionAgeReconnects(t *testing.T) {
	st := apptest.Start(t, func(cfg *config.Config, _ *devissuer.Issuer) {
		cfg.Server.MaxConnectionAge = config.Duration(300 * time.Millisecond)
		cfg.Server.MaxConnectionAgeGrace = config.Duration(200 * time.Millisecond)
	})
	var rpcs rpcCounter
	conn := dial(t, st.Addr, rpcs.options()...)
	var w watcher
	src, err := New(testCtx(t), conn, heldSelector("api/read"), WithBackoff(10*time.Millisecond, 100*time.Millisecond), withWatcher(&w))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()
	first := mustToken(t, src)
	w.waitFor(t, src, "the stream's end", func(s *state) bool { return s.err != nil })
	if got := mustToken(t, src); got.AccessToken != first.AccessToken {
		t.Errorf("Token between streams: got another token, want the held one")
	}
	w.waitFor(t, src, "the stream opened again", func(s *state) bool { return s.err == nil && rpcs.streams.Load() >= 2 })
	if got := mustToken(t, src); got.AccessToken != first.AccessToken {
		t.Errorf("Token after reconnecting: got another token, want the cached one")
	}
}

// TestUnavailableKeepsValidToken: when the token endpoint starts rejecting
// the broker-held client, the broker pushes EVENT_UNAVAILABLE; the Source
// keeps serving its valid token, and reports the broker's status only once
// that token is no longer valid - never an expired token.
func TestUnavailableKeepsValidToken(t *testing.T) {
	st := apptest.Start(t, func(cfg *config.Config, issuer *devissuer.Issuer) {
		issuer.SetLifetime(10 * time.Minute)
		cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = 0.2/600, 0 // every 200ms
		cfg.Cache.NegativeTTL = 0
	})
	conn := dial(t, st.Addr)
	var (
		w    watcher
		c    clock
		logs testkit.LogBuffer
	)
	src, err := New(testCtx(t), conn, heldSelector("api/read"), withWatcher(&w), withClock(&c), withLogs(&logs))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()
	tokens := []string{mustToken(t, src).AccessToken}

	st.Issuer.AddClient(devissuer.Client{ID: apptest.HeldID, Secret: "rotated-secret-value", Scopes: []string{"api/read", "api/write"}})
	held := w.waitFor(t, src, "EVENT_UNAVAILABLE", func(s *state) bool { return s.err != nil })
	if code := status.Code(held.err); code != codes.FailedPrecondition {
		t.Errorf("recorded error: got %v, want FailedPrecondition (the broker-held client was rejected)", held.err)
	}
	tokens = append(tokens, held.token.AccessToken)
	if got := mustToken(t, src); got.AccessToken != held.token.AccessToken {
		t.Errorf("Token after EVENT_UNAVAILABLE: got another token, want the held, still valid one")
	}

	// Past the held token's expiry: the broker's status, no token.
	c.set(11 * time.Minute)
	tok, err := src.Token()
	if tok != nil || !errors.Is(err, ErrNoToken) || status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Token past expiry: got %v, %v; want no token, ErrNoToken wrapping FailedPrecondition", tok != nil, err)
	}
	if err != nil {
		checkClean(t, "Token's error", err.Error(), tokens...)
	}
	if !strings.Contains(logs.String(), "broker holds no valid token") {
		t.Errorf("log: got %q, want a warning for EVENT_UNAVAILABLE", logs.String())
	}
	checkClean(t, "log", logs.String(), append(tokens, apptest.HeldSecret)...)
}

// TestNewRefused: a subscription the broker refuses with a code that
// retrying will not change fails New at once, with the broker's status and
// without the selector's secret.
func TestNewRefused(t *testing.T) {
	st := apptest.Start(t, nil)
	conn := dial(t, st.Addr)
	const wrong = "wrong-secret-value-77f0"
	for _, tc := range []struct {
		name string
		sel  *tokenbrokerv1.TokenSelector
		want codes.Code
	}{
		{"unknown client", &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "nope"}}, codes.NotFound},
		{"no credentials", &tokenbrokerv1.TokenSelector{}, codes.InvalidArgument},
		{"wrong pass-through secret", passSelector(wrong, "api/read"), codes.Unauthenticated},
		{"scope not granted", heldSelector("api/admin"), codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testkit.LogBuffer
			src, err := New(testCtx(t), conn, tc.sel, withLogs(&logs))
			if src != nil || status.Code(err) != tc.want || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("New: got %v, %v; want no Source, %v at once", src, err, tc.want)
			}
			checkClean(t, "New's error", err.Error(), wrong)
			checkClean(t, "log", logs.String(), wrong)
		})
	}
}

// TestNewWaitsWithinContext: with no broker listening, New retries until
// its context ends, then reports the context's error and the last failure.
func TestNewWaitsWithinContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	conn := dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	src, err := New(ctx, conn, heldSelector(), WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if src != nil || !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.Unavailable {
		t.Errorf("New: got %v, %v; want no Source, DeadlineExceeded with the last error (Unavailable)", src, err)
	}
}

// TestNewChecksArguments: bad arguments are refused with an error naming
// the argument or option and the rule.
func TestNewChecksArguments(t *testing.T) {
	conn := dial(t, "127.0.0.1:1")
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		conn grpc.ClientConnInterface
		sel  *tokenbrokerv1.TokenSelector
		opts []Option
		want string
	}{
		{"nil conn", nil, heldSelector(), nil, "conn must not be nil"},
		{"nil selector", conn, nil, nil, "selector must not be nil"},
		{"negative min remaining", conn, heldSelector(), []Option{WithMinRemaining(-time.Second)}, "WithMinRemaining: d must be >= 0, got -1s"},
		{"zero base", conn, heldSelector(), []Option{WithBackoff(0, time.Second)}, "WithBackoff: base must be > 0, got 0s"},
		{"max below base", conn, heldSelector(), []Option{WithBackoff(time.Second, time.Millisecond)}, "WithBackoff: max must be >= base (1s), got 1ms"},
		{"nil logger", conn, heldSelector(), []Option{WithLogger(nil)}, "WithLogger: logger must not be nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := New(ctx, tc.conn, tc.sel, tc.opts...)
			if src != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, %v; want an error containing %q", src, err, tc.want)
			}
		})
	}
}

// TestPerRPCCredentials: as grpc.WithPerRPCCredentials, the Source puts
// "authorization: Bearer <token>" on every call of a real connection; and
// without WithInsecure gRPC refuses to send it in plaintext.
func TestPerRPCCredentials(t *testing.T) {
	st := apptest.Start(t, nil)
	ctx := testCtx(t)
	insecureSrc, err := New(ctx, dial(t, st.Addr), heldSelector("api/read"), WithInsecure())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer insecureSrc.Close()
	secureSrc, err := New(ctx, dial(t, st.Addr), heldSelector("api/read"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer secureSrc.Close()
	want := "Bearer " + mustToken(t, insecureSrc).AccessToken

	// A tiny service that accepts only calls carrying the token.
	var calls atomic.Int64
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		calls.Add(1)
		md, _ := metadata.FromIncomingContext(ctx)
		if got := md.Get("authorization"); len(got) != 1 || got[0] != want {
			return nil, status.Error(codes.Unauthenticated, "missing or wrong token")
		}
		return handler(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(l) })
	defer wg.Wait()
	defer srv.Stop()

	client := healthpb.NewHealthClient(dial(t, l.Addr().String(), grpc.WithPerRPCCredentials(insecureSrc)))
	for i := range 3 {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("call %d with WithInsecure: got %v, %v; want SERVING", i, resp, err)
		}
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("server saw %d calls, want 3", got)
	}

	// gRPC refuses the plaintext connection itself (or, in other
	// versions, the call).
	plain, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(secureSrc))
	if err == nil {
		defer plain.Close()
		_, err = healthpb.NewHealthClient(plain).Check(ctx, &healthpb.HealthCheckRequest{})
	}
	if err == nil {
		t.Errorf("plaintext call without WithInsecure: got success, want gRPC to refuse to send the token")
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("server saw %d calls after the refused one, want 3", got)
	}
}

// TestCloseLeaksNothing: Close ends the stream and the Source's goroutine,
// is idempotent and safe to call concurrently; Token then returns
// ErrClosed.
func TestCloseLeaksNothing(t *testing.T) {
	st := apptest.Start(t, nil)
	conn := dial(t, st.Addr)
	ctx := testCtx(t)
	// Warm the connection, so its own goroutines exist before counting.
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
		t.Fatal(err)
	}
	ignore := goleak.IgnoreCurrent()
	src, err := New(ctx, conn, heldSelector("api/read"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mustToken(t, src)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := src.Close(); err != nil {
				t.Errorf("Close: got %v, want nil", err)
			}
		})
	}
	wg.Wait()
	select {
	case <-src.done:
	default:
		t.Fatal("Close returned before the Source's goroutine ended")
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close again: got %v, want nil", err)
	}
	if tok, err := src.Token(); tok != nil || !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close: got %v, %v; want nil, ErrClosed", tok, err)
	}
	if _, err := src.GetRequestMetadata(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("GetRequestMetadata after Close: got %v, want ErrClosed", err)
	}

	// The stream's goroutines (client and server side) end soon after:
	// none started since New is left.
	testkit.VerifyNone(t, ignore)
}

// TestHandleEvents: events are applied as documented, including malformed
// ones a broker should never send.
func TestHandleEvents(t *testing.T) {
	now := time.Now()
	c := &clock{}
	s := &Source{o: defaultOptions(), ready: make(chan struct{}), startErr: make(chan error, 1)}
	s.o.now = c.now
	s.state.Store(&state{})
	tok := func(access string, expires time.Time) *tokenbrokerv1.Token {
		return &tokenbrokerv1.Token{AccessToken: access, TokenType: "Bearer", ExpiresAt: timestamppb.New(expires)}
	}
	const (
		initial     = tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL
		refreshed   = tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED
		invalidated = tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED
		unavailable = tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE
	)
	for _, step := range []struct {
		name      string
		msg       *tokenbrokerv1.WatchTokenResponse
		installed bool
		wantToken string     // "" for no token
		wantCode  codes.Code // Token's error code when wantToken is ""
	}{
		{"initial", &tokenbrokerv1.WatchTokenResponse{Event: initial, Token: tok("a", now.Add(time.Hour))}, true, "a", codes.OK},
		{"unavailable keeps a valid token", &tokenbrokerv1.WatchTokenResponse{Event: unavailable, Error: status.New(codes.ResourceExhausted, "throttled").Proto()}, false, "a", codes.OK},
		{"refreshed", &tokenbrokerv1.WatchTokenResponse{Event: refreshed, Token: tok("b", now.Add(time.Hour))}, true, "b", codes.OK},
		{"token without access token ignored", &tokenbrokerv1.WatchTokenResponse{Event: refreshed, Token: tok("", now.Add(time.Hour))}, false, "b", codes.OK},
		{"token without expiry ignored", &tokenbrokerv1.WatchTokenResponse{Event: refreshed, Token: &tokenbrokerv1.Token{AccessToken: "x"}}, false, "b", codes.OK},
		{"event without token ignored", &tokenbrokerv1.WatchTokenResponse{Event: invalidated}, false, "b", codes.OK},
		{"unknown event ignored", &tokenbrokerv1.WatchTokenResponse{Event: 99, Token: tok("y", now.Add(time.Hour))}, false, "b", codes.OK},
		{"invalidated", &tokenbrokerv1.WatchTokenResponse{Event: invalidated, Token: tok("c", now.Add(20*time.Second))}, true, "", codes.Unknown},
		{"unavailable without status", &tokenbrokerv1.WatchTokenResponse{Event: unavailable}, false, "", codes.Unavailable},
		{"token with enough life", &tokenbrokerv1.WatchTokenResponse{Event: refreshed, Token: tok("d", now.Add(40*time.Second))}, true, "d", codes.OK},
	} {
		if got := s.handle(step.msg); got != step.installed {
			t.Errorf("%s: handle got %v, want %v", step.name, got, step.installed)
		}
		got, err := s.Token()
		switch {
		case step.wantToken != "" && (err != nil || got.AccessToken != step.wantToken):
			t.Errorf("%s: Token got %v, %v; want token %q", step.name, got, err, step.wantToken)
		case step.wantToken == "" && (got != nil || !errors.Is(err, ErrNoToken) || status.Code(err) != step.wantCode):
			t.Errorf("%s: Token got %v, %v; want ErrNoToken with code %v", step.name, got, err, step.wantCode)
		}
	}
	select {
	case <-s.ready:
	default:
		t.Error("ready not closed after the first token")
	}
}
