package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// watchReq returns a valid WatchToken request for a broker-held client.
func watchReq() *tokenbrokerv1.WatchTokenRequest {
	return &tokenbrokerv1.WatchTokenRequest{Selector: heldReq().GetSelector()}
}

// passWatchReq returns a valid WatchToken request with pass-through
// credentials.
func passWatchReq() *tokenbrokerv1.WatchTokenRequest {
	return &tokenbrokerv1.WatchTokenRequest{Selector: passReq().GetSelector()}
}

// watchStream is a client's WatchToken stream.
type watchStream = grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse]

// subBroker is a stub broker whose Watch hands out fake subscriptions and
// reports each on subs, with the request it was made for.
type subBroker struct {
	stubBroker
	initial broker.Token
	subs    chan *fakeSub
	reqs    chan broker.Request
}

// newSubBroker returns a subBroker whose subscriptions start with initial;
// it buffers up to n subscriptions and requests.
func newSubBroker(initial broker.Token, n int) *subBroker {
	b := &subBroker{initial: initial, subs: make(chan *fakeSub, n), reqs: make(chan broker.Request, n)}
	b.watch = func(_ context.Context, req broker.Request) (Subscription, error) {
		s := newFakeSub(b.initial)
		b.subs <- s
		b.reqs <- req
		return s, nil
	}
	return b
}

// next returns the next subscription the broker handed out.
func (b *subBroker) next(t *testing.T) *fakeSub {
	t.Helper()
	select {
	case s := <-b.subs:
		return s
	case <-time.After(rpcTimeout):
		t.Fatal("timed out waiting for a Watch call")
		return nil
	}
}

// openWatch opens a WatchToken stream with ctx and returns it after its
// first message, which must be EVENT_INITIAL.
func openWatch(t *testing.T, ctx context.Context, c tokenbrokerv1.TokenBrokerServiceClient, req *tokenbrokerv1.WatchTokenRequest) (watchStream, *tokenbrokerv1.WatchTokenResponse) {
	t.Helper()
	stream, err := c.WatchToken(ctx, req)
	if err != nil {
		t.Fatalf("WatchToken: got error %v, want nil", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first Recv: got error %v, want nil", err)
	}
	if first.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL {
		t.Fatalf("first event: got %v, want EVENT_INITIAL", first.GetEvent())
	}
	return stream, first
}

// watchErr opens a WatchToken stream and returns the status it fails with.
func watchErr(t *testing.T, c tokenbrokerv1.TokenBrokerServiceClient, req *tokenbrokerv1.WatchTokenRequest) *status.Status {
	t.Helper()
	stream, err := c.WatchToken(rpcContext(t), req)
	if err == nil {
		var resp *tokenbrokerv1.WatchTokenResponse
		resp, err = stream.Recv()
		if err == nil {
			t.Fatalf("Recv: got %v, want an error", resp)
		}
	}
	return status.Convert(err)
}

// retryDelayOf returns the RetryInfo delay of st, or -1 without one.
func retryDelayOf(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return -1
}

// quotaIDOf returns the quota id of st's QuotaFailure, or "".
func quotaIDOf(st *status.Status) string {
	for _, d := range st.Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok && len(qf.GetViolations()) > 0 {
			return qf.GetViolations()[0].GetQuotaId()
		}
	}
	return ""
}

