package tokencache

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// newCache returns a sealing cache with keyring [k1].
func newCache(t *testing.T, maxCost int64) *Cache {
	t.Helper()
	return newCacheWith(t, maxCost, newKeyring(t, "k1", k1))
}

func newCacheWith(t *testing.T, maxCost int64, kr *Keyring) *Cache {
	t.Helper()
	c, err := New(maxCost, kr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func record(tok string) *Record {
	now := time.Now()
	return &Record{AccessToken: secret.String(tok), TokenType: "Bearer", Scopes: []string{"a/b"},
		IssuedAt: now, ExpiresAt: now.Add(time.Hour), RefreshAt: now.Add(45 * time.Minute)}
}

// setWait is Set followed by Wait: the record is visible when it returns
// (unless ristretto refused it).
func setWait(c *Cache, key string, r *Record, ttl time.Duration) bool {
	ok := c.Set(key, r, ttl)
	c.Wait()
	return ok
}

// stored returns the raw value filed under key, bypassing the keyring.
func stored(t *testing.T, c *Cache, key string) []byte {
	t.Helper()
	v, ok := c.rc.Get(key)
	if !ok {
		t.Fatalf("nothing stored under %q", key)
	}
	return v.sealed
}

func TestCostIsBytes(t *testing.T) {
	short, long := record("x"), record(strings.Repeat("x", 2000))
	if got, want := long.Cost()-short.Cost(), int64(1999); got != want {
		t.Errorf("a 1999-byte longer token costs %d more, want %d", got, want)
	}
	if c := short.Cost(); c < recordOverhead {
		t.Errorf("a tiny record costs %d, want at least the %d bytes of overhead", c, recordOverhead)
	}
}

func TestSetIsVisibleAndExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCache(t, 1<<20)
		r := record("tok")
		if !setWait(c, "k", r, time.Minute) {
			t.Fatal("Set refused a record in an empty cache")
		}
		got, ok := c.Get("k")
		if !ok {
			t.Fatal("Get right after Set: got a miss, want the record")
		}
		if d := equalRecords(got, r); d != "" {
			t.Fatalf("Get right after Set: %s", d)
		}
		time.Sleep(time.Minute)
		if _, ok := c.Get("k"); !ok {
			t.Error("record gone at exactly its TTL, want it until the TTL has passed")
		}
		time.Sleep(time.Second)
		if _, ok := c.Get("k"); ok {
			t.Error("record still there after its TTL")
		}
	})
}

// TestGetSharesTheOpenedRecord: hits on one sealed value share the record
// opened from it (the value is not opened on every hit) for openedLinger
// after it was opened, then open it again; a new value for the key (a
// refresh) is opened at once; the cache holds what was Set, not the
// caller's record.
func TestGetSharesTheOpenedRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCache(t, 1<<20)
		r := record("tok")
		setWait(c, "k", r, time.Hour)
		r.AccessToken = "changed after Set"
		a, _ := c.Get("k")
		b, _ := c.Get("k")
		if a != b {
			t.Fatal("two hits on one value opened it twice, want the opened record shared")
		}
		if got := a.AccessToken.Reveal(); got != "tok" {
			t.Errorf("got token %q, want %q: the cache holds what was Set, not the caller's record", got, "tok")
		}
		time.Sleep(openedLinger)
		synctest.Wait()
		if c.opened.Len() != 0 {
			t.Fatalf("%d opened records held after openedLinger, want none", c.opened.Len())
		}
		if again, _ := c.Get("k"); again == a || again.AccessToken.Reveal() != "tok" {
			t.Errorf("hit after openedLinger: got the same record (%v), want the value opened again", again == a)
		}
		setWait(c, "k", record("tok2"), time.Hour)
		if got, _ := c.Get("k"); got.AccessToken.Reveal() != "tok2" {
			t.Errorf("hit after a new value was Set: got %q, want %q", got.AccessToken.Reveal(), "tok2")
		}
	})
}

