package server

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/linger"
)

// A GetToken answered from the cache is the same GetTokenResponse, byte
// for byte, for every caller of the key until its token changes. So the
// server encodes it once (encodedResponses) and answers each hit with
// those bytes: the handler returns an *encodedMessage, which the server's
// codec (utf8Codec.Marshal) writes as it is, with no conversion and no
// marshaling per call. Every call still goes through the whole chain:
// authentication, authorization (Config.Authorize) and the broker's own
// serving rule run on every call, and a response is reused only when the
// token the broker returned for this call is the one it encodes (its
// bytes, times, scopes and key), so the expiry told is always the token's.
//
// The encoded bytes hold the token in the clear, as every response does
// while gRPC sends it, and as the record the cache opens on each hit
// does. Like the fan-out's prepared events (prepared.go) they are shared
// for preparedLinger after they were encoded, then dropped (the next hit
// encodes them again): the token stays sealed at rest in the cache, and a
// clear copy of a token in steady use lives at most preparedLinger.

// maxEncodedResponses bounds how many keys' responses are held at once;
// beyond it, hits on further keys are encoded per call, as before.
const maxEncodedResponses = 4096

// encodedEncodes counts the GetToken responses encoded, for tests.
var encodedEncodes atomic.Int64

// encodedMessage is a message already in its wire form. The server's
// codec marshals it as its bytes.
type encodedMessage struct {
	b []byte
}

// encodedResponses holds, per key id, the GetToken response last encoded
// for the key's token, for preparedLinger, at most maxEncodedResponses of
// them.
type encodedResponses struct {
	m linger.Map[string, *encodedResponse]
}

// newEncodedResponses returns an empty set of shared responses.
func newEncodedResponses() *encodedResponses {
	return &encodedResponses{m: linger.Map[string, *encodedResponse]{TTL: preparedLinger, Max: maxEncodedResponses}}
}

// encodedResponse is one encoded GetTokenResponse: the token it says and
// its bytes.
type encodedResponse struct {
	tok broker.Token
	msg encodedMessage
}

// get returns the encoded GetTokenResponse of tok, encoding it when the
// key's held response says another token (or none).
func (p *encodedResponses) get(tok broker.Token) (*encodedMessage, error) {
	e, err := p.m.Get(tok.KeyID, func(e *encodedResponse) bool { return sameToken(e.tok, tok) },
		func() (*encodedResponse, error) {
			b, err := proto.Marshal(&tokenbrokerv1.GetTokenResponse{Token: toProtoToken(tok)})
			if err != nil {
				return nil, err
			}
			encodedEncodes.Add(1)
			return &encodedResponse{tok: tok, msg: encodedMessage{b: b}}, nil
		})
	if err != nil {
		return nil, err
	}
	return &e.msg, nil
}

// marshal returns m's bytes as gRPC's codec returns a message. The
// buffer's Free does nothing, so the shared bytes stay intact.
func (m *encodedMessage) marshal() mem.BufferSlice {
	return mem.BufferSlice{mem.SliceBuffer(m.b)}
}

// tokenBrokerServiceDesc is TokenBrokerService's descriptor with GetToken
// answered by getTokenEncoded: the same request, interceptors and wire
// response as the generated handler, the response in its encoded form.
var tokenBrokerServiceDesc = func() grpc.ServiceDesc {
	d := tokenbrokerv1.TokenBrokerService_ServiceDesc
	d.Methods = append([]grpc.MethodDesc(nil), d.Methods...)
	for i := range d.Methods {
		if d.Methods[i].MethodName == "GetToken" {
			d.Methods[i].Handler = getTokenEncodedHandler
		}
	}
	return d
}()

// getTokenEncodedHandler is the generated GetToken method handler with
// handler.getTokenEncoded in place of handler.GetToken.
func getTokenEncodedHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(tokenbrokerv1.GetTokenRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	h := srv.(*handler)
	if interceptor == nil {
		return h.getTokenEncoded(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return h.getTokenEncoded(ctx, req.(*tokenbrokerv1.GetTokenRequest))
	})
}
