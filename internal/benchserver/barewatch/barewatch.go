// Package barewatch is the benchmarks' bare WatchToken baseline, not part
// of the product: a TokenBrokerService whose WatchToken sends the current
// message and then each newly published one with a plain stream.Send, so
// that grpc-go marshals the message again for every stream, as a bare
// grpc-go server broadcasting a token would.
//
// The benchserver program serves it in a process of its own for
// BenchmarkProcWatchFanoutVsBare (internal/app); BenchmarkWatchFanout
// serves it in the benchmark's own process, beside the broker. One home
// for the baseline, whichever process it runs in.
package barewatch

import (
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// Server is the bare WatchToken baseline. Its zero value is not usable;
// call New.
type Server struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	template *tokenbrokerv1.WatchTokenResponse // never changed after New

	mu      sync.Mutex
	msg     *tokenbrokerv1.WatchTokenResponse // the current message, never changed once set
	changed chan struct{}                     // closed when msg is replaced
}

// New returns a Server whose streams start with a copy of initial as
// EVENT_INITIAL. Published messages are copies of initial too (see
// Publish), so they have its size give or take the few bytes of the new
// times; initial is typically the broker's own first WatchToken message.
func New(initial *tokenbrokerv1.WatchTokenResponse) *Server {
	first := proto.CloneOf(initial)
	first.Event = tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL
	return &Server{template: proto.CloneOf(initial), msg: first, changed: make(chan struct{})}
}

// Publish makes a new message the one every stream sends next, and
// returns it: New's initial message as EVENT_REFRESHED, its token issued
// at now and its expires_at and refresh_at (when set) moved by as much, so
// the token keeps its lifetime. A stream that has not sent the previous
// message yet sends only this one (latest wins, like the broker's
// one-slot mailboxes).
func (s *Server) Publish(now time.Time) *tokenbrokerv1.WatchTokenResponse {
	msg := proto.CloneOf(s.template)
	msg.Event = tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED
	if tok := msg.GetToken(); tok != nil {
		shift := now.Sub(tok.GetIssuedAt().AsTime())
		tok.IssuedAt = timestamppb.New(now)
		if tok.ExpiresAt != nil {
			tok.ExpiresAt = timestamppb.New(tok.GetExpiresAt().AsTime().Add(shift))
		}
		if tok.RefreshAt != nil {
			tok.RefreshAt = timestamppb.New(tok.GetRefreshAt().AsTime().Add(shift))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msg = msg
	close(s.changed)
	s.changed = make(chan struct{})
	return msg
}

// WatchToken implements tokenbrokerv1.TokenBrokerServiceServer: it sends
// the current message, then each newly published one, until the client
// goes away. The request is not looked at.
func (s *Server) WatchToken(_ *tokenbrokerv1.WatchTokenRequest, stream grpc.ServerStreamingServer[tokenbrokerv1.WatchTokenResponse]) error {
	s.mu.Lock()
	msg, changed := s.msg, s.changed
	s.mu.Unlock()
	for {
		if err := stream.Send(msg); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-changed:
		}
		s.mu.Lock()
		msg, changed = s.msg, s.changed
		s.mu.Unlock()
	}
}
