// Package tokencache is the broker's bounded value store for tokens, and
// the one place in memory where a token's bytes live. Its cost is the
// bytes each stored record really takes (the sealed value, its share of
// the store's bookkeeping and the allocator's rounding), so max_cost
// bounds the memory spent on tokens.
//
// Records are sealed before they are stored: encoded, then encrypted and
// authenticated with AES-256-GCM by a Keyring, bound to the cache key they
// are filed under. A memory dump or a shared tier (Redis) holds only
// ciphertext, and a value cannot be replayed under another key. Keyrings
// rotate: the current key seals, every key opens.
//
// Two stores share one budget. Unpinned records live in a ristretto cache,
// which evicts by cost and frequency. A pinned key (Pin: a key with
// watchers) keeps its record in a small map the cache owns, out of
// ristretto's reach; ristretto's capacity is max_cost less the pinned
// records' cost (ristretto's UpdateMaxCost), so unpinned keys are evicted
// first and the total stays within max_cost. Pins never take more than
// max_cost: a record that would not fit is filed in ristretto instead,
// evictable like any other (Stats' PinsRefused counts them). When pins
// grow, ristretto gives back the room at its next insertion.
//
// The store is lossy by design. ristretto applies new records
// asynchronously (Wait waits for them) and its admission policy may reject
// them when full, so a record that was Set may never be seen by Get.
// Callers must treat the cache as an optimisation, never as the source of
// truth for coordination; OnGone tells them when ristretto let a record
// go.
//
// A hit does not open the sealed value every time: the record last opened
// from a key's sealed value is shared, for openedLinger after it was
// opened, by every Get that finds that very value (the same sealed bytes,
// by address), then dropped, so that a key in steady use is opened about
// once per openedLinger rather than once per hit. Like the server's
// encoded answers (internal/linger), a clear copy of a token in use lives
// at most openedLinger; at rest the token stays sealed. A new value for
// the key (a refresh) is other bytes, and is opened anew.
//
// Locks: mu guards the pins and their cost; it is never held across a
// wait (a ristretto Del or Wait), nor is any lock of the caller's needed.
package tokencache

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/tokenbroker/tokenbroker/internal/linger"
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

// Cost is the number of bytes a record takes in a cache without a
// keyring, besides the store's per-item bookkeeping. In a sealing cache a
// record costs its sealed size instead.
func (r *Record) Cost() int64 {
	n := recordOverhead + len(r.AccessToken) + len(r.TokenType)
	for _, s := range r.Scopes {
		n += len(s) + 16
	}
	return int64(n)
}

// sealedOverhead is what one stored value costs besides its sealed bytes
// (rounded up to the allocator's size class): the value struct inside
// ristretto's item, ristretto's three per-item map slots (items, costs,
// expiry buckets) with their load-factor slack, and the cache key the
// value carries. ristretto charges the size of its own item struct on top
// (IgnoreInternalCost false). BenchmarkMemoryPerToken checks the sum
// against the live heap.
const sealedOverhead = 192

// value is what the cache stores: the sealed record, or, in a cache
// without a keyring, the record itself. key is the key it is filed under
// (shared with the caller's string), so OnGone can name it.
type value struct {
	key     string
	sealed  []byte
	plain   *Record
	expires int64 // Unix nanoseconds
}

// itemSize is what ristretto charges per item by itself (the size of its
// item struct with an interface value), and valueSize our value's part of
// that item beyond it.
const (
	ristrettoItemSize = 56
	valueSize         = int64(unsafe.Sizeof(value{})) - 16
)

// pin is a pinned key: its watchers' count, and its record when the cache
// holds it here (nil when the budget refused it or there is none).
type pin struct {
	count int
	v     atomic.Pointer[value]
	cost  int64
}

