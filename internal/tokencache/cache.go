// Package tokencache is the broker's bounded value store for tokens: a
// ristretto cache whose cost is the bytes each record holds, so max_cost
// bounds the memory spent on tokens, and whose TTL ends a record when its
// token may no longer be served.
//
// The store is lossy by design. ristretto applies new records
// asynchronously and its admission policy may reject them when full, so a
// record that was Set may never be seen by Get. Callers must treat the cache
// as an optimisation, never as the source of truth for coordination.
package tokencache

import (
	"errors"
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

// Cost is the number of bytes a record is charged for in the cache.
func (r *Record) Cost() int64 {
	n := recordOverhead + len(r.AccessToken) + len(r.TokenType)
	for _, s := range r.Scopes {
		n += len(s) + 16
	}
	return int64(n)
}

// Cache is the token store. Its methods are safe for concurrent use.
type Cache struct {
	rc *ristretto.Cache[string, *Record]
}

// New returns a cache that holds at most maxCost bytes of records.
func New(maxCost int64) (*Cache, error) {
	if maxCost <= 0 {
		return nil, errors.New("tokencache: max cost must be positive")
	}
	// ristretto wants about ten counters per item it may hold; the smallest
	// plausible record is about 0.5 KiB. The cap bounds the admission
	// policy's own memory (about 32 MiB) for very large caches.
	counters := min(max(maxCost/512*10, 1000), 1<<24)
	rc, err := ristretto.NewCache(&ristretto.Config[string, *Record]{
		NumCounters: counters,
		MaxCost:     maxCost,
		BufferItems: 64,
		// Cost is the record's own size; ristretto's per-item bookkeeping
		// is charged too (IgnoreInternalCost false).
	})
	if err != nil {
		return nil, err
	}
	return &Cache{rc: rc}, nil
}

// Get returns the record filed under key, if it is present and its TTL has
// not passed. The record must not be modified.
func (c *Cache) Get(key string) (*Record, bool) {
	r, ok := c.rc.Get(key)
	return r, ok && r != nil
}

// Set files r under key for ttl and waits until the record is visible to
// Get, unless it was dropped or rejected by the admission policy. It
// reports whether the record was accepted for insertion. A ttl of zero or
// less stores nothing (and leaves a record already filed under key alone).
func (c *Cache) Set(key string, r *Record, ttl time.Duration) bool {
	if ttl <= 0 {
		return false
	}
	ok := c.rc.SetWithTTL(key, r, r.Cost(), ttl)
	c.rc.Wait()
	return ok
}

// Del removes the record filed under key.
func (c *Cache) Del(key string) { c.rc.Del(key) }

// MaxCost returns the cache's capacity in bytes.
func (c *Cache) MaxCost() int64 { return c.rc.MaxCost() }

// Close stops the cache's goroutines and drops every record.
func (c *Cache) Close() { c.rc.Close() }