func TestSetWithoutTTLKeepsTheOldRecord(t *testing.T) {
	c := newCache(t, 1<<20)
	old := record("old")
	setWait(c, "k", old, time.Hour)
	if setWait(c, "k", record("new"), 0) {
		t.Error("Set with ttl 0 reported success")
	}
	if setWait(c, "k", nil, time.Hour) {
		t.Error("Set of a nil record reported success")
	}
	if got, ok := c.Get("k"); !ok || equalRecords(got, old) != "" {
		t.Errorf("got %v, %v; want the old record kept", got, ok)
	}
	c.Del("k")
	if _, ok := c.Get("k"); ok {
		t.Error("record still there after Del")
	}
}

func TestCacheStoresSealedValues(t *testing.T) {
	c := newCache(t, 1<<20)
	const tok = "the-access-token-text"
	setWait(c, "k", record(tok), time.Hour)
	raw := stored(t, c, "k")
	if bytes.Contains(raw, []byte(tok)) || bytes.Contains(raw, []byte("Bearer")) {
		t.Error("the stored value contains the record's text, want ciphertext")
	}
	if !bytes.HasPrefix(raw, []byte("\x02k1")) {
		t.Errorf("stored value starts %q, want the key id prefix \"\\x02k1\"", raw[:3])
	}
	if c.Keyring() == nil || c.Keyring().Current() != "k1" {
		t.Errorf("Keyring() = %v, want the ring with current key k1", c.Keyring())
	}
}

// TestValueIsBoundToItsKey: a sealed value copied under another key (a
// replay) does not open; it is a miss and is removed.
func TestValueIsBoundToItsKey(t *testing.T) {
	c := newCache(t, 1<<20)
	setWait(c, "victim", record("victim-token"), time.Hour)
	c.rc.SetWithTTL("attacker", value{sealed: stored(t, c, "victim")}, 100, time.Hour)
	c.rc.Wait()
	if r, ok := c.Get("attacker"); ok {
		t.Fatalf("a value replayed under another key opened: got %v, want a miss", r)
	}
	if _, ok := c.rc.Get("attacker"); ok {
		t.Error("the value that failed to open is still stored, want it deleted")
	}
	if _, ok := c.Get("victim"); !ok {
		t.Error("the original value is gone, want it kept")
	}
}

func TestCorruptValueIsAMiss(t *testing.T) {
	c := newCache(t, 1<<20)
	setWait(c, "k", record("tok"), time.Hour)
	raw := stored(t, c, "k")
	raw[len(raw)-1] ^= 1 // in place: the stored slice itself
	if r, ok := c.Get("k"); ok {
		t.Fatalf("a corrupt value opened: got %v, want a miss", r)
	}
	if _, ok := c.rc.Get("k"); ok {
		t.Error("the corrupt value is still stored, want it deleted")
	}
}

// TestKeyRotation: caches that share sealed values (as replicas share the
// Redis tier) rotate keys: a ring [k2 current, k1] opens values k1 sealed
// and seals new ones with k2; once k1 is removed, its values are misses.
func TestKeyRotation(t *testing.T) {
	before := newCache(t, 1<<20)
	setWait(before, "old", record("old-token"), time.Hour)

	during := newCacheWith(t, 1<<20, newKeyring(t, "k2", k2, k1))
	copyValue(t, before, during, "old")
	if r, ok := during.Get("old"); !ok || r.AccessToken.Reveal() != "old-token" {
		t.Errorf("rotated cache, value sealed with k1: got %v, %v; want old-token", r, ok)
	}
	setWait(during, "new", record("new-token"), time.Hour)
	if raw := stored(t, during, "new"); !bytes.HasPrefix(raw, []byte("\x02k2")) {
		t.Errorf("rotated cache seals with prefix %q, want \"\\x02k2\"", raw[:3])
	}

	after := newCacheWith(t, 1<<20, newKeyring(t, "k2", k2))
	copyValue(t, during, after, "old")
	copyValue(t, during, after, "new")
	if r, ok := after.Get("old"); ok {
		t.Errorf("cache without k1, value sealed with k1: got %v, want a miss", r)
	}
	if _, ok := after.rc.Get("old"); ok {
		t.Error("the value sealed with the removed key is still stored, want it deleted")
	}
	if r, ok := after.Get("new"); !ok || r.AccessToken.Reveal() != "new-token" {
		t.Errorf("cache without k1, value sealed with k2: got %v, %v; want new-token", r, ok)
	}
}