// Cache is the token store. Its methods are safe for concurrent use.
type Cache struct {
	rc      *ristretto.Cache[string, value]
	kr      *Keyring
	maxCost int64

	gone      atomic.Pointer[func(key string)]
	keyCost   atomic.Int64 // ChargeKeys: the owner's bytes per stored key
	evictions atomic.Int64
	refused   atomic.Int64
	closing   atomic.Bool

	// pinned holds the pins (key → *pin) for the lock-free hit path;
	// npins is its size, so that Get skips it when there are none.
	pinned sync.Map
	npins  atomic.Int64
	// mu serialises changes to the pins and pinnedCost.
	mu         sync.Mutex
	pinnedCost int64

	// opened shares the record last opened from each key's sealed value
	// (see the package comment).
	opened linger.Map[string, openedRecord]
}

// openedLinger is how long a record opened from a sealed value is shared
// by the hits that find the same value; maxOpened bounds how many keys'
// records are shared at once (beyond it, hits on further keys open their
// value each time).
const (
	openedLinger = 5 * time.Second
	maxOpened    = 4096
)

// openedRecord is a record opened from a sealed value, and the address of
// that value's bytes: the value it stands for (it keeps them alive, so no
// other value can take that address while it is held).
type openedRecord struct {
	sealed *byte
	rec    *Record
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
	c := &Cache{kr: kr, maxCost: maxCost}
	c.opened.TTL, c.opened.Max = openedLinger, maxOpened
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
		OnEvict:  c.onEvict,
		OnReject: c.onReject,
	})
	if err != nil {
		return nil, err
	}
	c.rc = rc
	return c, nil
}

// OnGone sets f to be told the key of every record ristretto lets go: one
// it evicted, one whose TTL its sweep removed, one its admission policy
// refused. It is not told of Del, nor of pinned records. f runs on the
// cache's own goroutine: it may take a lock, but must not call the cache
// while holding one that a caller of Del or Wait may hold, and must not
// call Del or Wait itself.
func (c *Cache) OnGone(f func(key string)) { c.gone.Store(&f) }

// onEvict counts the records ristretto evicts to make room, and tells
// OnGone. ristretto calls it also for records its TTL sweep removes (they
// carry their expiration; victims of the cost policy do not) and for
// every record when the cache closes: neither is an eviction.
func (c *Cache) onEvict(item *ristretto.Item[value]) {
	if c.closing.Load() {
		return
	}
	if item.Expiration.IsZero() {
		c.evictions.Add(1)
	}
	c.tellGone(item.Value.key)
}

// onReject tells OnGone of a record the admission policy refused.
func (c *Cache) onReject(item *ristretto.Item[value]) {
	if !c.closing.Load() {
		c.tellGone(item.Value.key)
	}
}

func (c *Cache) tellGone(key string) {
	if f := c.gone.Load(); f != nil && key != "" {
		(*f)(key)
	}
}

// Keyring returns the keyring that seals the cache's records, nil for an
// unsealed cache.
func (c *Cache) Keyring() *Keyring { return c.kr }

// Get returns the record filed under key, if it is present and its TTL has
// not passed. The record may be shared with other callers (the one opened
// from the same sealed value, see the package comment; in an unsealed
// cache the stored record itself): it must not be modified.
//
// A value that cannot be opened (corrupt, or sealed by another keyring) is
// a miss, and is deleted.
func (c *Cache) Get(key string) (*Record, bool) {
	v, ok := c.lookup(key)
	if !ok {
		return nil, false
	}
	if c.kr == nil {
		return v.plain, v.plain != nil
	}
	at := unsafe.SliceData(v.sealed)
	o, err := c.opened.Get(key, func(o openedRecord) bool { return o.sealed == at }, func() (openedRecord, error) {
		r, err := openRecord(c.kr, v.sealed, key)
		return openedRecord{sealed: at, rec: r}, err
	})
	if err != nil {
		c.Del(key)
		return nil, false
	}
	return o.rec, true
}

// Has reports whether a record is filed under key, without opening it.
func (c *Cache) Has(key string) bool {
	_, ok := c.lookup(key)
	return ok
}

// lookup finds key's value: pinned first, then in ristretto. It returns
// a copy of the value (the hit path allocates nothing for it).
func (c *Cache) lookup(key string) (value, bool) {
	if c.npins.Load() > 0 {
		if p, ok := c.pinned.Load(key); ok {
			if v := p.(*pin).v.Load(); v != nil {
				if time.Now().UnixNano() > v.expires {
					return value{}, false
				}
				return *v, true
			}
		}
	}
	return c.rc.Get(key)
}

