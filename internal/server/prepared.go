package server

import (
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/linger"
)

// A refresh reaches every watcher of its key at once: thousands of streams
// send the same WatchTokenResponse. preparedEvents encodes it once (a
// grpc.PreparedMsg: the message marshalled, framed and ready to write) and
// every stream of the key sends those bytes; the same for the
// EVENT_INITIAL of the streams that open while a token is current. The
// server's codec is the only one (ForceServerCodecV2) and no compressor is
// registered, so the bytes prepared on one stream are right for every
// other.
//
// An encoded message holds the token in the clear, as every message does
// while gRPC sends it. The shared one is kept preparedLinger after it was
// encoded, long enough for a refresh to reach every watcher (a
// straggler past it encodes the message again), then dropped: the token
// stays sealed at rest in the cache, and its clear copies live about as
// long as its delivery.

// preparedLinger is how long an encoded event is shared after it was
// encoded.
const preparedLinger = 5 * time.Second

// preparedEncodes counts the events encoded, for tests.
var preparedEncodes atomic.Int64

// preparedEvents holds, per key id, the last token event encoded for the
// key's watchers, for preparedLinger.
type preparedEvents struct {
	m linger.Map[string, *preparedEvent]
}

// newPreparedEvents returns an empty set of shared events.
func newPreparedEvents() *preparedEvents {
	return &preparedEvents{m: linger.Map[string, *preparedEvent]{TTL: preparedLinger}}
}

// preparedEvent is one encoded event: what it says, and its bytes.
type preparedEvent struct {
	event tokenbrokerv1.WatchTokenResponse_Event
	tok   broker.Token
	msg   *grpc.PreparedMsg
}

// sameToken reports whether a and b are the same token, as its message
// says it. The access tokens of one event share their bytes, so comparing
// them costs a pointer comparison.
func sameToken(a, b broker.Token) bool {
	return a.AccessToken == b.AccessToken && a.TokenType == b.TokenType &&
		a.IssuedAt.Equal(b.IssuedAt) && a.ExpiresAt.Equal(b.ExpiresAt) && a.RefreshAt.Equal(b.RefreshAt) &&
		a.KeyID == b.KeyID && a.CertThumbprint == b.CertThumbprint && slices.Equal(a.Scopes, b.Scopes)
}

// get returns the encoded message announcing tok with event, encoding it
// on stream when no stream of the key has yet. The key's other streams
// wait for those bytes rather than encode their own (linger.Map.Get).
func (p *preparedEvents) get(stream grpc.ServerStream, event tokenbrokerv1.WatchTokenResponse_Event, tok broker.Token) (*grpc.PreparedMsg, error) {
	e, err := p.m.Get(tok.KeyID, func(e *preparedEvent) bool { return e.event == event && sameToken(e.tok, tok) },
		func() (*preparedEvent, error) {
			msg := &grpc.PreparedMsg{}
			if err := msg.Encode(stream, &tokenbrokerv1.WatchTokenResponse{Event: event, Token: toProtoToken(tok)}); err != nil {
				return nil, err
			}
			preparedEncodes.Add(1)
			return &preparedEvent{event: event, tok: tok, msg: msg}, nil
		})
	if err != nil {
		return nil, err
	}
	return e.msg, nil
}
