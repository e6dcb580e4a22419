package broker

// This file is key resolution: a selector becomes a target (the fetcher,
// the credentials, the upstream request), its cache key (an HMAC over
// everything that selects a token) and its non-secret key id.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// keyer derives cache keys; key derivation is on every GetToken's path.
// The keys of broker-held clients' requests are remembered by their HMAC
// input (whose credential part is the client's binding, see
// credentialFields: the broker's own configuration, no caller's secret),
// so a held client's hit hashes nothing: it builds the input on its stack
// and looks its key and key id up. Pass-through requests are
// hashed every time: their input holds the secret the caller presented,
// which is never kept (its buffer is cleared after use). HMAC states are
// kept on a free list, not a sync.Pool: a pool is emptied by every
// garbage collection, and under load a new HMAC state per call cost more
// than the hashing.
type keyer struct {
	hmacKey []byte
	free    chan *keyState

	mu   sync.RWMutex
	held map[string]derivedKey // by HMAC input; at most maxHeldKeys
}

// derivedKey is a cache key and its key id.
type derivedKey struct{ key, id string }

// maxHeldKeys bounds the held clients' keys a keyer remembers (each a few
// hundred bytes); beyond it, further requests are hashed every time.
const maxHeldKeys = 10_000

// keyState is one HMAC state with its input buffer and sum.
type keyState struct {
	mac hash.Hash
	buf []byte
	sum []byte
}

func newKeyer(hmacKey []byte) *keyer {
	return &keyer{
		hmacKey: hmacKey,
		free:    make(chan *keyState, 4*runtime.GOMAXPROCS(0)),
		held:    make(map[string]derivedKey),
	}
}

// state takes an HMAC state from the free list, or makes one.
func (k *keyer) state() *keyState {
	select {
	case st := <-k.free:
		return st
	default:
		return &keyState{mac: hmac.New(sha256.New, k.hmacKey), buf: make([]byte, 0, 512), sum: make([]byte, 0, sha256.Size)}
	}
}

// release clears st's input (a secret does not linger) and puts it back
// on the free list, unless the list is full or its buffer grew large.
func (k *keyer) release(st *keyState) {
	clear(st.buf)
	if cap(st.buf) > 4096 {
		return
	}
	st.buf = st.buf[:0]
	select {
	case k.free <- st:
	default:
	}
}

// hash returns the HMAC of b.
func (k *keyer) hash(b []byte) string {
	st := k.state()
	defer k.release(st)
	st.buf = append(st.buf[:0], b...)
	st.mac.Reset()
	st.mac.Write(st.buf)
	st.sum = st.mac.Sum(st.sum[:0])
	return string(st.sum)
}

// derive computes the cache key of a request: HMAC-SHA256 over the
// provider, client id, the credentials (see credentialFields), the number
// of scopes, each scope (sorted, de-duplicated), audience, resource, the
// number of form parameters and each parameter's name and value (sorted by
// name: every parameter that reaches the token endpoint), each field
// followed by a NUL byte so that no two different requests share an
// encoding. Scopes, names, ids and parameters never contain NUL (the API
// rejects it). r.Scopes and r.Params must be normalised already. held says
// the request is a broker-held client's, whose key is remembered. It
// returns the key and its key id.
func (k *keyer) derive(provider string, r upstream.Request, held bool) (key, id string) {
	var stack [512]byte
	b := stack[:0]
	defer func() { clear(b) }()
	field := func(s string) {
		b = append(b, s...)
		b = append(b, 0)
	}
	field(provider)
	field(r.ClientID)
	kind, cred := credentialFields(r)
	field(kind)
	field(cred)
	b = strconv.AppendInt(b, int64(len(r.Scopes)), 10)
	b = append(b, 0)
	for _, s := range r.Scopes {
		field(s)
	}
	field(r.Audience)
	field(r.Resource)
	b = strconv.AppendInt(b, int64(len(r.Params)), 10)
	b = append(b, 0)
	for _, p := range r.Params {
		field(p[0])
		field(p[1])
	}
	if held {
		k.mu.RLock()
		d, ok := k.held[string(b)]
		k.mu.RUnlock()
		if ok {
			return d.key, d.id
		}
	}
	key = k.hash(b)
	id = keyID(key)
	if held {
		k.mu.Lock()
		if len(k.held) < maxHeldKeys {
			k.held[string(b)] = derivedKey{key: key, id: id}
		}
		k.mu.Unlock()
	}
	return key, id
}

// credentialFields are the credential fields of a cache key: "p" and the
// secret for pass-through credentials (a caller proves it holds the
// secret: a wrong one derives another key); "h" and the Credential's
// Binding for a broker-held client (its source: method and files, never
// the secret, private key or certificate bytes, so that a rotation of the
// material keeps the key and its tokens until their refresh point). The
// tag keeps a pass-through secret from ever deriving a held client's key.
func credentialFields(r upstream.Request) (kind, value string) {
	if r.Credential != nil {
		return credentialHeld, r.Credential.Binding
	}
	return credentialPassthrough, r.ClientSecret.Reveal()
}

