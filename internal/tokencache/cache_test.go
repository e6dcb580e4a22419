package tokencache

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

func newCache(t *testing.T, maxCost int64) *Cache {
	t.Helper()
	c, err := New(maxCost)
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
		if !c.Set("k", r, time.Minute) {
			t.Fatal("Set refused a record in an empty cache")
		}
		if got, ok := c.Get("k"); !ok || got != r {
			t.Fatalf("Get right after Set: got %v, %v; want the record", got, ok)
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

func TestSetWithoutTTLKeepsTheOldRecord(t *testing.T) {
	c := newCache(t, 1<<20)
	old := record("old")
	c.Set("k", old, time.Hour)
	if c.Set("k", record("new"), 0) {
		t.Error("Set with ttl 0 reported success")
	}
	if got, ok := c.Get("k"); !ok || got != old {
		t.Errorf("got %v, %v; want the old record kept", got, ok)
	}
	c.Del("k")
	if _, ok := c.Get("k"); ok {
		t.Error("record still there after Del")
	}
}

// TestMaxCostBoundsMemory: records beyond max_cost are evicted or
// rejected; the bytes held never exceed the bound.
func TestMaxCostBoundsMemory(t *testing.T) {
	const maxCost = 64 << 10
	c := newCache(t, maxCost)
	tok := strings.Repeat("t", 1000)
	for i := range 1000 {
		c.Set(fmt.Sprint(i), record(tok), time.Hour)
	}
	held := 0
	for i := range 1000 {
		if _, ok := c.Get(fmt.Sprint(i)); ok {
			held++
		}
	}
	per := record(tok).Cost()
	if held == 0 || int64(held)*per > maxCost {
		t.Errorf("holds %d records of %d bytes, want between 1 and %d", held, per, maxCost/per)
	}
	if got := c.MaxCost(); got != maxCost {
		t.Errorf("MaxCost() = %d, want %d", got, maxCost)
	}
}

func TestNewRejectsNonPositiveCost(t *testing.T) {
	if _, err := New(0); err == nil {
		t.Error("New(0) succeeded, want an error")
	}
}