// TestWatchTokenEvents checks the first message and the forwarding of
// every kind of broker event, for held and pass-through credentials.
func TestWatchTokenEvents(t *testing.T) {
	issued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := func(access string) broker.Token {
		return broker.Token{
			AccessToken: secret.String("at-" + access),
			TokenType:   "Bearer",
			Scopes:      []string{"payments/read"},
			IssuedAt:    issued,
			ExpiresAt:   issued.Add(time.Hour),
			RefreshAt:   issued.Add(45 * time.Minute),
			KeyID:       "k-watch",
		}
	}
	for _, tt := range []struct {
		name                   string
		req                    *tokenbrokerv1.WatchTokenRequest
		invalidClient          codes.Code
		invalidClientMsgPrefix string
	}{
		{"held client", watchReq(), codes.FailedPrecondition, "token endpoint rejected the broker-held client's credentials (invalid_client)"},
		{"pass-through", passWatchReq(), codes.Unauthenticated, "token endpoint rejected the client credentials (invalid_client)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newSubBroker(tok("one"), 1)
			ts := startServer(t, Config{Broker: b})
			stream, first := openWatch(t, rpcContext(t), ts.client, tt.req)
			sub := b.next(t)

			if got := first.GetToken(); got.GetAccessToken() != "at-one" || got.GetKeyId() != "k-watch" ||
				got.GetTokenType() != "Bearer" || !got.GetExpiresAt().AsTime().Equal(issued.Add(time.Hour)) ||
				!got.GetRefreshAt().AsTime().Equal(issued.Add(45*time.Minute)) || len(got.GetScopes()) != 1 {
				t.Errorf("initial token: got %v, want at-one for k-watch with its times and scopes", got)
			}
			if first.GetError() != nil {
				t.Errorf("initial error: got %v, want none", first.GetError())
			}
			req := <-b.reqs
			if req.MinTTL != 0 || (req.Selector.Credentials != nil) != (tt.req.GetSelector().GetClientCredentials() != nil) {
				t.Errorf("broker request: got %+v, want the selector and no min_ttl", req)
			}

			recv := func() *tokenbrokerv1.WatchTokenResponse {
				t.Helper()
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("Recv: got error %v, want a message", err)
				}
				return resp
			}

			sub.send(t, broker.Event{Kind: broker.EventRefreshed, Token: tok("two")})
			if resp := recv(); resp.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED ||
				resp.GetToken().GetAccessToken() != "at-two" || resp.GetError() != nil {
				t.Errorf("refreshed: got %v, want EVENT_REFRESHED with at-two and no error", resp)
			}

			sub.send(t, broker.Event{Kind: broker.EventInvalidated, Token: tok("three")})
			if resp := recv(); resp.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED ||
				resp.GetToken().GetAccessToken() != "at-three" || resp.GetError() != nil {
				t.Errorf("invalidated: got %v, want EVENT_INVALIDATED with at-three and no error", resp)
			}

			for _, u := range []struct {
				err        error
				wantCode   codes.Code
				wantPrefix string
			}{
				{upErr(upstream.ErrUnavailable, "server_error", 503), codes.Unavailable, "token endpoint unavailable"},
				{fmt.Errorf("refresh %s: %w", leakyText, upErr(upstream.ErrInvalidClient, "invalid_client", 401)), tt.invalidClient, tt.invalidClientMsgPrefix},
				{errors.New(leakyText), codes.Internal, "internal error"},
				{nil, codes.Unavailable, "no valid token can be held"},
			} {
				// Unknown kinds are dropped; the next event still arrives.
				sub.send(t, broker.Event{Kind: broker.EventKind(99), Token: tok("bogus")})
				sub.send(t, broker.Event{Kind: broker.EventUnavailable, Token: tok("ignored"), Err: u.err})
				resp := recv()
				if resp.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE || resp.GetToken() != nil {
					t.Errorf("unavailable (%v): got %v, want EVENT_UNAVAILABLE without a token", u.err, resp)
				}
				st := status.FromProto(resp.GetError())
				if st.Code() != u.wantCode || !strings.HasPrefix(st.Message(), u.wantPrefix) {
					t.Errorf("unavailable (%v) error: got %v %q, want %v %q...", u.err, st.Code(), st.Message(), u.wantCode, u.wantPrefix)
				}
				if strings.Contains(st.Message(), "hunter2") {
					t.Errorf("unavailable error message %q leaks the error text", st.Message())
				}
			}

			// The stream stays open after EVENT_UNAVAILABLE.
			sub.send(t, broker.Event{Kind: broker.EventRefreshed, Token: tok("four")})
			if resp := recv(); resp.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED || resp.GetToken().GetAccessToken() != "at-four" {
				t.Errorf("refreshed after unavailable: got %v, want EVENT_REFRESHED with at-four", resp)
			}
		})
	}
}