// The kinds of credential fields in a cache key's input.
const (
	credentialHeld        = "h"
	credentialPassthrough = "p"
)

// deriveCredentials computes the HMAC of a client's credentials alone:
// provider, client id and the credential fields, each followed by a NUL
// byte. A full cache key always encodes more fields after them (the
// number of scopes at least), so the two never share an input. It files a
// rejection of the credentials (invalid_client), which holds whatever
// scopes a caller asks for.
func (k *keyer) deriveCredentials(provider string, r upstream.Request) string {
	var stack [256]byte
	b := stack[:0]
	defer func() { clear(b) }()
	kind, cred := credentialFields(r)
	for _, f := range []string{provider, r.ClientID, kind, cred} {
		b = append(b, f...)
		b = append(b, 0)
	}
	return k.hash(b)
}

// keyID is the non-secret identifier of a key shown to operators and
// callers: the first 64 bits of the HMAC, in hex. The HMAC reveals nothing
// of the secret it covers.
func keyID(key string) string {
	return hex.EncodeToString([]byte(key[:8]))
}

// normalizeScopes returns scopes sorted and without duplicates, copying
// only when they are not so already.
func normalizeScopes(scopes []string) []string {
	if len(scopes) == 0 {
		return nil
	}
	ordered := true
	for i := 1; i < len(scopes) && ordered; i++ {
		ordered = scopes[i-1] < scopes[i]
	}
	if ordered {
		return scopes
	}
	out := slices.Clone(scopes)
	slices.Sort(out)
	return slices.Compact(out)
}

// target is a request resolved against the configuration.
type target struct {
	fetcher  Fetcher
	provider string
	req      upstream.Request
	key      string // the cache key (raw HMAC bytes)
	keyID    string
	client   string // the held client's name, or the pass-through client id
}

// resolve finds the fetcher and credentials a selector names.
func (b *Broker) resolve(sel Selector) (target, error) {
	var provider, client string
	var req upstream.Request
	switch {
	case sel.Credentials != nil && sel.Client != "":
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	case sel.Credentials != nil:
		if !b.cfg.Passthrough {
			return target{}, ErrPassthroughDisabled
		}
		provider = sel.Credentials.Provider
		req.ClientID, req.ClientSecret = sel.Credentials.ClientID, sel.Credentials.ClientSecret
		client = req.ClientID
		req.Passthrough = true // limited to the provider's pass-through share
		if len(sel.Params) > 0 {
			return target{}, &FieldError{Field: FieldParams, Rule: "callers may pass parameters only for broker-held clients that allow them", Kind: ErrInvalidArgument}
		}
		req.Params = b.cfg.ProviderParams[provider]
	case sel.Client != "":
		c, ok := b.cfg.Clients[sel.Client]
		if !ok {
			return target{}, fmt.Errorf("client %q: %w", sel.Client, ErrUnknownClient)
		}
		provider, client = c.Provider, sel.Client
		req.ClientID, req.ClientSecret, req.Credential = c.ClientID, c.ClientSecret, c.Credential
		params, fe := withCallerParams(c, sel.Params)
		if fe != nil {
			return target{}, fe
		}
		req.Params = params
	default:
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	}
	f := b.cfg.Providers[provider]
	if f == nil {
		return target{}, &FieldError{Field: "selector.client_credentials.provider", Rule: "must name a configured provider", Kind: ErrUnknownProvider}
	}
	req.Scopes = normalizeScopes(sel.Scopes)
	req.Audience, req.Resource = sel.Audience, sel.Resource
	key, id := b.keyer.derive(provider, req, !req.Passthrough)
	return target{fetcher: f, provider: provider, req: req, key: key, keyID: id, client: client}, nil
}

// withCallerParams returns c's parameters with the caller's added (a
// caller's value wins over the client's for a name it allows), sorted by
// name; a name c does not allow is a *FieldError.
func withCallerParams(c Client, callerParams map[string]string) ([][2]string, *FieldError) {
	if len(callerParams) == 0 {
		return c.Params, nil
	}
	out := make([][2]string, 0, len(c.Params)+len(callerParams))
	for _, p := range c.Params {
		if _, over := callerParams[p[0]]; !over {
			out = append(out, p)
		}
	}
	for name, v := range callerParams {
		if !slices.Contains(c.AllowedParams, name) {
			return nil, &FieldError{Field: FieldParams, Rule: "names a parameter the client's allowed_parameters do not allow", Kind: ErrInvalidArgument}
		}
		out = append(out, [2]string{name, v})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out, nil
}
