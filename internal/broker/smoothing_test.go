package broker

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// smoothingRun simulates replicas brokers refreshing keys tokens, all
// issued in the same second, for two token lifetimes on a clock of its
// own (one step a second), each replica planning for rate/replicas
// refreshes per second (0: no smoothing). It returns the refreshes per
// second of the whole fleet, and the least life any token had when its
// refresh came.
func smoothingRun(replicas, keys int, rate float64, lifetime, minRemaining time.Duration) (perSecond []int, leastLeft time.Duration) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	brokers := make([]*Broker, replicas)
	for i := range brokers {
		b := &Broker{cfg: Config{RefreshFraction: 0.75, RefreshJitter: 0.05, MinRemaining: minRemaining}}
		if rate > 0 {
			b.planners = map[string]*refreshPlanner{"cognito": newRefreshPlanner(rate / float64(replicas))}
		}
		brokers[i] = b
	}
	type token struct{ issued, refresh, expires time.Time }
	rng := rand.New(rand.NewPCG(1, 2))
	plan := func(b *Broker, issued time.Time) token {
		frac := b.cfg.RefreshFraction - b.cfg.RefreshJitter*rng.Float64()
		expires := issued.Add(lifetime)
		nominal := issued.Add(time.Duration(frac * float64(lifetime)))
		return token{issued, b.refreshPointAt(issued, "cognito", issued, nominal, expires), expires}
	}
	tokens := make([]token, keys)
	for k := range tokens {
		// Created within the same second.
		tokens[k] = plan(brokers[k%replicas], start.Add(time.Duration(k)*time.Second/time.Duration(keys)))
	}
	end := start.Add(2 * lifetime)
	perSecond = make([]int, int(2*lifetime/time.Second)+1)
	leastLeft = lifetime
	// Each second, the tokens whose refresh point has come are refreshed
	// by the replica that holds them.
	for now := start; now.Before(end); now = now.Add(time.Second) {
		for k := range tokens {
			if tk := tokens[k]; !tk.refresh.After(now) {
				leastLeft = min(leastLeft, tk.expires.Sub(now))
				perSecond[int(now.Sub(start)/time.Second)]++
				tokens[k] = plan(brokers[k%replicas], now)
			}
		}
	}
	return perSecond, leastLeft
}

// BenchmarkRefreshSmoothing reports the fleet's peak refresh rate against
// its budget, without and with smoothing: 10,000 keys created in the same
// second on 3 replicas, 5-minute tokens, min_remaining 30s, a fleet budget
// of 150 requests/s (Cognito's quota).
func BenchmarkRefreshSmoothing(b *testing.B) {
	const budget = 150
	var before, after []int
	var least time.Duration
	for b.Loop() {
		before, _ = smoothingRun(3, 10000, 0, 5*time.Minute, 30*time.Second)
		after, least = smoothingRun(3, 10000, budget, 5*time.Minute, 30*time.Second)
	}
	b.ReportMetric(float64(peak(before))/budget, "peak/budget-unsmoothed")
	b.ReportMetric(float64(peak(after))/budget, "peak/budget-smoothed")
	b.ReportMetric(least.Seconds(), "least-life-at-refresh-s")
}

// TestRefreshSmoothing: 10,000 keys created in the same second on 3
// replicas, tokens living 5 minutes, min_remaining 30s, a fleet budget of
// 150 refreshes/s (Cognito's quota). Without smoothing the refresh
// jitter (5% of the lifetime, 15 s) sends over 600 refreshes a second;
// with it the fleet's peak stays under the budget and no token is
// refreshed later than min_remaining before its expiry.
func TestRefreshSmoothing(t *testing.T) {
	const (
		budget       = 150
		lifetime     = 5 * time.Minute
		minRemaining = 30 * time.Second
	)
	before, _ := smoothingRun(3, 10000, 0, lifetime, minRemaining)
	after, least := smoothingRun(3, 10000, budget, lifetime, minRemaining)
	if p := peak(before); p <= budget {
		t.Fatalf("without smoothing the peak is %d/s: the simulation does not exceed the budget %d/s", p, budget)
	}
	if p := peak(after); p > budget {
		t.Errorf("with smoothing the fleet's peak refresh rate is %d/s, want at most the budget %d/s", p, budget)
	}
	if least < minRemaining {
		t.Errorf("a token was refreshed with %v left, less than min_remaining %v", least, minRemaining)
	}
}

func peak(perSecond []int) int {
	p := 0
	for _, n := range perSecond {
		p = max(p, n)
	}
	return p
}

// TestRefreshSmoothingPlot logs the fleet's refresh rate over time before
// and after smoothing, in 10-second buckets, as an ASCII plot (the one in
// the README).
func TestRefreshSmoothingPlot(t *testing.T) {
	if !testing.Verbose() {
		t.Skip("a plot for -v")
	}
	before, _ := smoothingRun(3, 10000, 0, 5*time.Minute, 30*time.Second)
	after, _ := smoothingRun(3, 10000, 150, 5*time.Minute, 30*time.Second)
	t.Logf("peak refreshes/s: %d before smoothing, %d after (budget 150/s)\n%s", peak(before), peak(after), plot(before, after))
}

// plot draws before and after, per 10-second bucket (peak per second in
// it), one line per bucket, a '#' per 25 refreshes/s.
func plot(before, after []int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%6s %-26s | %s\n", "t(s)", "before (peak/s)", "after (peak/s)")
	for i := 0; i < len(before); i += 10 {
		pb, pa := peak(before[i:min(i+10, len(before))]), peak(after[i:min(i+10, len(after))])
		if pb == 0 && pa == 0 {
			continue
		}
		fmt.Fprintf(&sb, "%6d %-26s | %s\n", i,
			fmt.Sprintf("%-20s %4d", strings.Repeat("#", min(20, (pb+24)/25)), pb),
			fmt.Sprintf("%-8s %4d", strings.Repeat("#", (pa+24)/25), pa))
	}
	return sb.String()
}
