package sds

import (
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tokenbroker/tokenbroker/internal/linger"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// A refresh reaches every stream subscribed to a secret at once: thousands
// of sidecars get the same DiscoveryResponse. As WatchToken does with its
// events (server's prepared.go), the response is encoded once per secret
// name and version (a grpc.PreparedMsg: marshalled, framed, ready to
// write) and every stream sends those bytes. The gRPC server's codec is
// the only one, but the bytes are also compressed with the stream's send
// compressor (a sidecar that compresses its requests gets compressed
// responses; gzip is registered in every binary), so a response is shared
// only among the streams of one send compressor (server.PreparedKey); a
// stream whose compressor cannot be told encodes its own.
//
// That takes a nonce that is the same on every stream: nonce(name,
// version). xDS asks of a nonce only that it tell the responses of one
// stream apart, so that the sidecar's next request says which response it
// answers (ACK or NACK) and a request answering a superseded response is
// known as stale. On one stream, two responses with different nonces carry
// a different name or a different version; two with the same nonce are
// the same secret at the same version, byte for byte, so an answer to
// either answers both. A stream keeps at most one pending response per
// name (the latest), so each pending nonce maps to exactly one name. This
// holds for streams of any number of names.
//
// The encoded response holds the token in the clear, as every response
// does while gRPC sends it; the shared one is dropped preparedLinger after
// it was encoded (a straggler encodes it again), so its clear copies live
// about as long as its delivery.

// preparedLinger is how long an encoded response is shared after it was
// encoded: WatchToken's value. Tests lengthen it.
var preparedLinger = 5 * time.Second

// preparedEncodes counts the responses encoded, for tests.
var preparedEncodes atomic.Int64

// nonce is the nonce of the response carrying name's secret at version:
// the same on every stream (see above). A version holds no '/', so
// the first '/' ends it.
func nonce(name, version string) string { return version + "/" + name }

// preparedResponses holds, per secret name and send compressor, the last
// response encoded, for preparedLinger.
type preparedResponses struct {
	m linger.Map[server.PreparedKey, *preparedResponse]
}

// newPreparedResponses returns an empty set of shared responses.
func newPreparedResponses() *preparedResponses {
	return &preparedResponses{m: linger.Map[server.PreparedKey, *preparedResponse]{TTL: preparedLinger}}
}

// preparedResponse is one encoded response: the version and the access
// token it carries, and its bytes.
type preparedResponse struct {
	version string
	token   string
	msg     *grpc.PreparedMsg
}

// get returns the encoded response carrying name's secret at version with
// token (its access token, or "" for a withdrawn secret), encoding it on
// stream with res (which builds the resource) when no stream of stream's
// send compressor has yet. The other streams wait for those bytes rather
// than encode their own (linger.Map.Get).
func (p *preparedResponses) get(stream grpc.ServerStream, name, version, token string, res func() (*anypb.Any, error)) (*grpc.PreparedMsg, error) {
	encode := func() (*preparedResponse, error) {
		r, err := res()
		if err != nil {
			return nil, err
		}
		msg := &grpc.PreparedMsg{}
		if err := msg.Encode(stream, &discoveryv3.DiscoveryResponse{
			VersionInfo: version,
			Resources:   []*anypb.Any{r},
			TypeUrl:     TypeURL,
			Nonce:       nonce(name, version),
		}); err != nil {
			return nil, err
		}
		preparedEncodes.Add(1)
		return &preparedResponse{version: version, token: token, msg: msg}, nil
	}
	k, ok := server.PreparedKeyOf(stream.Context(), name)
	if !ok {
		e, err := encode()
		if err != nil {
			return nil, err
		}
		return e.msg, nil
	}
	e, err := p.m.Get(k, func(e *preparedResponse) bool { return e.version == version && e.token == token }, encode)
	if err != nil {
		return nil, err
	}
	return e.msg, nil
}
