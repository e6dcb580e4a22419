package tokencache

import (
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// recordVersion is the first byte of an encoded record.
const recordVersion = 1

// errBadRecord is what decodeRecord returns for any malformed input; it says
// nothing about the content.
var errBadRecord = errors.New("tokencache: malformed record")

// zeroTime encodes the zero time.Time, whose UnixNano is undefined.
const zeroTime = math.MinInt64

// appendRecord appends r's encoding to dst: the version byte, the token
// type, the scopes (a count, then each), the access token, each string
// preceded by its length as a uvarint; then IssuedAt, ExpiresAt and
// RefreshAt as big-endian int64 UnixNano. Times keep their instant, not
// their location or monotonic clock reading.
func appendRecord(dst []byte, r *Record) []byte {
	dst = append(dst, recordVersion)
	dst = appendString(dst, r.TokenType)
	dst = binary.AppendUvarint(dst, uint64(len(r.Scopes)))
	for _, s := range r.Scopes {
		dst = appendString(dst, s)
	}
	dst = appendString(dst, r.AccessToken.Reveal())
	dst = binary.BigEndian.AppendUint64(dst, uint64(unixNano(r.IssuedAt)))
	dst = binary.BigEndian.AppendUint64(dst, uint64(unixNano(r.ExpiresAt)))
	dst = binary.BigEndian.AppendUint64(dst, uint64(unixNano(r.RefreshAt)))
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return zeroTime
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == zeroTime {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// decodeRecord decodes what appendRecord wrote. The record's strings share
// one copy of b, so b may be reused afterwards.
func decodeRecord(b []byte) (*Record, error) {
	if len(b) == 0 || b[0] != recordVersion {
		return nil, errBadRecord
	}
	// One string holds every field; the record's strings are slices of it.
	d := decoder{s: string(b[1:])}
	r := &Record{}
	r.TokenType = d.str()
	if n := d.uvarint(); n > 0 {
		// Each scope takes at least its length byte: a count beyond the
		// bytes left is malformed, and must not size an allocation.
		if n > uint64(len(d.s)) {
			return nil, errBadRecord
		}
		r.Scopes = make([]string, n)
		for i := range r.Scopes {
			r.Scopes[i] = d.str()
		}
	}
	r.AccessToken = secret.String(d.str())
	r.IssuedAt = fromUnixNano(d.int64())
	r.ExpiresAt = fromUnixNano(d.int64())
	r.RefreshAt = fromUnixNano(d.int64())
	if d.bad || len(d.s) != 0 {
		return nil, errBadRecord
	}
	return r, nil
}

// decoder reads an encoded record. After the first error it sets bad and
// returns zero values.
type decoder struct {
	s   string
	bad bool
}

func (d *decoder) uvarint() uint64 {
	if d.bad {
		return 0
	}
	var v uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if i >= len(d.s) {
			break
		}
		c := d.s[i]
		if i == binary.MaxVarintLen64-1 && c > 1 {
			break // overflows 64 bits
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.s = d.s[i+1:]
			return v
		}
	}
	d.bad = true
	return 0
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.bad || n > uint64(len(d.s)) {
		d.bad = true
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

func (d *decoder) int64() int64 {
	if d.bad || len(d.s) < 8 {
		d.bad = true
		return 0
	}
	s := d.s
	v := uint64(s[0])<<56 | uint64(s[1])<<48 | uint64(s[2])<<40 | uint64(s[3])<<32 |
		uint64(s[4])<<24 | uint64(s[5])<<16 | uint64(s[6])<<8 | uint64(s[7])
	d.s = s[8:]
	return int64(v)
}

// bufPool holds scratch buffers for encoded records, so sealing and
// opening allocate only their results.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// maxPooledBuf is the largest buffer returned to bufPool; rare huge tokens
// must not pin memory.
const maxPooledBuf = 64 << 10

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

// putBuf clears the bytes in use (plaintext tokens must not linger; the
// bytes beyond were cleared by earlier uses) and returns b to the pool.
func putBuf(b *[]byte) {
	clear(*b)
	if cap(*b) > maxPooledBuf {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// SealRecord encodes r and seals it with the keyring's current key, bound
// to aad (the key the value is filed under, so it cannot be replayed under
// another key). The result is a new slice.
func (k *Keyring) SealRecord(r *Record, aad []byte) []byte { return sealRecord(k, r, aad) }

// OpenRecord opens a value SealRecord produced with the same aad and
// returns a new Record. It returns ErrUnknownKey if the value was sealed
// with a key not in the keyring, and ErrCorrupt if it is malformed, was
// altered or was sealed for another aad.
func (k *Keyring) OpenRecord(b, aad []byte) (*Record, error) { return openRecord(k, b, aad) }

// sealRecord is SealRecord for an aad of either type; a string aad (a cache
// key) is copied into the scratch buffer rather than converted, which
// would allocate.
func sealRecord[A string | []byte](k *Keyring, r *Record, aad A) []byte {
	buf := getBuf()
	b := append((*buf)[:0], aad...)
	b = appendRecord(b, r)
	*buf = b
	n := len(aad)
	out := k.Seal(make([]byte, 0, k.Overhead()+len(b)-n), b[n:], b[:n])
	putBuf(buf)
	return out
}

// openRecord is OpenRecord for an aad of either type.
func openRecord[A string | []byte](k *Keyring, sealed []byte, aad A) (*Record, error) {
	buf := getBuf()
	defer putBuf(buf)
	b := append((*buf)[:0], aad...)
	*buf = b
	n := len(b)
	b, err := k.open(b, sealed, b[:n:n])
	if err != nil {
		return nil, err
	}
	*buf = b // keep a grown buffer, and have putBuf clear the plaintext
	r, err := decodeRecord(b[n:])
	if err != nil {
		// Authentic but undecodable: written by an incompatible version.
		return nil, ErrCorrupt
	}
	return r, nil
}
