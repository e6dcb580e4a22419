package broker

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// deriveKey computes the cache key of a request: HMAC-SHA256 over the
// provider, client id, client secret, the number of scopes, each scope
// (sorted, de-duplicated), audience and resource, each field followed by a
// NUL byte so that no two different requests share an encoding. Scopes,
// names and ids never contain NUL (the API rejects it). r.Scopes must be
// normalised already.
func deriveKey(hmacKey []byte, provider string, r upstream.Request) string {
	m := hmac.New(sha256.New, hmacKey)
	field := func(s string) {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	field(provider)
	field(r.ClientID)
	field(r.ClientSecret.Reveal())
	field(strconv.Itoa(len(r.Scopes)))
	for _, s := range r.Scopes {
		field(s)
	}
	field(r.Audience)
	field(r.Resource)
	return string(m.Sum(nil))
}

// keyID is the non-secret identifier of a key shown to operators and
// callers: the first 64 bits of the HMAC, in hex. The HMAC reveals nothing
// of the secret it covers.
func keyID(key string) string {
	return hex.EncodeToString([]byte(key[:8]))
}

// normalizeScopes returns a sorted copy of scopes without duplicates.
func normalizeScopes(scopes []string) []string {
	if len(scopes) == 0 {
		return nil
	}
	out := slices.Clone(scopes)
	slices.Sort(out)
	return slices.Compact(out)
}