// TestWatchTokenValidation checks that invalid selectors fail the stream
// with GetToken's field errors, before the broker is asked.
func TestWatchTokenValidation(t *testing.T) {
	var watches atomic.Int32
	ts := startServer(t, Config{Broker: &stubBroker{watch: func(context.Context, broker.Request) (Subscription, error) {
		watches.Add(1)
		return nil, errors.New("not reached")
	}}})
	sel := func(edit func(s *tokenbrokerv1.TokenSelector)) *tokenbrokerv1.WatchTokenRequest {
		r := watchReq()
		edit(r.Selector)
		return r
	}
	passSel := func(edit func(c *tokenbrokerv1.ClientCredentials)) *tokenbrokerv1.WatchTokenRequest {
		r := passWatchReq()
		edit(r.Selector.GetClientCredentials())
		return r
	}
	for _, tt := range []struct {
		name      string
		req       *tokenbrokerv1.WatchTokenRequest
		expectMsg string
	}{
		{"empty request", &tokenbrokerv1.WatchTokenRequest{}, "selector: is required"},
		{"no credentials", sel(func(s *tokenbrokerv1.TokenSelector) { s.Credentials = nil }), "selector.credentials: exactly one of client or client_credentials is required"},
		{"client empty", sel(func(s *tokenbrokerv1.TokenSelector) { s.Credentials = &tokenbrokerv1.TokenSelector_Client{} }), "selector.client: is required"},
		{"client_secret empty", passSel(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = "" }), "selector.client_credentials.client_secret: is required"},
		{"client_id too long", passSel(func(c *tokenbrokerv1.ClientCredentials) { c.ClientId = strings.Repeat("i", 129) }), "selector.client_credentials.client_id: must be at most 128 bytes"},
		{"51 scopes", sel(func(s *tokenbrokerv1.TokenSelector) { s.Scopes = nScopes(51) }), "selector.scopes: must have at most 50 entries"},
		{"bad scope", sel(func(s *tokenbrokerv1.TokenSelector) { s.Scopes = []string{"ok", "a b"} }), "selector.scopes[1]: must contain only RFC 6749 scope-token characters (%x21 / %x23-5B / %x5D-7E)"},
		{"audience control char", sel(func(s *tokenbrokerv1.TokenSelector) { s.Audience = "a\n" }), "selector.audience: must be printable ASCII"},
		{"resource relative", sel(func(s *tokenbrokerv1.TokenSelector) { s.Resource = "/x" }), "selector.resource: must be an absolute URI without a fragment (RFC 8707)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := watchErr(t, ts.client, tt.req)
			if st.Code() != codes.InvalidArgument || st.Message() != tt.expectMsg {
				t.Errorf("status: got %v %q, want InvalidArgument %q", st.Code(), st.Message(), tt.expectMsg)
			}
		})
	}
	if n := watches.Load(); n != 0 {
		t.Errorf("broker Watch calls: got %d, want 0", n)
	}
}

