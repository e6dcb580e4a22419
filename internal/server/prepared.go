package server

import (
	"context"
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
// server's codec is the only one (ForceServerCodecV2), but the bytes are
// also compressed with the stream's send compressor: gRPC answers a client
// that compresses its requests (grpc-encoding: gzip, say) with the same
// compressor, and gzip is registered in every binary (the OTLP trace
// exporter imports it). So an event is shared only among the streams of
// one send compressor (PreparedKey); a stream whose compressor cannot be
// told encodes its own.
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

// PreparedKey is what an encoded message shared among streams (a
// grpc.PreparedMsg) is held by: the key the message is about (a key id, an
// SDS secret name) and the send compressor of the streams it was encoded
// for ("" for none). PreparedMsg holds its bytes compressed as its stream
// sends them, so only streams of one compressor may share them.
type PreparedKey struct {
	Key, Compressor string
}

// PreparedKeyOf returns the PreparedKey of key for the server stream of
// ctx (a stream's Context), or false when the stream's send compressor
// cannot be told: that stream must encode its own message.
//
// The send compressor is the one gRPC chose when the stream opened (the
// client's grpc-encoding when it is registered, else none), the one
// PreparedMsg.Encode applies; the broker never changes it with
// grpc.SetSendCompressor.
func PreparedKeyOf(ctx context.Context, key string) (PreparedKey, bool) {
	// gRPC's server stream tells its send compressor; the grpc package
	// has no function for it (only grpc.SetSendCompressor).
	s, ok := grpc.ServerTransportStreamFromContext(ctx).(interface{ SendCompress() string })
	if !ok {
		return PreparedKey{}, false
	}
	return PreparedKey{Key: key, Compressor: s.SendCompress()}, true
}

// preparedEvents holds, per key id and send compressor, the last token
// event encoded for the key's watchers, for preparedLinger.
type preparedEvents struct {
	m linger.Map[PreparedKey, *preparedEvent]
}

// newPreparedEvents returns an empty set of shared events.
func newPreparedEvents() *preparedEvents {
	return &preparedEvents{m: linger.Map[PreparedKey, *preparedEvent]{TTL: preparedLinger}}
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
// on stream when no stream of the key and of stream's send compressor has
// yet. The key's other streams wait for those bytes rather than encode
// their own (linger.Map.Get).
func (p *preparedEvents) get(stream grpc.ServerStream, event tokenbrokerv1.WatchTokenResponse_Event, tok broker.Token) (*grpc.PreparedMsg, error) {
	encode := func() (*preparedEvent, error) {
		msg := &grpc.PreparedMsg{}
		if err := msg.Encode(stream, &tokenbrokerv1.WatchTokenResponse{Event: event, Token: toProtoToken(tok)}); err != nil {
			return nil, err
		}
		preparedEncodes.Add(1)
		return &preparedEvent{event: event, tok: tok, msg: msg}, nil
	}
	k, ok := PreparedKeyOf(stream.Context(), tok.KeyID)
	if !ok {
		e, err := encode()
		if err != nil {
			return nil, err
		}
		return e.msg, nil
	}
	e, err := p.m.Get(k, func(e *preparedEvent) bool { return e.event == event && sameToken(e.tok, tok) }, encode)
	if err != nil {
		return nil, err
	}
	return e.msg, nil
}