func copyValue(t *testing.T, from, to *Cache, key string) {
	t.Helper()
	raw := stored(t, from, key)
	if !to.rc.SetWithTTL(key, value{sealed: raw}, int64(len(raw)), time.Hour) {
		t.Fatalf("copying %q: Set refused", key)
	}
	to.rc.Wait()
}

func TestUnsealedCache(t *testing.T) {
	c := newCacheWith(t, 1<<20, nil)
	r := record("tok")
	setWait(c, "k", r, time.Hour)
	if got, ok := c.Get("k"); !ok || got != r {
		t.Errorf("got %v, %v; want the stored record itself", got, ok)
	}
	if c.Keyring() != nil {
		t.Errorf("Keyring() = %v, want nil", c.Keyring())
	}
}

// TestMaxCostBoundsMemory: records beyond max_cost are evicted or
// rejected; the bytes held never exceed the bound.
func TestMaxCostBoundsMemory(t *testing.T) {
	const maxCost = 64 << 10
	c := newCache(t, maxCost)
	tok := strings.Repeat("t", 1000)
	for i := range 1000 {
		setWait(c, fmt.Sprint(i), record(tok), time.Hour)
	}
	held := 0
	for i := range 1000 {
		if _, ok := c.Get(fmt.Sprint(i)); ok {
			held++
		}
	}
	per := int64(len(c.Keyring().SealRecord(record(tok), []byte("0"))) + sealedOverhead)
	if held == 0 || int64(held)*per > maxCost {
		t.Errorf("holds %d records of %d bytes, want between 1 and %d", held, per, maxCost/per)
	}
	if got := c.MaxCost(); got != maxCost {
		t.Errorf("MaxCost() = %d, want %d", got, maxCost)
	}
	if used := c.Used(); used > maxCost || used < int64(held)*per {
		t.Errorf("Used() = %d, want between %d (%d records held) and %d", used, int64(held)*per, held, maxCost)
	}
	if got := c.Evictions(); got == 0 {
		t.Errorf("Evictions() = 0 after storing %d bytes in %d, want some", 1000*per, maxCost)
	}
}

func TestUsedTracksRecords(t *testing.T) {
	c := newCache(t, 1<<20)
	if got := c.Used(); got != 0 {
		t.Errorf("Used() of an empty cache = %d, want 0", got)
	}
	setWait(c, "a", record(strings.Repeat("a", 1000)), time.Hour)
	one := c.Used()
	if want := int64(len(stored(t, c, "a")) + sealedOverhead); one < want {
		t.Errorf("Used() after one Set = %d, want at least the value's %d bytes", one, want)
	}
	setWait(c, "b", record(strings.Repeat("b", 1000)), time.Hour)
	if got := c.Used(); got != 2*one {
		t.Errorf("Used() after two equal Sets = %d, want %d", got, 2*one)
	}
	c.Del("a")
	c.rc.Wait() // ristretto applies deletions to its accounting asynchronously
	if got := c.Used(); got != one {
		t.Errorf("Used() after Del = %d, want %d", got, one)
	}
	if got := c.Evictions(); got != 0 {
		t.Errorf("Evictions() = %d with room to spare, want 0", got)
	}
}

// TestExpiryAndCloseAreNotEvictions: records that ristretto's TTL sweep
// removes, and those dropped by Close, do not count as evictions.
func TestExpiryAndCloseAreNotEvictions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(1<<20, newKeyring(t, "k1", k1))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			setWait(c, fmt.Sprint(i), record("tok"), time.Minute)
		}
		setWait(c, "long", record("tok"), time.Hour)
		before := c.Used()
		time.Sleep(5 * time.Minute) // several TTL sweeps
		synctest.Wait()
		if got, want := c.Used(), before/11; got != want {
			t.Errorf("Used() after the sweep = %d, want %d (one record)", got, want)
		}
		if got := c.Evictions(); got != 0 {
			t.Errorf("Evictions() = %d after records expired, want 0", got)
		}
		c.Close()
		if got := c.Evictions(); got != 0 {
			t.Errorf("Evictions() = %d after Close, want 0", got)
		}
	})
}

func TestNewRejectsNonPositiveCost(t *testing.T) {
	for _, cost := range []int64{0, -1} {
		if _, err := New(cost, nil); err == nil {
			t.Errorf("New(%d) succeeded, want an error", cost)
		}
	}
}