// TestWatchTokenErrors checks that Watch errors fail the stream with
// GetToken's error table.
func TestWatchTokenErrors(t *testing.T) {
	for _, tt := range []struct {
		name        string
		req         *tokenbrokerv1.WatchTokenRequest
		err         error
		expectCode  codes.Code
		expectMsg   string
		expectDelay time.Duration
	}{
		{name: "unknown client", req: watchReq(), err: fmt.Errorf("resolve: %w", broker.ErrUnknownClient), expectCode: codes.NotFound, expectMsg: "selector.client: unknown client"},
		{name: "passthrough disabled", req: passWatchReq(), err: broker.ErrPassthroughDisabled, expectCode: codes.PermissionDenied, expectMsg: "pass-through credentials are not accepted"},
		{
			name: "held invalid_client", req: watchReq(), err: upErr(upstream.ErrInvalidClient, "invalid_client", 401),
			expectCode: codes.FailedPrecondition, expectMsg: `token endpoint rejected the broker-held client's credentials (invalid_client): provider "cognito": invalid_client (401): denied`,
		},
		{
			name: "pass-through invalid_client", req: passWatchReq(), err: upErr(upstream.ErrInvalidClient, "invalid_client", 401),
			expectCode: codes.Unauthenticated, expectMsg: `token endpoint rejected the client credentials (invalid_client): provider "cognito": invalid_client (401): denied`,
		},
		{
			name: "throttled", req: watchReq(),
			err:        &fakeUpstreamError{kind: upstream.ErrThrottled, text: `provider "cognito": throttled (429)`, delay: 7 * time.Second},
			expectCode: codes.ResourceExhausted, expectMsg: `token endpoint is throttling requests: provider "cognito": throttled (429)`, expectDelay: 7 * time.Second,
		},
		{name: "unknown error", req: watchReq(), err: errors.New(leakyText), expectCode: codes.Internal, expectMsg: "internal error"},
		{name: "no subscription and no error", req: watchReq(), err: nil, expectCode: codes.Internal, expectMsg: "internal error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Config{Broker: &stubBroker{watch: func(context.Context, broker.Request) (Subscription, error) {
				return nil, tt.err
			}}})
			st := watchErr(t, ts.client, tt.req)
			if st.Code() != tt.expectCode || st.Message() != tt.expectMsg {
				t.Errorf("status: got %v %q, want %v %q", st.Code(), st.Message(), tt.expectCode, tt.expectMsg)
			}
			if tt.expectDelay != 0 {
				if got := retryDelayOf(st); got != tt.expectDelay {
					t.Errorf("retry delay: got %v, want %v", got, tt.expectDelay)
				}
			}
		})
	}
}

// TestWatchTokenClosesOnCancel checks that the subscription is closed when
// the client goes away, and that the stream's slot is free again.
func TestWatchTokenClosesOnCancel(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 2)
	ts := startServer(t, Config{Broker: b, MaxWatchesPerCaller: 1})

	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	stream, _ := openWatch(t, ctx, ts.client, watchReq())
	sub := b.next(t)
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel: got %v, want Canceled", err)
	}
	waitFor(t, sub.closed, "the subscription to be closed")
	if n := sub.closes.Load(); n != 1 {
		t.Errorf("Close calls: got %d, want 1", n)
	}

	// The only slot of this caller is free again.
	_, _ = openWatch(t, rpcContext(t), ts.client, watchReq())
}

// TestWatchTokenCallLog checks the stream's log line: method, code and key
// id, and never the token.
func TestWatchTokenCallLog(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at-VERY-SECRET-TOKEN", KeyID: "k-88"}, 1)
	ts := startServer(t, Config{Broker: b})
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	stream, _ := openWatch(t, ctx, ts.client, watchReq())
	sub := b.next(t)
	sub.send(t, broker.Event{Kind: broker.EventRefreshed, Token: broker.Token{AccessToken: "at-OTHER-SECRET", KeyID: "k-88"}})
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("Recv: got error %v, want nil", err)
	}
	cancel()
	waitFor(t, sub.closed, "the subscription to be closed")
	ts.stop(t) // the log line is written once the handler returned

	logs := ts.logs.String()
	for _, s := range []string{"VERY-SECRET", "OTHER-SECRET"} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	var found bool
	for _, rec := range ts.logs.Records(t) {
		if rec["msg"] == "finished call" && rec["grpc.method"] == "WatchToken" {
			found = true
			if rec["key_id"] != "k-88" || rec["grpc.code"] != "Canceled" {
				t.Errorf("WatchToken log: got key_id %v code %v, want k-88 Canceled", rec["key_id"], rec["grpc.code"])
			}
		}
	}
	if !found {
		t.Errorf("no finished call record for WatchToken in:\n%s", logs)
	}
}

