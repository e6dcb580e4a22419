package server

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
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
// key's watchers.
type preparedEvents struct {
	mu sync.Mutex
	m  map[string]*preparedEvent
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
// on stream when no stream of the key has yet. Encoding happens under the
// lock: the key's other streams wait for those bytes rather than encode
// their own.
func (p *preparedEvents) get(stream grpc.ServerStream, event tokenbrokerv1.WatchTokenResponse_Event, tok broker.Token) (*grpc.PreparedMsg, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.m[tok.KeyID]; e != nil && e.event == event && sameToken(e.tok, tok) {
		return e.msg, nil
	}
	msg := &grpc.PreparedMsg{}
	if err := msg.Encode(stream, &tokenbrokerv1.WatchTokenResponse{Event: event, Token: toProtoToken(tok)}); err != nil {
		return nil, err
	}
	preparedEncodes.Add(1)
	e := &preparedEvent{event: event, tok: tok, msg: msg}
	if p.m == nil {
		p.m = make(map[string]*preparedEvent)
	}
	p.m[tok.KeyID] = e
	time.AfterFunc(preparedLinger, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.m[tok.KeyID] == e {
			delete(p.m, tok.KeyID)
		}
	})
	return msg, nil
}
