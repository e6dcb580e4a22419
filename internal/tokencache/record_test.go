package tokencache

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// equalRecords reports how a and b differ, or "" if they hold the same
// values (times compared as instants).
func equalRecords(a, b *Record) string {
	switch {
	case a == nil || b == nil:
		if a != b {
			return fmt.Sprintf("got %v, want %v", a, b)
		}
	case a.AccessToken.Reveal() != b.AccessToken.Reveal():
		return fmt.Sprintf("access token of %d bytes, want the %d-byte one", len(a.AccessToken), len(b.AccessToken))
	case a.TokenType != b.TokenType:
		return fmt.Sprintf("token type %q, want %q", a.TokenType, b.TokenType)
	case strings.Join(a.Scopes, "\x00") != strings.Join(b.Scopes, "\x00") || len(a.Scopes) != len(b.Scopes):
		return fmt.Sprintf("scopes %q, want %q", a.Scopes, b.Scopes)
	case !a.IssuedAt.Equal(b.IssuedAt) || a.IssuedAt.IsZero() != b.IssuedAt.IsZero():
		return fmt.Sprintf("issued at %v, want %v", a.IssuedAt, b.IssuedAt)
	case !a.ExpiresAt.Equal(b.ExpiresAt) || a.ExpiresAt.IsZero() != b.ExpiresAt.IsZero():
		return fmt.Sprintf("expires at %v, want %v", a.ExpiresAt, b.ExpiresAt)
	case !a.RefreshAt.Equal(b.RefreshAt) || a.RefreshAt.IsZero() != b.RefreshAt.IsZero():
		return fmt.Sprintf("refresh at %v, want %v", a.RefreshAt, b.RefreshAt)
	}
	return ""
}

func TestRecordRoundTrip(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	now := time.Now()
	for _, tc := range []struct {
		name string
		r    *Record
	}{
		{"typical", record("eyJhbGciOiJSUzI1NiJ9.payload.signature")},
		{"zero record", &Record{}},
		{"empty scopes", &Record{AccessToken: "t", Scopes: []string{}, IssuedAt: now, ExpiresAt: now, RefreshAt: now}},
		{"empty scope strings", &Record{AccessToken: "t", Scopes: []string{"", "a", ""}}},
		{"many scopes", &Record{AccessToken: "t", Scopes: strings.Fields(strings.Repeat("s ", 300))}},
		{"long token", record(strings.Repeat("x", 100_000))},
		{"binary token", record("\x00\xff\n\x80")},
		{"pre-1970 and far future", &Record{AccessToken: "t", IssuedAt: time.Date(1900, 1, 1, 0, 0, 0, 1, time.UTC),
			ExpiresAt: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), RefreshAt: time.Unix(0, 0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sealed := kr.SealRecord(tc.r, []byte("cache-key"))
			got, err := kr.OpenRecord(sealed, []byte("cache-key"))
			if err != nil {
				t.Fatalf("OpenRecord: %v", err)
			}
			if d := equalRecords(got, tc.r); d != "" {
				t.Error(d)
			}
			if len(tc.r.Scopes) > 0 && &got.Scopes[0] == &tc.r.Scopes[0] {
				t.Error("the opened record shares the original's scopes, want a copy")
			}
		})
	}
}

func TestSealedRecordHidesTheToken(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	r := record("super-secret-access-token")
	r.TokenType = "BearerTypeMarker"
	r.Scopes = []string{"scope/marker"}
	sealed := kr.SealRecord(r, []byte("cache-key"))
	for _, s := range []string{"super-secret", "access-token", "BearerTypeMarker", "scope/marker"} {
		if bytes.Contains(sealed, []byte(s)) {
			t.Errorf("sealed bytes contain %q, want only ciphertext", s)
		}
	}
	if !bytes.HasPrefix(sealed, []byte("\x02k1")) {
		t.Errorf("sealed record starts %q, want the key id prefix \"\\x02k1\"", sealed[:3])
	}
}

