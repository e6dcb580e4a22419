package linger

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestSharedThenDropped: callers of one key within TTL share one build;
// a caller needing something else gets a new build; after TTL the value
// is gone and the next caller builds again.
func TestSharedThenDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &Map[string, string]{TTL: 5 * time.Second}
		var builds atomic.Int64
		get := func(want string) string {
			v, err := m.Get("k", func(v string) bool { return v == want }, func() (string, error) {
				builds.Add(1)
				return want, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() { get("a") })
		}
		wg.Wait()
		if n := builds.Load(); n != 1 {
			t.Errorf("50 concurrent callers: got %d builds, want 1", n)
		}
		if get("b") != "b" || builds.Load() != 2 {
			t.Errorf("a caller needing another value: got %d builds, want 2", builds.Load())
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if m.Len() != 0 {
			t.Errorf("after TTL: got %d keys held, want 0", m.Len())
		}
		get("b")
		if n := builds.Load(); n != 3 {
			t.Errorf("after TTL: got %d builds, want 3", n)
		}
	})
}

// TestMaxAndErrors: past Max keys values are built for their caller and
// not held; a failed build holds nothing.
func TestMaxAndErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &Map[int, string]{TTL: time.Second, Max: 3}
		for i := range 5 {
			v, err := m.Get(i, func(string) bool { return true }, func() (string, error) { return strconv.Itoa(i), nil })
			if err != nil || v != strconv.Itoa(i) {
				t.Fatalf("key %d: got %q, %v", i, v, err)
			}
		}
		if m.Len() != 3 {
			t.Errorf("got %d keys held, want Max 3", m.Len())
		}
		boom := errors.New("boom")
		if _, err := m.Get(0, func(string) bool { return false }, func() (string, error) { return "", boom }); !errors.Is(err, boom) {
			t.Errorf("failed build: got %v, want it returned", err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if m.Len() != 0 {
			t.Errorf("after TTL: got %d keys held, want 0", m.Len())
		}
	})
}