// TestWatchTokenConcurrencyLimit checks the per-caller cap on concurrent
// streams.
func TestWatchTokenConcurrencyLimit(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 8)
	ts := startServer(t, Config{Broker: b, MaxWatchesPerCaller: 2})
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	openWatch(t, ctx, ts.client, watchReq())
	openWatch(t, ctx, ts.client, watchReq())

	st := watchErr(t, ts.client, watchReq())
	if st.Code() != codes.ResourceExhausted || st.Message() != "too many concurrent watch streams for this caller (limit 2)" {
		t.Errorf("third stream: got %v %q, want ResourceExhausted about the concurrent streams", st.Code(), st.Message())
	}
	if got := retryDelayOf(st); got != time.Second {
		t.Errorf("retry delay: got %v, want 1s", got)
	}
	if got := quotaIDOf(st); got != quotaWatches {
		t.Errorf("quota id: got %q, want %q", got, quotaWatches)
	}
	if got := len(b.subs); got != 2 {
		t.Errorf("broker Watch calls: got %d, want 2", got)
	}
}

// TestWatchTokenOpenRate checks the per-caller rate of stream opens:
// closed streams count too, and the RetryInfo delay is the bucket's.
func TestWatchTokenOpenRate(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 8)
	// One open per 1000 s after a burst of 2: the third open must wait
	// about 1000 s, whatever the speed of the test.
	ts := startServer(t, Config{Broker: b, WatchOpensPerSecond: 0.001, WatchOpenBurst: 2})
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		openWatch(t, ctx, ts.client, watchReq())
		cancel()
	}
	st := watchErr(t, ts.client, watchReq())
	if st.Code() != codes.ResourceExhausted || !strings.HasPrefix(st.Message(), "watch streams opened too fast for this caller") {
		t.Errorf("third open: got %v %q, want ResourceExhausted about the open rate", st.Code(), st.Message())
	}
	if got := retryDelayOf(st); got < 990*time.Second || got > 1000*time.Second {
		t.Errorf("retry delay: got %v, want about 1000s", got)
	}
	if got := quotaIDOf(st); got != quotaOpens {
		t.Errorf("quota id: got %q, want %q", got, quotaOpens)
	}
}

// TestWatchTokenIdentityHook checks that Config.Identity decides who a
// caller is: two identities on one connection have separate limits.
func TestWatchTokenIdentityHook(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 8)
	ts := startServer(t, Config{
		Broker:              b,
		MaxWatchesPerCaller: 1,
		Identity: func(ctx context.Context) string {
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("x-caller"); len(v) > 0 {
				return v[0]
			}
			return ""
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	as := func(id string) context.Context {
		if id == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "x-caller", id)
	}
	openWatch(t, as("alice"), ts.client, watchReq())
	openWatch(t, as("bob"), ts.client, watchReq())
	openWatch(t, as(""), ts.client, watchReq()) // UnknownCaller
	for _, id := range []string{"alice", "bob", ""} {
		stream, err := ts.client.WatchToken(as(id), watchReq())
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("second stream of %q: got %v, want ResourceExhausted", id, err)
		}
	}
}

// TestWatchTokenMaxConnectionAge checks that MaxConnectionAge is applied:
// a watch stream on an old connection is ended (and its subscription
// closed) once the grace period is over.
func TestWatchTokenMaxConnectionAge(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 1)
	ts := startServer(t, Config{Broker: b, MaxConnectionAge: 50 * time.Millisecond, MaxConnectionAgeGrace: 50 * time.Millisecond})
	stream, _ := openWatch(t, rpcContext(t), ts.client, watchReq())
	sub := b.next(t)
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv on an aged connection: got %v, want Unavailable", err)
	}
	waitFor(t, sub.closed, "the subscription to be closed")
}

