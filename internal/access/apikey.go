package access

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strings"

	"google.golang.org/grpc/metadata"
)

// APIKey is a bearer API key as configured: the SHA-256 digest of the key
// (never the key itself) and the identity it authenticates.
type APIKey struct {
	// Identity is the key's name: callers presenting the key are known as
	// "apikey:" and this name (Identity.Name), which policy rules and
	// admin identities must spell so.
	Identity string
	// SHA256 is the SHA-256 digest of the key's bytes as sent after
	// "Bearer ".
	SHA256 [32]byte
}

// ParseSHA256Hex parses a SHA-256 digest written as 64 hexadecimal digits
// (as printed by `sha256sum` or `openssl dgst -sha256`). The error does not
// repeat s, which may be a key pasted by mistake.
func ParseSHA256Hex(s string) ([32]byte, error) {
	var d [32]byte
	if len(s) != hex.EncodedLen(len(d)) {
		return d, errors.New("must be 64 hexadecimal digits (a SHA-256 digest)")
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return [32]byte{}, errors.New("must be 64 hexadecimal digits (a SHA-256 digest)")
	}
	return d, nil
}

// authorizationKey is the metadata key that carries the bearer key.
const authorizationKey = "authorization"

// bearer errors; their text goes to callers as is and never holds the key.
var (
	errMalformedAuth   = errors.New(`malformed authorization metadata: want "Bearer <key>"`)
	errMultipleAuth    = errors.New("malformed authorization metadata: more than one value")
	errUnsupportedAuth = errors.New("unsupported authorization scheme: want Bearer")
)

// bearerKey returns the bearer key in ctx's incoming metadata: ok is false
// when there is no authorization metadata; err is set when there is one but
// it is not a single well-formed "Bearer <key>".
func bearerKey(ctx context.Context) (key string, ok bool, err error) {
	// ValueFromIncomingContext, not FromIncomingContext: the latter copies
	// every header on every call.
	vals := metadata.ValueFromIncomingContext(ctx, authorizationKey)
	switch len(vals) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, errMultipleAuth
	}
	scheme, rest, found := strings.Cut(vals[0], " ")
	if !found {
		if strings.EqualFold(scheme, "bearer") {
			return "", true, errMalformedAuth
		}
		return "", true, errUnsupportedAuth
	}
	if !strings.EqualFold(scheme, "bearer") {
		return "", true, errUnsupportedAuth
	}
	key = strings.TrimLeft(rest, " ")
	if key == "" || strings.ContainsAny(key, " \t\r\n") {
		return "", true, errMalformedAuth
	}
	return key, true, nil
}

// keyTable matches presented keys against configured digests.
type keyTable []APIKey

// lookup returns the (typed) identity whose digest is the SHA-256 of key. It
// compares against every configured digest in constant time, whatever
// matches, so timing tells nothing about which entry (if any) matched.
func (t keyTable) lookup(key string) (string, bool) {
	d := sha256.Sum256([]byte(key))
	match := -1
	for i := range t {
		eq := subtle.ConstantTimeCompare(d[:], t[i].SHA256[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return t[match].Identity, true
}
