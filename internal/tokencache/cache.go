// Package tokencache is the broker's bounded value store for tokens: a
// ristretto cache whose cost is the bytes each record holds, so max_cost
// bounds the memory spent on tokens, and whose TTL ends a record when its
// token may no longer be served.
//
// Records are sealed before they enter the cache: encoded, then encrypted
// and authenticated with AES-256-GCM by a Keyring, bound to the cache key
// they are filed under. A memory dump or a shared tier (Redis) holds only
// ciphertext, and a value cannot be replayed under another key. Keyrings
// rotate: the current key seals, every key opens.
//
// The store is lossy by design. ristretto applies new records
// asynchronously and its admission policy may reject them when full, so a
// record that was Set may never be seen by Get. Callers must treat the cache
// as an optimisation, never as the source of truth for coordination.
package tokencache

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Record is one cached token with its timing.
type Record struct {
	// AccessToken is the token itself.
	AccessToken secret.String
	// TokenType is the endpoint's token_type.
	TokenType string
	// Scopes are the granted scopes.
	Scopes []string
	// IssuedAt is when the request that obtained the token was sent.
	IssuedAt time.Time
	// ExpiresAt is when the token expires.
	ExpiresAt time.Time
	// RefreshAt is the token's refresh point.
	RefreshAt time.Time
}

// recordOverhead approximates the fixed bytes of a Record (the struct, its
// three timestamps and the slice and string headers), so that cost tracks
// memory even for short tokens.
const recordOverhead = 160

// Cost is the number of bytes a record is charged for in a cache without a
// keyring. In a sealing cache a record costs its sealed size instead.
func (r *Record) Cost() int64 {
	n := recordOverhead + len(r.AccessToken) + len(r.TokenType)
	for _, s := range r.Scopes {
		n += len(s) + 16
	}
	return int64(n)
}

// sealedOverhead approximates the fixed bytes of a sealed value besides
// its own length: the value header ristretto stores and the rounding of
// the allocation. ristretto's per-item bookkeeping is charged on top.
const sealedOverhead = 48

// value is what the cache stores: the sealed record, or, in a cache
// without a keyring, the record itself.
type value struct {
	sealed []byte
	plain  *Record
}

// Cache is the token store. Its methods are safe for concurrent use.
type Cache struct {
	rc        *ristretto.Cache[string, value]
	kr        *Keyring
	evictions atomic.Int64
	closing   atomic.Bool
}

// New returns a cache that holds at most maxCost bytes of records, sealed
// with kr.
//
// A nil kr stores records unsealed, as plain pointers, and Get then returns
// the stored record itself: that mode exists for benchmarks that measure
// what sealing costs, and must not be used by the broker.
func New(maxCost int64, kr *Keyring) (*Cache, error) {
	if maxCost <= 0 {
		return nil, errors.New("tokencache: max cost must be positive")
	}
	c := &Cache{kr: kr}
	// ristretto wants about ten counters per item it may hold; the smallest
	// plausible record is about 0.5 KiB. The cap bounds the admission
	// policy's own memory (about 32 MiB) for very large caches.
	counters := min(max(maxCost/512*10, 1000), 1<<24)
	rc, err := ristretto.NewCache(&ristretto.Config[string, value]{
		NumCounters: counters,
		MaxCost:     maxCost,
		BufferItems: 64,
		// Cost is the value's own size; ristretto's per-item bookkeeping
		// is charged too (IgnoreInternalCost false).
		OnEvict: c.onEvict,
	})
	if err != nil {
		return nil, err
	}
	c.rc = rc
	return c, nil
}

// onEvict counts the records ristretto evicts to make room. ristretto
// calls it also for records its TTL sweep removes (they carry their
// expiration; victims of the cost policy do not) and for every record when
// the cache closes: neither is an eviction.
func (c *Cache) onEvict(item *ristretto.Item[value]) {
	if item.Expiration.IsZero() && !c.closing.Load() {
		c.evictions.Add(1)
	}
}

// Keyring returns the keyring that seals the cache's records, nil for an
// unsealed cache.
func (c *Cache) Keyring() *Keyring { return c.kr }

// Get returns the record filed under key, if it is present and its TTL has
// not passed. A sealing cache returns a new Record on each call; an
// unsealed one returns the stored record, which must not be modified.
//
// A value that cannot be opened (sealed with a key since removed from the
// keyring, or corrupt) is a miss, and is deleted.
func (c *Cache) Get(key string) (*Record, bool) {
	v, ok := c.rc.Get(key)
	if !ok {
		return nil, false
	}
	if c.kr == nil {
		return v.plain, v.plain != nil
	}
	r, err := openRecord(c.kr, v.sealed, key)
	if err != nil {
		c.rc.Del(key)
		return nil, false
	}
	return r, true
}

// Set files r under key for ttl and waits until the record is visible to
// Get, unless it was dropped or rejected by the admission policy. It
// reports whether the record was accepted for insertion. A ttl of zero or
// less, or a nil r, stores nothing (and leaves a record already filed
// under key alone).
//
// A sealing cache seals r bound to key, so the value opens only under the
// key it was filed under; later changes to r do not reach the cache.
func (c *Cache) Set(key string, r *Record, ttl time.Duration) bool {
	if ttl <= 0 || r == nil {
		return false
	}
	var v value
	var cost int64
	if c.kr == nil {
		v.plain, cost = r, r.Cost()
	} else {
		v.sealed = sealRecord(c.kr, r, key)
		cost = int64(len(v.sealed)) + sealedOverhead
	}
	ok := c.rc.SetWithTTL(key, v, cost, ttl)
	c.rc.Wait()
	return ok
}

// Del removes the record filed under key.
func (c *Cache) Del(key string) { c.rc.Del(key) }

// MaxCost returns the cache's capacity in bytes.
func (c *Cache) MaxCost() int64 { return c.rc.MaxCost() }

// Used returns the bytes the cache's records are charged for, ristretto's
// bookkeeping included. It lags a Del slightly: ristretto applies
// deletions to its cost accounting asynchronously.
func (c *Cache) Used() int64 { return c.rc.MaxCost() - c.rc.RemainingCost() }

// Evictions returns how many records the cache has evicted to make room
// for others since it was created. Records that expired or were deleted
// are not counted, nor are records the admission policy refused to take.
func (c *Cache) Evictions() int64 { return c.evictions.Load() }

// Close stops the cache's goroutines and drops every record.
func (c *Cache) Close() {
	c.closing.Store(true)
	c.rc.Close()
}