// TestWatchTokenShutdown opens 1,000 watch streams and shuts the server
// down: every stream ends with Unavailable "server shutting down", every
// subscription is closed, and Serve returns well before ShutdownTimeout.
func TestWatchTokenShutdown(t *testing.T) {
	const n = 1000
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, n)
	ts := startServer(t, Config{
		Broker:               b,
		ShutdownTimeout:      30 * time.Second,
		MaxConcurrentStreams: 2 * n,
		WatchOpensPerSecond:  1e6,
		WatchOpenBurst:       n,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	streams := make([]watchStream, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range streams {
		wg.Go(func() {
			stream, err := ts.client.WatchToken(ctx, watchReq())
			if err == nil {
				_, err = stream.Recv()
			}
			if err != nil {
				errs <- err
				return
			}
			streams[i] = stream
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("opening a watch: got error %v, want nil", err)
	}
	subs := make([]*fakeSub, n)
	for i := range subs {
		subs[i] = b.next(t)
	}

	ends := make(chan error, n)
	for _, s := range streams {
		go func() {
			_, err := s.Recv()
			ends <- err
		}()
	}
	ts.cancel()
	select {
	case err := <-ts.done:
		ts.done = nil
		if err != nil {
			t.Fatalf("Serve: got error %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return within 20s of its context ending (ShutdownTimeout is 30s)")
	}

	counts := map[string]int{}
	for range n {
		select {
		case err := <-ends:
			st := status.Convert(err)
			counts[fmt.Sprintf("%v %q", st.Code(), st.Message())]++
		case <-ctx.Done():
			t.Fatal("timed out waiting for the streams to end")
		}
	}
	want := fmt.Sprintf("%v %q", codes.Unavailable, "server shutting down")
	if counts[want] != n || len(counts) != 1 {
		t.Errorf("stream endings: got %v, want all %d to be %s", counts, n, want)
	}
	for i, s := range subs {
		select {
		case <-s.closed:
		default:
			t.Fatalf("subscription %d not closed after Serve returned", i)
		}
	}

	// A stream opened now fails; it does not hang.
	if st := watchErr(t, ts.client, watchReq()); st.Code() != codes.Unavailable {
		t.Errorf("WatchToken after shutdown: got %v, want Unavailable", st.Code())
	}
}

// TestWatchTokenShutdownDuringWatch checks that a shutdown also ends a
// stream whose broker is still waiting for the first token.
func TestWatchTokenShutdownDuringWatch(t *testing.T) {
	entered := make(chan struct{})
	ts := startServer(t, Config{Broker: &stubBroker{watch: func(ctx context.Context, _ broker.Request) (Subscription, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}}, ShutdownTimeout: 30 * time.Second})
	got := make(chan *status.Status, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		stream, err := ts.client.WatchToken(ctx, watchReq())
		if err == nil {
			_, err = stream.Recv()
		}
		got <- status.Convert(err)
	}()
	waitFor(t, entered, "the watch to reach the broker")
	ts.stop(t)
	select {
	case st := <-got:
		if st.Code() != codes.Unavailable || st.Message() != MsgShuttingDown {
			t.Errorf("stream: got %v %q, want Unavailable %q", st.Code(), st.Message(), MsgShuttingDown)
		}
	case <-time.After(rpcTimeout):
		t.Fatal("stream did not end")
	}
}

// TestWatchTokenConnectionClosed checks that the subscription is closed
// when the client's connection goes away.
func TestWatchTokenConnectionClosed(t *testing.T) {
	b := newSubBroker(broker.Token{AccessToken: "at", KeyID: "k"}, 1)
	ts := startServer(t, Config{Broker: b})
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	stream, _ := openWatch(t, ctx, ts.client, watchReq())
	sub := b.next(t)
	defer cancel()
	_ = ts.conn.Close()
	if _, err := stream.Recv(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("Recv after the connection closed: got %v, want an error status", err)
	}
	waitFor(t, sub.closed, "the subscription to be closed")
}

// TestWatchTokenEncodesOncePerEvent: the watchers of one key receive a
// refresh, and the EVENT_INITIAL of a current token, from bytes encoded
// once for all of them (a grpc.PreparedMsg), every stream the same
// message; a new token is encoded anew, once.
func TestWatchTokenEncodesOncePerEvent(t *testing.T) {
	const watchers = 3
	issued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := func(access string) broker.Token {
		return broker.Token{AccessToken: secret.String(access), TokenType: "Bearer", Scopes: []string{"payments/read"},
			IssuedAt: issued, ExpiresAt: issued.Add(time.Hour), RefreshAt: issued.Add(45 * time.Minute), KeyID: "k-shared"}
	}
	b := newSubBroker(tok("at-one"), watchers)
	ts := startServer(t, Config{Broker: b})
	before := preparedEncodes.Load()
	streams := make([]watchStream, watchers)
	subs := make([]*fakeSub, watchers)
	for i := range streams {
		var first *tokenbrokerv1.WatchTokenResponse
		streams[i], first = openWatch(t, rpcContext(t), ts.client, watchReq())
		subs[i] = b.next(t)
		if got := first.GetToken().GetAccessToken(); got != "at-one" {
			t.Fatalf("stream %d initial token: got %q, want at-one", i, got)
		}
	}
	if got := preparedEncodes.Load() - before; got != 1 {
		t.Errorf("EVENT_INITIAL of %d streams: got %d encodings, want 1", watchers, got)
	}
	for _, refresh := range []string{"at-two", "at-three"} {
		before = preparedEncodes.Load()
		ev := broker.Event{Kind: broker.EventRefreshed, Token: tok(refresh)}
		ev.Token.IssuedAt = ev.Token.IssuedAt.Add(time.Minute)
		for _, s := range subs {
			s.send(t, ev) // one Event value for every watcher, as the broker sends it
		}
		for i, st := range streams {
			msg, err := st.Recv()
			if err != nil {
				t.Fatalf("stream %d Recv: %v", i, err)
			}
			if msg.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED || msg.GetToken().GetAccessToken() != refresh ||
				!msg.GetToken().GetIssuedAt().AsTime().Equal(ev.Token.IssuedAt) || msg.GetToken().GetKeyId() != "k-shared" {
				t.Errorf("stream %d: got %v, want EVENT_REFRESHED with %s", i, msg, refresh)
			}
		}
		if got := preparedEncodes.Load() - before; got != 1 {
			t.Errorf("refresh to %s for %d streams: got %d encodings, want 1", refresh, watchers, got)
		}
	}
}

// TestWatchTokenCompressedStreamSharesNoBytes: a stream whose client
// compresses (grpc-encoding: gzip, so the server compresses its answers)
// opens first and encodes the key's EVENT_INITIAL; a plain stream of the
// key opening next receives the event uncompressed and intact, not the
// gzip stream's bytes.
func TestWatchTokenCompressedStreamSharesNoBytes(t *testing.T) {
	issued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := broker.Token{AccessToken: secret.String("at-gzip"), TokenType: "Bearer", Scopes: []string{"payments/read"},
		IssuedAt: issued, ExpiresAt: issued.Add(time.Hour), RefreshAt: issued.Add(45 * time.Minute), KeyID: "k-gzip"}
	b := newSubBroker(tok, 2)
	ts := startServer(t, Config{Broker: b})

	zipped, err := ts.client.WatchToken(rpcContext(t), watchReq(), grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatalf("WatchToken with gzip: got error %v, want nil", err)
	}
	first, err := zipped.Recv()
	if err != nil || first.GetToken().GetAccessToken() != "at-gzip" {
		t.Fatalf("gzip stream's first event: got %v, %v; want at-gzip", first, err)
	}
	b.next(t)
	plain, err := ts.client.WatchToken(rpcContext(t), watchReq())
	if err != nil {
		t.Fatalf("WatchToken: got error %v, want nil", err)
	}
	got, err := plain.Recv()
	if err != nil {
		t.Fatalf("plain stream's first Recv: got error %v, want nil", err)
	}
	if got.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL || got.GetToken().GetAccessToken() != "at-gzip" {
		t.Errorf("plain stream's first event: got %v, want EVENT_INITIAL with at-gzip", got)
	}
	b.next(t)
}