// Set files r under key for ttl: pinned when the key is pinned and the
// budget allows, else in ristretto. It reports whether the record was
// accepted; ristretto applies it asynchronously (Wait) and may still
// reject it. A ttl of zero or less, or a nil r, stores nothing (and leaves
// a record already filed under key alone). Set never waits.
//
// A sealing cache seals r bound to key, so the value opens only under the
// key it was filed under; later changes to r do not reach the cache.
func (c *Cache) Set(key string, r *Record, ttl time.Duration) bool {
	if ttl <= 0 || r == nil {
		return false
	}
	v := value{key: key, expires: time.Now().Add(ttl).UnixNano()}
	if c.kr == nil {
		v.plain = r
	} else {
		v.sealed = sealRecord(c.kr, r, key)
	}
	if c.npins.Load() > 0 {
		c.mu.Lock()
		if p, ok := c.pinned.Load(key); ok && c.holdLocked(p.(*pin), &v) {
			c.mu.Unlock()
			return true
		}
		c.mu.Unlock()
	}
	return c.rc.SetWithTTL(key, v, c.cost(&v), ttl)
}

// ChargeKeys adds n bytes to the cost of every record filed from now on:
// what the cache's owner keeps per stored key besides the record (the
// broker's entry for the key), so that max_cost bounds that memory too.
// The owner calls it once, before the first Set.
func (c *Cache) ChargeKeys(n int64) { c.keyCost.Store(max(0, n)) }

// cost is what v is charged for, besides ristretto's own item struct.
func (c *Cache) cost(v *value) int64 {
	owner := c.keyCost.Load()
	if v.plain != nil {
		return v.plain.Cost() + sealedOverhead + valueSize + owner
	}
	return int64(sizeClass(cap(v.sealed))) + sealedOverhead + valueSize + owner
}

// pinCost is what a pinned value is charged for: as in ristretto, with
// ristretto's item struct standing for the pin's own.
func (c *Cache) pinCost(v *value) int64 { return c.cost(v) + ristrettoItemSize }

// holdLocked makes v p's pinned record if the budget allows; else it
// releases p's record, and v is to be filed in ristretto. c.mu must be
// held.
func (c *Cache) holdLocked(p *pin, v *value) bool {
	cost := c.pinCost(v)
	if c.pinnedCost-p.cost+cost > c.maxCost {
		c.refused.Add(1)
		c.releaseLocked(p)
		return false
	}
	c.pinnedCost += cost - p.cost
	p.cost = cost
	p.v.Store(v)
	c.resizeLocked()
	return true
}

// releaseLocked drops p's pinned record. c.mu must be held.
func (c *Cache) releaseLocked(p *pin) {
	c.pinnedCost -= p.cost
	p.cost = 0
	p.v.Store(nil)
	c.resizeLocked()
}

// resizeLocked gives ristretto the budget the pins leave. c.mu must be
// held.
func (c *Cache) resizeLocked() {
	c.rc.UpdateMaxCost(max(1, c.maxCost-c.pinnedCost))
}

// Pin keeps key's record out of ristretto's eviction until as many Unpin
// calls: the record filed now moves to the pinned store, and later Sets
// go there too, as long as the pinned records' total cost fits in
// max_cost. Call it for each watcher of the key, without holding a lock
// that OnGone takes: it may wait for ristretto.
func (c *Cache) Pin(key string) {
	c.mu.Lock()
	var p *pin
	if got, ok := c.pinned.Load(key); ok {
		p = got.(*pin)
	} else {
		p = &pin{}
		c.pinned.Store(key, p)
		c.npins.Add(1)
	}
	p.count++
	moved := false
	if p.count == 1 {
		if v, ok := c.rc.Get(key); ok {
			moved = c.holdLocked(p, &v)
		}
	}
	c.mu.Unlock()
	if moved {
		c.rc.Del(key) // one home: the pinned copy is the record now
	}
}

