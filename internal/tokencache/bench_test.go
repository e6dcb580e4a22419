package tokencache

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchKey is shaped like the broker's cache keys (hex HMAC-SHA256).
const benchKey = "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea"

// benchRecord is a typical hit: a JWT access token of about 900 bytes and
// two scopes.
func benchRecord() *Record {
	return record("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + strings.Repeat("eyJzdWIiOiJ3b3JrZXIifQ", 30) + "." + strings.Repeat("c2lnbmF0dXJl", 20))
}

func benchGet(b *testing.B, kr *Keyring) {
	c, err := New(1<<20, kr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	if !setWait(c, benchKey, benchRecord(), time.Hour) {
		b.Fatal("Set refused the record")
	}
	var misses atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := c.Get(benchKey); !ok {
				misses.Add(1)
			}
		}
	})
	if n := misses.Load(); n > 0 {
		b.Fatalf("%d misses, want every Get to hit", n)
	}
}

// BenchmarkGetSealed is a cache hit in a sealing cache: ristretto lookup,
// AES-256-GCM open, decode into a new Record.
func BenchmarkGetSealed(b *testing.B) { benchGet(b, newKeyring(b, "k1", k1)) }

// BenchmarkGetPlain is the baseline: the same hit in a cache without a
// keyring, which hands out the stored *Record.
func BenchmarkGetPlain(b *testing.B) { benchGet(b, nil) }

// BenchmarkSealRecord is the sealing cost on the miss path (Set).
func BenchmarkSealRecord(b *testing.B) {
	kr, r := newKeyring(b, "k1", k1), benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		_ = sealRecord(kr, r, benchKey)
	}
}

// BenchmarkOpenRecord is the opening cost on the hit path without the
// cache lookup.
func BenchmarkOpenRecord(b *testing.B) {
	kr := newKeyring(b, "k1", k1)
	sealed := sealRecord(kr, benchRecord(), benchKey)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := openRecord(kr, sealed, benchKey); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeRecord is the part of OpenRecord that is not cryptography.
func BenchmarkDecodeRecord(b *testing.B) {
	enc := appendRecord(nil, benchRecord())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeRecord(enc); err != nil {
			b.Fatal(err)
		}
	}
}
