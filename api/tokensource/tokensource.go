// Package tokensource is the Go client of tokenbroker's WatchToken: a
// Source subscribes to one token and always holds the latest one the broker
// pushed, so handing it out costs no RPC.
//
// A Source is an [oauth2.TokenSource] (for HTTP clients, through
// [oauth2.Transport]) and a gRPC [credentials.PerRPCCredentials] (for gRPC
// clients, through grpc.WithPerRPCCredentials). One goroutine per Source
// runs the WatchToken stream: every token the broker pushes (EVENT_INITIAL,
// EVENT_REFRESHED, EVENT_INVALIDATED) replaces the held one, and when the
// stream ends (a broker restart, a connection reaching the broker's
// max_connection_age, a network failure) it is opened again with
// exponential backoff and full jitter.
//
// Token returns the held token while it has at least the minimum remaining
// life (WithMinRemaining), whatever happens meanwhile: an EVENT_UNAVAILABLE
// from the broker or a lost stream only becomes Token's error once the held
// token is no longer valid. An expired token is never returned.
//
// Tokens are never logged and never part of an error. The selector (which
// may carry a pass-through client secret) is never logged either.
package tokensource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// ErrNoToken is the error Token returns (wrapping the reason, when one is
// known) when the Source holds no token with enough remaining life.
var ErrNoToken = errors.New("tokensource: no valid token")

// ErrClosed is the error Token returns once Close has been called.
var ErrClosed = errors.New("tokensource: source closed")

// errStreamEnded is the reason recorded when the broker ends a stream
// without an error, which it never should.
var errStreamEnded = status.Error(codes.Unavailable, "tokensource: broker ended the WatchToken stream")

// Interface checks.
var (
	_ oauth2.TokenSource            = (*Source)(nil)
	_ credentials.PerRPCCredentials = (*Source)(nil)
)

// Source holds the latest token of a WatchToken subscription. It is safe
// for concurrent use. Create it with New; Close it when done.
type Source struct {
	client tokenbrokerv1.TokenBrokerServiceClient
	req    *tokenbrokerv1.WatchTokenRequest
	o      options

	// state is what Token reads: replaced as a whole, written only by the
	// watch goroutine (and by Close once it has ended).
	state atomic.Pointer[state]

	ready     chan struct{} // closed when the first token arrives
	readyOnce sync.Once
	startErr  chan error // one slot: a non-retryable failure before the first token

	cancel    context.CancelFunc
	done      chan struct{} // closed when the watch goroutine returns
	closeOnce sync.Once
}

// state is a snapshot of what the Source holds.
type state struct {
	token  *oauth2.Token // the latest token pushed; nil before the first
	err    error         // why no token may be available (nil after a new token)
	closed bool
}

// New subscribes to the token sel names, over conn (a connection to the
// broker), and waits for the first token. The wait ends with an error when
// ctx ends first, or at once when the broker refuses the subscription with
// a code that opening it again will not change (InvalidArgument, NotFound,
// PermissionDenied, Unauthenticated, FailedPrecondition, Unimplemented);
// other failures are retried with backoff until ctx ends.
//
// ctx bounds only the wait for the first token. The stream carries ctx's
// values (for example outgoing gRPC metadata that authenticates the caller
// to the broker) and lives until Close. sel is copied; the caller may
// reuse it.
func New(ctx context.Context, conn grpc.ClientConnInterface, sel *tokenbrokerv1.TokenSelector, opts ...Option) (*Source, error) {
	if conn == nil {
		return nil, errors.New("tokensource: conn must not be nil")
	}
	if sel == nil {
		return nil, errors.New("tokensource: selector must not be nil")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Source{
		client:   tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		req:      &tokenbrokerv1.WatchTokenRequest{Selector: proto.CloneOf(sel)},
		o:        o,
		ready:    make(chan struct{}),
		startErr: make(chan error, 1),
		cancel:   cancel,
		done:     make(chan struct{}),
	}
	s.state.Store(&state{})
	go s.run(rctx)

	select {
	case <-s.ready:
		return s, nil
	case err := <-s.startErr:
		s.Close()
		return nil, fmt.Errorf("tokensource: WatchToken refused: %w", err)
	case <-ctx.Done():
	}
	select {
	case <-s.ready: // the token and ctx's end raced; the token wins
		return s, nil
	default:
	}
	last := s.state.Load().err
	s.Close()
	if last != nil {
		return nil, fmt.Errorf("tokensource: waiting for the first token: %w (last error: %w)", ctx.Err(), last)
	}
	return nil, fmt.Errorf("tokensource: waiting for the first token: %w", ctx.Err())
}

// Token returns a copy of the latest token pushed by the broker, if it has
// at least the minimum remaining life (WithMinRemaining). It makes no RPC:
// it is an atomic load and a clock read. Otherwise it returns an error
// wrapping ErrNoToken and, when known, the reason: the gRPC status of the
// broker's EVENT_UNAVAILABLE, or the error that ended the stream (use
// status.Code to read its code). After Close it returns ErrClosed.
//
// The token's Expiry is the broker's expires_at. The Source is cheap to ask:
// use it directly (as oauth2.Transport's Source), not through
// oauth2.ReuseTokenSource, which would keep using a replaced token.
func (s *Source) Token() (*oauth2.Token, error) {
	t, err := s.valid()
	if err != nil {
		return nil, err
	}
	c := *t
	return &c, nil
}

// valid returns the held token if it has enough life left, without
// copying it.
func (s *Source) valid() (*oauth2.Token, error) {
	st := s.state.Load()
	switch {
	case st.closed:
		return nil, ErrClosed
	case st.token != nil && s.usable(st.token):
		return st.token, nil
	case st.err != nil:
		return nil, fmt.Errorf("%w: %w", ErrNoToken, st.err)
	}
	return nil, ErrNoToken
}

// usable reports whether t has at least the minimum remaining life.
func (s *Source) usable(t *oauth2.Token) bool {
	left := t.Expiry.Sub(s.o.now())
	return left > 0 && left >= s.o.minRemaining
}

// GetRequestMetadata returns the "authorization" header carrying the held
// token ("Bearer …"), for gRPC's PerRPCCredentials. It makes no RPC. Without
// a valid token it returns Token's error, which fails the call (with the
// code of the wrapped status, when there is one).
func (s *Source) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	t, err := s.valid()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": t.Type() + " " + t.AccessToken}, nil
}