func TestOpenRecordErrors(t *testing.T) {
	kr := newKeyring(t, "k1", k1)
	sealed := kr.SealRecord(record("tok"), []byte("key-a"))
	if _, err := kr.OpenRecord(sealed, []byte("key-b")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("under another cache key: got %v, want ErrCorrupt", err)
	}
	bad := bytes.Clone(sealed)
	bad[len(bad)/2] ^= 1
	if _, err := kr.OpenRecord(bad, []byte("key-a")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tampered: got %v, want ErrCorrupt", err)
	}
	if _, err := newKeyring(t, "k2", k2).OpenRecord(sealed, []byte("key-a")); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("with another keyring: got %v, want ErrUnknownKey", err)
	}
	// Authentic, but not a record this version can read.
	junk := kr.Seal(nil, []byte{99, 1, 2, 3}, []byte("key-a"))
	if _, err := kr.OpenRecord(junk, []byte("key-a")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("unknown record version: got %v, want ErrCorrupt", err)
	}
}

// TestDecodeRejectsMalformed: every truncation, a trailing byte, another
// version and counts beyond the input are errors, and nothing panics.
func TestDecodeRejectsMalformed(t *testing.T) {
	enc := appendRecord(nil, record("token"))
	if _, err := decodeRecord(enc); err != nil {
		t.Fatalf("decode of a good encoding: %v", err)
	}
	for n := range len(enc) {
		if r, err := decodeRecord(enc[:n]); err == nil {
			t.Errorf("truncated to %d of %d bytes: got %v, want an error", n, len(enc), r)
		}
	}
	for name, b := range map[string][]byte{
		"trailing byte":       append(bytes.Clone(enc), 0),
		"version 0":           append([]byte{0}, enc[1:]...),
		"version 2":           append([]byte{2}, enc[1:]...),
		"huge scope count":    {1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"huge string length":  {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"overlong varint":     {1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00},
		"varint overflows 64": {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},
	} {
		if r, err := decodeRecord(b); err == nil {
			t.Errorf("%s: got %v, want an error", name, r)
		}
	}
}

// TestEncodingIsCompact: the encoding adds little to the bytes of its
// strings, so the cache's cost tracks the token's size.
func TestEncodingIsCompact(t *testing.T) {
	r := record(strings.Repeat("t", 1000))
	strs := len(r.AccessToken) + len(r.TokenType) + len(r.Scopes[0])
	// version, type length, scope count, scope length, 2-byte token length, 3 times
	if got, want := len(appendRecord(nil, r)), strs+1+1+1+1+2+3*8; got != want {
		t.Errorf("encoding of a 1000-byte token is %d bytes, want %d", got, want)
	}
	kr := newKeyring(t, "k1", k1)
	if got, want := len(kr.SealRecord(r, nil)), len(appendRecord(nil, r))+1+2+12+16; got != want {
		t.Errorf("sealed record is %d bytes, want %d", got, want)
	}
}

// FuzzOpenRecord: arbitrary bytes, as a sealed value or as the plaintext
// of an authentic one, never panic, and a record that opens survives a
// round trip through the encoding.
func FuzzOpenRecord(f *testing.F) {
	kr := newKeyring(f, "k1", k1)
	aad := []byte("cache-key")
	for _, r := range []*Record{record("tok"), {}, {AccessToken: "a", Scopes: []string{"x", "y"}}} {
		f.Add(kr.SealRecord(r, aad))
		f.Add(appendRecord(nil, r))
	}
	f.Add([]byte{})
	f.Add([]byte{2, 'k', '1'})
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := kr.OpenRecord(b, aad); err == nil {
			if _, err := decodeRecord(appendRecord(nil, r)); err != nil {
				t.Fatalf("re-encoding an opened record: %v", err)
			}
		}
		r, err := kr.OpenRecord(kr.Seal(nil, b, aad), aad)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("undecodable plaintext: got %v, want ErrCorrupt", err)
			}
			return
		}
		r2, err := decodeRecord(appendRecord(nil, r))
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if d := equalRecords(r2, r); d != "" {
			t.Fatal(d)
		}
	})
}
