package shared

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// TestSavingsFleetSum: two replicas' deltas add up in Redis, per provider
// and client, whichever replica reads them; the keys carry the tier's
// hash tag and a TTL.
func TestSavingsFleetSum(t *testing.T) {
	srv := redistest.Start(t)
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{Prefix: "tb"})
	b := newTestTier(t, srv.Addr(), kr, Options{Prefix: "tb", SavingsTTL: time.Hour})
	ctx := testCtx(t)
	if err := a.AddSavings(ctx, []metrics.ClientSavings{
		{Provider: "cognito", Client: "orders", Served: 10, Upstream: 2},
		{Provider: "cognito", Client: "billing", Served: 3, Upstream: 1},
		{Provider: "okta", Client: "orders", Served: 1, Upstream: 1},
	}); err != nil {
		t.Fatalf("AddSavings: %v", err)
	}
	if err := b.AddSavings(ctx, []metrics.ClientSavings{
		{Provider: "cognito", Client: "orders", Served: 5, Upstream: 0},
		{Provider: "okta", Client: "orders", Served: 2, Upstream: 1},
	}); err != nil {
		t.Fatalf("AddSavings: %v", err)
	}
	want := []metrics.ClientSavings{
		{Provider: "cognito", Client: "billing", Served: 3, Upstream: 1},
		{Provider: "cognito", Client: "orders", Served: 15, Upstream: 2},
		{Provider: "okta", Client: "orders", Served: 3, Upstream: 2},
	}
	for name, tier := range map[string]*Tier{"a": a, "b": b} {
		got, err := tier.LoadSavings(ctx)
		if err != nil {
			t.Fatalf("%s: LoadSavings: %v", name, err)
		}
		sortFigures(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: LoadSavings = %+v, want %+v", name, got, want)
		}
	}
	keys, err := srv.Client().Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "{tb}:") {
			t.Errorf("key %q is not under the tier's hash tag {tb}", k)
		}
		ttl, err := srv.Client().PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > DefaultSavingsTTL {
			t.Errorf("key %q: TTL %v, want in (0, %v]", k, ttl, DefaultSavingsTTL)
		}
	}
	if len(keys) != 3 { // the providers' set and two hashes
		t.Errorf("keys = %q, want 3", keys)
	}
}

// TestSavingsClientCap: the fleet's figures name at most
// SavingsMaxClients clients per provider, whichever replica brings them;
// further clients' counts go to _other, and a named client keeps its own
// figures.
func TestSavingsClientCap(t *testing.T) {
	srv := redistest.Start(t)
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	ctx := testCtx(t)
	var d []metrics.ClientSavings
	for i := range SavingsMaxClients - 1 {
		d = append(d, metrics.ClientSavings{Provider: "p", Client: fmt.Sprintf("c%03d", i), Served: 1, Upstream: 1})
	}
	if err := a.AddSavings(ctx, d); err != nil {
		t.Fatal(err)
	}
	// b brings one _other (its own cap's) and three new clients: one
	// more fits, two go to _other; a known client stays named.
	if err := b.AddSavings(ctx, []metrics.ClientSavings{
		{Provider: "p", Client: metrics.OtherProvider, Served: 7, Upstream: 0},
		{Provider: "p", Client: "new1", Served: 2, Upstream: 1},
		{Provider: "p", Client: "new2", Served: 2, Upstream: 1},
		{Provider: "p", Client: "new3", Served: 2, Upstream: 1},
		{Provider: "p", Client: "c000", Served: 4, Upstream: 0},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := a.LoadSavings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	named := 0
	var other, c000 metrics.ClientSavings
	var total int64
	for _, c := range got {
		total += c.Served
		switch c.Client {
		case metrics.OtherProvider:
			other = c
		case "c000":
			c000 = c
			named++
		default:
			named++
		}
	}
	if named != SavingsMaxClients {
		t.Errorf("named clients = %d, want %d", named, SavingsMaxClients)
	}
	if other.Served != 7+2+2 || other.Upstream != 2 {
		t.Errorf("_other = %+v, want served 11, upstream 2", other)
	}
	if c000.Served != 5 {
		t.Errorf("c000 served = %d, want 5", c000.Served)
	}
	if want := int64(SavingsMaxClients-1) + 7 + 6 + 4; total != want {
		t.Errorf("total served = %d, want %d (nothing lost to the cap)", total, want)
	}
}

// TestSavingsRedisDown: with Redis gone, AddSavings and LoadSavings
// return errors (the caller keeps its counts, and reports the replica's
// figures) and count as the tier's failures.
func TestSavingsRedisDown(t *testing.T) {
	tier := newTestTier(t, noRedis, tokencache.RandomKeyring(), Options{})
	ctx := testCtx(t)
	if err := tier.AddSavings(ctx, []metrics.ClientSavings{{Provider: "p", Client: "c", Served: 1}}); err == nil {
		t.Error("AddSavings with Redis down: no error")
	}
	if _, err := tier.LoadSavings(ctx); err == nil {
		t.Error("LoadSavings with Redis down: no error")
	}
	if tier.Stats().Errors == 0 {
		t.Error("the failures were not counted as the tier's errors")
	}
}

func sortFigures(s []metrics.ClientSavings) {
	slices.SortFunc(s, func(a, b metrics.ClientSavings) int {
		return strings.Compare(a.Provider+"\x00"+a.Client, b.Provider+"\x00"+b.Client)
	})
}