// RequireTransportSecurity reports whether gRPC must refuse to send the
// token over a connection without transport security: true unless the
// Source was made WithInsecure.
func (s *Source) RequireTransportSecurity() bool {
	return !s.o.insecure
}

// Close ends the stream and waits for the Source's goroutine to return.
// Token returns ErrClosed afterwards. Close is idempotent and always
// returns nil; it does not close the connection New was given.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		s.state.Store(&state{closed: true})
	})
	return nil
}

// run opens the stream, and opens it again whenever it ends, until ctx
// ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	failures := 0
	for {
		gotToken, err := s.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if gotToken {
			failures = 0
		}
		code := status.Code(err)
		s.setErr(err)
		retry := retryable(code)
		if !retry {
			s.refused(err)
		}
		wait := backoff(s.o.base, s.o.max, failures, retry, s.o.randN)
		if d := min(retryDelay(err), s.o.max); d > wait {
			wait = d
		}
		failures++
		level := s.o.logger.Warn
		if _, err := s.valid(); err == nil {
			level = s.o.logger.Info // the held token keeps serving
		}
		level("tokensource: WatchToken stream ended; reconnecting",
			"code", code.String(), "error", status.Convert(err).Message(), "retry_in", wait, "failures", failures)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// watch runs one stream until it ends, and returns the error that ended it
// and whether it delivered its first token.
func (s *Source) watch(ctx context.Context) (gotToken bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.client.WatchToken(sctx, s.req)
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return gotToken, errStreamEnded
		}
		if err != nil {
			return gotToken, err
		}
		if s.handle(msg) {
			gotToken = true
		}
	}
}

// handle applies one event and reports whether it installed a token.
func (s *Source) handle(msg *tokenbrokerv1.WatchTokenResponse) bool {
	ev := msg.GetEvent()
	log := s.o.logger
	switch ev {
	case tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL,
		tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
		tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED:
		t, err := toOAuth2(msg.GetToken())
		if err != nil {
			log.Warn("tokensource: ignored an event without a usable token", "event", ev.String(), "error", err)
			return false
		}
		log.Debug("tokensource: token received", "event", ev.String(),
			"key_id", msg.GetToken().GetKeyId(), "expires_at", t.Expiry)
		s.state.Store(&state{token: t})
		s.changed()
		s.readyOnce.Do(func() { close(s.ready) })
		return true
	case tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE:
		st := status.FromProto(msg.GetError())
		if st.Code() == codes.OK {
			st = status.New(codes.Unavailable, "broker holds no valid token")
		}
		// Logged before the state changes, so that whoever sees the new
		// state finds the warning written.
		log.Warn("tokensource: broker holds no valid token", "code", st.Code().String(), "error", st.Message())
		err := st.Err()
		s.setErr(err)
		if !retryable(st.Code()) {
			s.refused(err)
		}
		return false
	}
	log.Debug("tokensource: ignored an event of unknown kind", "event", ev.String())
	return false
}

// setErr records err as the reason no token may be available, keeping the
// held token.
func (s *Source) setErr(err error) {
	s.state.Store(&state{token: s.state.Load().token, err: err})
	s.changed()
}

// refused hands a non-retryable failure to New while it waits for the
// first token.
func (s *Source) refused(err error) {
	select {
	case <-s.ready:
		return
	default:
	}
	select {
	case s.startErr <- err:
	default:
	}
}

// changed calls the test hook, if any.
func (s *Source) changed() {
	if s.o.changed != nil {
		s.o.changed()
	}
}

// toOAuth2 converts a pushed token, which must have an access token and an
// expiry.
func toOAuth2(t *tokenbrokerv1.Token) (*oauth2.Token, error) {
	switch {
	case t == nil:
		return nil, errors.New("token missing")
	case t.GetAccessToken() == "":
		return nil, errors.New("token.access_token empty")
	case t.GetExpiresAt() == nil:
		return nil, errors.New("token.expires_at missing")
	case t.GetExpiresAt().CheckValid() != nil:
		return nil, errors.New("token.expires_at invalid")
	}
	return &oauth2.Token{
		AccessToken: t.GetAccessToken(),
		TokenType:   t.GetTokenType(),
		Expiry:      t.GetExpiresAt().AsTime(),
	}, nil
}
