package httpapi

import (
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/linger"
)

// A cache hit on the drop-in endpoint answers the same body to every
// caller of the key within a second: only expires_in changes, once a
// second. hitBodies holds, per key id, the last body encoded, and a call
// whose token and expires_in are the same reuses it rather than encode
// its own. Authorization and the broker's serving rule still run on every
// call; the body is reused only for the very token the broker returned
// (its bytes, type and scopes) and the expires_in of this call.
//
// A body holds the token in the clear, as every answer does while it is
// written. Like the gRPC server's shared encodings, a body is held for
// bodyLinger after it was encoded, then dropped: the token stays sealed at
// rest in the cache.

// bodyLinger is how long an encoded body is held.
const bodyLinger = 5 * time.Second

// maxHitBodies bounds the keys whose bodies are held; beyond it, further
// keys' bodies are encoded per call.
const maxHitBodies = 4096

// bodyEncodes counts the bodies encoded, for tests.
var bodyEncodes atomic.Int64

// hitBodies is the one set of held bodies of the package's handlers (a
// body depends on nothing but the token and expires_in), per key id.
var hitBodies = linger.Map[string, *encodedBody]{TTL: bodyLinger, Max: maxHitBodies}

// encodedBody is one success body and what it says.
type encodedBody struct {
	tok       broker.Token
	expiresIn int64
	body      []byte
}

// hitBody returns the success body of tok with expiresIn, and false when
// it could not be encoded.
func hitBody(tok broker.Token, expiresIn int64) ([]byte, bool) {
	encode := func() (*encodedBody, error) {
		tokenType := tok.TokenType
		if tokenType == "" {
			tokenType = "Bearer"
		}
		body, err := json.Marshal(tokenResponse{
			AccessToken: tok.AccessToken.Reveal(),
			TokenType:   tokenType,
			ExpiresIn:   expiresIn,
			Scope:       strings.Join(tok.Scopes, " "),
		})
		if err != nil {
			return nil, err
		}
		bodyEncodes.Add(1)
		return &encodedBody{tok: tok, expiresIn: expiresIn, body: body}, nil
	}
	var e *encodedBody
	var err error
	if tok.KeyID == "" {
		e, err = encode()
	} else {
		e, err = hitBodies.Get(tok.KeyID, func(e *encodedBody) bool {
			return e.expiresIn == expiresIn && e.tok.AccessToken == tok.AccessToken &&
				e.tok.TokenType == tok.TokenType && slices.Equal(e.tok.Scopes, tok.Scopes)
		}, encode)
	}
	if err != nil {
		return nil, false
	}
	return e.body, true
}
