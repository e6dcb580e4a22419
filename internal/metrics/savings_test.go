package metrics

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestSavings: calls served and upstream requests sent are counted per
// provider and client (the held client's name, else the client id);
// budget refusals, never sent, are not upstream requests; saved is
// served less upstream; the cost is exported only with a price; clients
// beyond MaxLabelValues per provider are counted under OtherProvider.
func TestSavings(t *testing.T) {
	m, reg, _ := newTest(t)
	m.SetPrice("cognito", 2.25)
	held := broker.Fetch{Provider: "cognito", Client: "orders", ClientID: "abc"}
	for range 10 {
		m.Served(held, time.Minute)
	}
	m.UpstreamRequest(held, nil)
	m.UpstreamRequest(held, &upstream.Error{Kind: upstream.ErrThrottled, Status: 429})
	m.UpstreamRequest(held, &upstream.Error{Kind: upstream.ErrThrottled, Local: true}) // not sent
	pass := broker.Fetch{Provider: "okta", ClientID: "client-1"}
	m.Served(pass, time.Minute)
	m.UpstreamRequest(pass, nil)
	for i := range MaxLabelValues + 5 {
		m.Served(broker.Fetch{Provider: "okta", ClientID: fmt.Sprintf("c%d", i)}, time.Minute)
	}

	got, fleet := m.Savings(context.Background())
	if fleet {
		t.Error("Savings: got fleet figures without a store, want the replica's")
	}
	by := map[[2]string]ClientSavings{}
	for _, f := range got {
		by[[2]string{f.Provider, f.Client}] = f
	}
	if f := by[[2]string{"cognito", "orders"}]; f.Served != 10 || f.Upstream != 2 || f.Saved() != 8 {
		t.Errorf("cognito/orders: got %+v (saved %d), want served 10, upstream 2, saved 8", f, f.Saved())
	}
	if f := by[[2]string{"okta", "client-1"}]; f.Served != 1 || f.Upstream != 1 {
		t.Errorf("okta/client-1: got %+v, want served 1, upstream 1", f)
	}
	if f := by[[2]string{"okta", OtherProvider}]; f.Served != 6 {
		t.Errorf("okta/_other: got %+v, want served 6 (the clients beyond the cap)", f)
	}
	if n := len(got); n != 2+MaxLabelValues {
		t.Errorf("got %d client figures, want %d (bounded)", n, 2+MaxLabelValues)
	}

	mfs := gather(t, reg)
	if v := value(t, mfs, "tokenbroker_savings_cost_saved", "client", "orders", "provider", "cognito", "scope", "replica"); v != 8*2.25/1000 {
		t.Errorf("cost saved: got %v, want %v", v, 8*2.25/1000)
	}
	if s := series(mfs, "tokenbroker_savings_cost_saved", "client", "client-1", "provider", "okta", "scope", "replica"); s != nil {
		t.Error("cost saved of a provider without a price: got a series, want none")
	}
}

// TestSavingsCountsEveryRequestSent: a retried fetch counts every HTTP
// request it sent (broker.Fetch.Requests), a locally refused one none,
// and requests saved never go below zero.
func TestSavingsCountsEveryRequestSent(t *testing.T) {
	m, _, _ := newTest(t)
	f := broker.Fetch{Provider: "cognito", Client: "orders"}
	m.Served(f, time.Minute)
	f.Requests = 3 // two retries, then a token
	m.UpstreamRequest(f, nil)
	f.Requests = 2 // a retry, then a failure
	m.UpstreamRequest(f, &upstream.Error{Kind: upstream.ErrUnavailable, Status: 503, Requests: 2})
	f.Requests = 0 // refused by the budget, never sent
	m.UpstreamRequest(f, &upstream.Error{Kind: upstream.ErrThrottled, Local: true})
	got, _ := m.Savings(context.Background())
	if len(got) != 1 || got[0].Served != 1 || got[0].Upstream != 5 || got[0].Saved() != 0 {
		t.Errorf("got %+v, want served 1, upstream 5, saved 0 (never negative)", got)
	}
}

// TestSavingsHidePassthroughClientIDs: a pass-through caller's client id is
// a cost-accounting label only where the operator allowed client id labels
// (metrics.client_id_label); otherwise every pass-through client is
// counted as PassthroughClient. Held clients keep their configured names.
func TestSavingsHidePassthroughClientIDs(t *testing.T) {
	pass := broker.Fetch{Provider: "okta", Client: "client-1", ClientID: "client-1", Passthrough: true}
	held := broker.Fetch{Provider: "okta", Client: "orders", ClientID: "abc"}
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{nil, PassthroughClient},
		{[]Option{WithClientIDLabel()}, "client-1"},
	} {
		m, err := New(prometheus.NewRegistry(), (&fakeStats{s: sampleStats()}).get, tc.opts...)
		if err != nil {
			t.Fatal(err)
		}
		m.Served(pass, time.Minute)
		m.Served(held, time.Minute)
		got, _ := m.Savings(context.Background())
		var clients []string
		for _, s := range got {
			clients = append(clients, s.Client)
		}
		if !slices.Contains(clients, tc.want) || !slices.Contains(clients, "orders") || len(clients) != 2 {
			t.Errorf("options %d: got clients %v, want [%s orders]", len(tc.opts), clients, tc.want)
		}
	}
}