// Unpin undoes one Pin. When the last pin of key goes, its record returns
// to ristretto, evictable again (and may be refused there). The pin serves
// the record until ristretto has applied it, so that Get finds it
// throughout: ristretto files records asynchronously, and a watcher that
// reconnects at once must find the token rather than have another
// fetched. A record Set under the key meanwhile is carried over in turn.
func (c *Cache) Unpin(key string) {
	c.mu.Lock()
	got, ok := c.pinned.Load(key)
	if !ok {
		c.mu.Unlock()
		return
	}
	p := got.(*pin)
	if p.count--; p.count > 0 {
		c.mu.Unlock()
		return
	}
	var filed *value // the record last filed in ristretto
	gone := false
	for {
		if p.count > 0 {
			// Pinned again meanwhile: the pin stays, and holds the record.
			moved := filed != nil && p.v.Load() != nil
			c.mu.Unlock()
			if moved {
				c.rc.Del(key)
			}
			return
		}
		v := p.v.Load()
		if v == nil || v == filed {
			c.releaseLocked(p)
			c.pinned.Delete(key)
			c.npins.Add(-1)
			c.mu.Unlock()
			break
		}
		// The record's budget goes to ristretto with it.
		c.pinnedCost -= p.cost
		p.cost = 0
		c.resizeLocked()
		c.mu.Unlock()
		filed = v
		if ttl := time.Until(time.Unix(0, v.expires)); ttl > 0 && c.rc.SetWithTTL(key, *v, c.cost(v), ttl) {
			c.rc.Wait()
			gone = false
		} else {
			gone = true // expired, or dropped by ristretto
		}
		c.mu.Lock()
	}
	if gone {
		c.tellGone(key)
	}
}

// Del removes the record filed under key (a pinned key stays pinned, with
// no record). It may wait for ristretto: call it without holding a lock
// that OnGone takes.
func (c *Cache) Del(key string) {
	if c.npins.Load() > 0 {
		c.mu.Lock()
		if p, ok := c.pinned.Load(key); ok {
			c.releaseLocked(p.(*pin))
		}
		c.mu.Unlock()
	}
	c.rc.Del(key)
}

// Wait waits until the records Set so far are visible to Get, unless
// ristretto dropped or rejected them. Call it without holding a lock that
// OnGone takes.
func (c *Cache) Wait() { c.rc.Wait() }

// MaxCost returns the cache's capacity in bytes.
func (c *Cache) MaxCost() int64 { return c.maxCost }

// Used returns the bytes the cache's records are charged for, pinned ones
// and ristretto's bookkeeping included. It lags a Del slightly: ristretto
// applies deletions to its cost accounting asynchronously.
func (c *Cache) Used() int64 {
	c.mu.Lock()
	pinned := c.pinnedCost
	c.mu.Unlock()
	return pinned + c.rc.MaxCost() - c.rc.RemainingCost()
}

// Pinned returns the bytes the pinned records are charged for (part of
// Used).
func (c *Cache) Pinned() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pinnedCost
}

// PinsRefused counts the records of pinned keys that did not fit in
// max_cost beside the other pinned records, and were filed evictable.
func (c *Cache) PinsRefused() int64 { return c.refused.Load() }

// Evictions returns how many records the cache has evicted to make room
// for others since it was created. Records that expired or were deleted
// are not counted, nor are records the admission policy refused to take.
func (c *Cache) Evictions() int64 { return c.evictions.Load() }

// Close stops the cache's goroutines and drops every record.
func (c *Cache) Close() {
	c.closing.Store(true)
	c.rc.Close()
	c.mu.Lock()
	c.pinned.Clear()
	c.npins.Store(0)
	c.pinnedCost = 0
	c.mu.Unlock()
}

// sizeClass is the size of the allocation Go makes for n bytes: its small
// size classes (runtime/sizeclasses.go) up to 32 KiB, whole 8 KiB pages
// beyond.
func sizeClass(n int) int {
	if n > 32768 {
		return (n + 8191) &^ 8191
	}
	for _, s := range sizeClasses {
		if n <= s {
			return s
		}
	}
	return n
}

var sizeClasses = [...]int{0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
	288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
	2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240,
	10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768}
