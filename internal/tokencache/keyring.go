package tokencache

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
)

// KeySize is the length in bytes of a sealing key (AES-256).
const KeySize = 32

// maxKeyIDLen is the longest key id; ids are stored in front of every
// sealed value, so they are kept short.
const maxKeyIDLen = 16

// redacted is what key material prints as.
const redacted = "[redacted]"

// ErrUnknownKey is returned by Open when a value was sealed with a key that
// is not in the keyring (it was removed by a rotation, or comes from a
// replica configured with other keys).
var ErrUnknownKey = errors.New("tokencache: sealed with a key that is not in the keyring")

// ErrCorrupt is returned by Open when a value is malformed, was tampered
// with, or was sealed for other associated data (another cache key).
var ErrCorrupt = errors.New("tokencache: sealed value is malformed, altered or sealed for another key")

// Key is one sealing key. Its String, GoString, Format, MarshalText and
// LogValue methods show the id only, never the secret.
type Key struct {
	// ID names the key: 1 to 16 characters of A-Z, a-z, 0-9, "_" and "-".
	// It is not secret: it prefixes every value the key seals.
	ID string
	// Secret is the AES-256 key, KeySize bytes.
	Secret []byte
}

// String implements fmt.Stringer without the secret.
func (k Key) String() string { return "tokencache.Key{ID: " + k.ID + ", Secret: " + redacted + "}" }

// GoString implements fmt.GoStringer without the secret.
func (k Key) GoString() string { return k.String() }

// Format implements fmt.Formatter, so no verb prints the secret.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// MarshalText implements encoding.TextMarshaler without the secret, so
// JSON and YAML encoders (and slog's JSON handler, for a Key inside another
// value) redact too.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// LogValue implements slog.LogValuer without the secret.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", k.ID), slog.String("secret", redacted))
}

// ringKey is a key ready for use.
type ringKey struct {
	id   string
	aead cipher.AEAD // AES-256-GCM with a random nonce prepended to its output
}

// Keyring seals values with its current key and opens values sealed with
// any of its keys, so keys can rotate: add the new key as current and keep
// the old one until every value it sealed has expired.
//
// A sealed value is: one byte holding the length of the key id, the key id,
// a 12-byte random nonce, and the AES-256-GCM ciphertext with its 16-byte
// tag. A key must not seal more than 2^32 values (random nonces); rotate
// long before.
//
// A Keyring is safe for concurrent use. It never prints key material: its
// String, GoString, Format, MarshalText and LogValue methods show key ids
// only.
type Keyring struct {
	current *ringKey
	keys    []*ringKey // current first
}

// NewKeyring returns a keyring holding keys, sealing with the key whose id
// is current. It copies nothing it does not need: the secrets are expanded
// into cipher state and not retained. Errors name the key (by id, or by
// position when the id itself is invalid) and the rule it breaks, never
// the secret.
func NewKeyring(keys []Key, current string) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("tokencache: keyring needs at least one key")
	}
	kr := &Keyring{}
	for i, k := range keys {
		if !validKeyID(k.ID) {
			return nil, fmt.Errorf("tokencache: key %d: id must be 1 to %d characters of A-Z, a-z, 0-9, '_' and '-'", i+1, maxKeyIDLen)
		}
		if len(k.Secret) != KeySize {
			return nil, fmt.Errorf("tokencache: key %q: secret must be %d bytes (AES-256), got %d", k.ID, KeySize, len(k.Secret))
		}
		if kr.find(k.ID) != nil {
			return nil, fmt.Errorf("tokencache: key %q: duplicate key id", k.ID)
		}
		rk, err := newRingKey(k.ID, k.Secret)
		if err != nil {
			return nil, fmt.Errorf("tokencache: key %q: %w", k.ID, err)
		}
		kr.keys = append(kr.keys, rk)
	}
	if current == "" {
		return nil, errors.New("tokencache: current key id is empty")
	}
	if !validKeyID(current) {
		return nil, fmt.Errorf("tokencache: current key id must be 1 to %d characters of A-Z, a-z, 0-9, '_' and '-'", maxKeyIDLen)
	}
	kr.current = kr.find(current)
	if kr.current == nil {
		return nil, fmt.Errorf("tokencache: current key %q is not among the keys", current)
	}
	// Keep the current key first: it is the one most values are sealed
	// with, so Open finds it first.
	i := slices.Index(kr.keys, kr.current)
	copy(kr.keys[1:i+1], kr.keys[:i])
	kr.keys[0] = kr.current
	return kr, nil
}

// RandomKeyring returns a keyring of one random key with id "random", for
// a broker without configured keys: its sealed values are readable by this
// process only.
func RandomKeyring() *Keyring {
	secret := make([]byte, KeySize)
	_, _ = rand.Read(secret) // crypto/rand.Read never fails (Go 1.24+)
	kr, err := NewKeyring([]Key{{ID: "random", Secret: secret}}, "random")
	clear(secret)
	if err != nil {
		panic("tokencache: random keyring: " + err.Error()) // unreachable: the key is valid by construction
	}
	return kr
}

func newRingKey(id string, secret []byte) (*ringKey, error) {
	block, err := aes.NewCipher(secret)
	if err != nil {
		return nil, errors.New("secret is not a valid AES key")
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, errors.New("cannot set up AES-GCM")
	}
	return &ringKey{id: id, aead: aead}, nil
}

