package tokencache

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPinnedTokenSurvivesEvictionWithinMaxCost: a pinned key's record
// leaves ristretto for the pinned store (one home), is counted in Used,
// and stays while far more unpinned records than max_cost holds are filed
// after it; unpinning returns it to ristretto.
func TestPinnedTokenSurvivesEvictionWithinMaxCost(t *testing.T) {
	const maxCost = 64 << 10
	c := newCache(t, maxCost)
	tok := strings.Repeat("p", 800)
	setWait(c, "pinned", record(tok), time.Hour)
	c.Pin("pinned")
	if c.Pinned() == 0 {
		t.Fatal("Pinned: got 0, want the pinned record's cost")
	}
	if _, ok := c.rc.Get("pinned"); ok {
		t.Error("the pinned record is still in ristretto: got two homes, want one")
	}
	for i := range 1000 {
		setWait(c, "k"+strconv.Itoa(i), record(strings.Repeat("x", 800)), time.Hour)
	}
	if got, ok := c.Get("pinned"); !ok || got.AccessToken.Reveal() != tok {
		t.Fatal("pinned record evicted by unpinned ones")
	}
	if used := c.Used(); used > maxCost {
		t.Errorf("Used: got %d, want at most max_cost %d", used, maxCost)
	}
	c.Unpin("pinned")
	c.Wait()
	if c.Pinned() != 0 {
		t.Errorf("Pinned after Unpin: got %d, want 0", c.Pinned())
	}
}

// TestPinsNeverExceedMaxCost: pins whose records do not fit in max_cost
// beside the other pinned records are refused (counted) and their
// records filed evictable in ristretto; the pinned store stays within
// max_cost.
func TestPinsNeverExceedMaxCost(t *testing.T) {
	c := newCache(t, 4<<10) // about three 800-byte tokens
	for i := range 10 {
		key := "w" + strconv.Itoa(i)
		c.Pin(key)
		c.Set(key, record(strings.Repeat("y", 800)), time.Hour)
	}
	c.Wait()
	if p := c.Pinned(); p > c.MaxCost() {
		t.Errorf("Pinned: got %d, want at most max_cost %d", p, c.MaxCost())
	}
	if c.PinsRefused() == 0 {
		t.Error("PinsRefused: got 0, want the pins that did not fit counted")
	}
}

// TestChargeKeysAddsToEveryRecord: the owner's per-key bytes are part of
// each record's cost, so max_cost bounds them too.
func TestChargeKeysAddsToEveryRecord(t *testing.T) {
	c := newCache(t, 1<<20)
	v := value{sealed: make([]byte, 900)}
	before := c.cost(&v)
	c.ChargeKeys(500)
	if got := c.cost(&v); got != before+500 {
		t.Errorf("cost: got %d, want %d + 500", got, before)
	}
	c.ChargeKeys(-1)
	if got := c.cost(&v); got != before {
		t.Errorf("cost with a negative charge: got %d, want %d (no charge)", got, before)
	}
}

// TestUnpinnedRecordFoundAtOnce: when a key's last pin goes (its last
// watcher left), its record is found by Get throughout and right after
// Unpin returns - ristretto files records asynchronously, so a watcher
// that reconnected at once missed the token and the broker fetched a new
// one (sds TestReconnectGetsCurrentTokenAtOnce failed: a new version and
// two token endpoint requests).
func TestUnpinnedRecordFoundAtOnce(t *testing.T) {
	c := newCache(t, 1<<20)
	for i := range 200 {
		key := "w" + strconv.Itoa(i)
		c.Pin(key)
		c.Set(key, record("tok-"+key), time.Hour)
		c.Unpin(key)
		if got, ok := c.Get(key); !ok || got.AccessToken.Reveal() != "tok-"+key {
			t.Fatalf("%s: Get right after the last Unpin: got %v, want the record", key, ok)
		}
	}
}
