package verifier

import (
	"slices"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// entry is a cached verification: the claims of a token that passed every
// check that does not depend on the request.
type entry struct {
	sum    [32]byte // SHA-256 of the token: the cache key
	claims *Claims
	// kid is the id of the key that signed the token, nil for an
	// introspected one.
	kid *string
	// until is when the entry stops answering: the token's expiry (plus
	// the clock skew), or the introspection cap.
	until time.Time
}

// cost is the bytes an entry is charged for: its strings and fixed parts.
func (e *entry) cost() int64 {
	c := e.claims
	n := 256 + len(c.Provider) + len(c.Issuer) + len(c.Subject) + len(c.ClientID) + len(c.TokenUse) + len(c.TokenID)
	for _, s := range c.Scopes {
		n += 16 + len(s)
	}
	for _, s := range c.Audience {
		n += 16 + len(s)
	}
	if e.kid != nil {
		n += len(*e.kid)
	}
	return int64(n)
}

// resultCache holds verified results under the SHA-256 of their tokens.
// Like every ristretto cache it may drop a Set: a dropped result costs one
// more signature check, never a wrong answer.
type resultCache struct {
	rc *ristretto.Cache[string, *entry]
}

// newResultCache returns a cache bounded to maxCost bytes.
func newResultCache(maxCost int64) (*resultCache, error) {
	counters := max(maxCost/256*10, 1000)
	rc, err := ristretto.NewCache(&ristretto.Config[string, *entry]{
		NumCounters: counters,
		MaxCost:     maxCost,
		BufferItems: 64,
	})
	if err != nil {
		return nil, err
	}
	return &resultCache{rc: rc}, nil
}

// get returns the entry of sum.
func (c *resultCache) get(sum [32]byte) (*entry, bool) {
	return c.rc.Get(string(sum[:]))
}

// set stores e until e.until.
func (c *resultCache) set(e *entry, now time.Time) {
	ttl := e.until.Sub(now)
	if ttl <= 0 {
		return
	}
	c.rc.SetWithTTL(string(e.sum[:]), e, e.cost(), ttl)
}

// del removes the entry of sum.
func (c *resultCache) del(sum [32]byte) { c.rc.Del(string(sum[:])) }

// evictKeys removes every entry of provider signed by one of kids.
func (c *resultCache) evictKeys(provider string, kids []string) {
	var doomed [][32]byte
	c.rc.IterValues(func(e *entry) bool {
		if e.kid != nil && e.claims.Provider == provider && slices.Contains(kids, *e.kid) {
			doomed = append(doomed, e.sum)
		}
		return false
	})
	for _, s := range doomed {
		c.del(s)
	}
}

// wait waits for pending Sets to be applied (tests).
func (c *resultCache) wait() { c.rc.Wait() }

// close releases the cache's goroutines.
func (c *resultCache) close() { c.rc.Close() }