// validKeyID reports whether id is 1 to 16 characters of A-Z, a-z, 0-9,
// '_' and '-'.
func validKeyID(id string) bool {
	if len(id) == 0 || len(id) > maxKeyIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func (k *Keyring) find(id string) *ringKey {
	for _, rk := range k.keys {
		if rk.id == id {
			return rk
		}
	}
	return nil
}

// Current returns the id of the key that seals.
func (k *Keyring) Current() string { return k.current.id }

// IDs returns the ids of every key in the keyring, the current one first.
func (k *Keyring) IDs() []string {
	ids := make([]string, len(k.keys))
	for i, rk := range k.keys {
		ids[i] = rk.id
	}
	return ids
}

// Overhead is how many bytes Seal adds to a plaintext with the current
// key.
func (k *Keyring) Overhead() int { return 1 + len(k.current.id) + k.current.aead.Overhead() }

// Seal appends to dst plaintext sealed with the current key, bound to aad
// (associated data that Open must be given again, such as the cache key
// the value is filed under), and returns the extended slice. dst and
// plaintext must not overlap.
func (k *Keyring) Seal(dst, plaintext, aad []byte) []byte {
	rk := k.current
	dst = slices.Grow(dst, k.Overhead()+len(plaintext))
	dst = append(dst, byte(len(rk.id)))
	dst = append(dst, rk.id...)
	return rk.aead.Seal(dst, nil, plaintext, aad)
}

// Open returns the plaintext of a value Seal produced with the same aad,
// with any key of the keyring, in a new slice. It returns ErrUnknownKey
// if the key is not in the keyring and ErrCorrupt if the value is
// malformed, was altered, or was sealed with another aad.
func (k *Keyring) Open(sealed, aad []byte) ([]byte, error) {
	return k.open(nil, sealed, aad)
}

// open is Open appending the plaintext to dst.
func (k *Keyring) open(dst, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 1 {
		return nil, ErrCorrupt
	}
	n := int(sealed[0])
	if n == 0 || n > maxKeyIDLen || len(sealed) < 1+n {
		return nil, ErrCorrupt
	}
	id, body := sealed[1:1+n], sealed[1+n:]
	var rk *ringKey
	for _, c := range k.keys {
		if c.id == string(id) { // no allocation: the compiler compares in place
			rk = c
			break
		}
	}
	if rk == nil {
		return nil, ErrUnknownKey
	}
	if len(body) < rk.aead.Overhead() {
		return nil, ErrCorrupt
	}
	out, err := rk.aead.Open(dst, nil, body, aad)
	if err != nil {
		return nil, ErrCorrupt
	}
	return out, nil
}

// String implements fmt.Stringer with the key ids only.
func (k Keyring) String() string {
	if k.current == nil {
		return "tokencache.Keyring{}"
	}
	return "tokencache.Keyring{Current: " + k.current.id + ", Keys: [" + strings.Join(k.IDs(), " ") + "]}"
}

// GoString implements fmt.GoStringer with the key ids only.
func (k Keyring) GoString() string { return k.String() }

// Format implements fmt.Formatter, so no verb prints key material.
func (k Keyring) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// MarshalText implements encoding.TextMarshaler with the key ids only.
func (k Keyring) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// LogValue implements slog.LogValuer with the key ids only.
func (k Keyring) LogValue() slog.Value {
	if k.current == nil {
		return slog.GroupValue()
	}
	return slog.GroupValue(slog.String("current", k.current.id), slog.Any("keys", k.IDs()))
}

// ParseKeys reads sealing keys in the file and environment format: one key
// per line as ID:BASE64, where BASE64 is standard (padded) or raw URL
// base64 of exactly 32 bytes. Blank lines are ignored, and so is
// everything from a '#' to the end of its line. The first key is the
// current one; its id is the second result. Errors name the line and the
// rule it breaks, never echo key material, and carry no package prefix:
// the caller names the file or variable ("sealing.keys_file: line 3: ...").
func ParseKeys(text []byte) ([]Key, string, error) {
	var keys []Key
	lines := bytes.Split(text, []byte("\n"))
	for i, line := range lines {
		lineNo := i + 1
		if j := bytes.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		rawID, rawKey, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return nil, "", fmt.Errorf("line %d: want ID:BASE64", lineNo)
		}
		id := string(bytes.TrimSpace(rawID))
		if !validKeyID(id) {
			// The id is not echoed: a malformed line may hold key material
			// before its colon.
			return nil, "", fmt.Errorf("line %d: key id must be 1 to %d characters of A-Z, a-z, 0-9, '_' and '-'", lineNo, maxKeyIDLen)
		}
		secret, err := decodeKey(bytes.TrimSpace(rawKey))
		if err != nil {
			return nil, "", fmt.Errorf("line %d: key %q: %w", lineNo, id, err)
		}
		for _, k := range keys {
			if k.ID == id {
				clear(secret)
				return nil, "", fmt.Errorf("line %d: duplicate key id %q", lineNo, id)
			}
		}
		keys = append(keys, Key{ID: id, Secret: secret})
	}
	if len(keys) == 0 {
		return nil, "", errors.New("no keys: want one ID:BASE64 line per key")
	}
	return keys, keys[0].ID, nil
}

// decodeKey decodes a 32-byte key from base64: standard or URL alphabet,
// padded or not. Its errors hold no part of the input.
func decodeKey(b64 []byte) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding, base64.URLEncoding, base64.RawStdEncoding} {
		out := make([]byte, enc.DecodedLen(len(b64)))
		n, err := enc.Strict().Decode(out, b64)
		if err != nil {
			clear(out)
			continue
		}
		if n != KeySize {
			clear(out)
			return nil, fmt.Errorf("secret must be %d bytes, got %d", KeySize, n)
		}
		return out[:n:n], nil
	}
	return nil, errors.New("secret is not valid base64 (standard, or raw URL)")
}
