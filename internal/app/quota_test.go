package app

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// issuerRate samples an issuer's request count so that the requests it
// received in any one-second window can be told afterwards.
type issuerRate struct {
	mu      sync.Mutex
	at      []time.Time
	count   []int64
	stopped chan struct{}
}

func sampleIssuer(issuer *devissuer.Issuer) (*issuerRate, func()) {
	r := &issuerRate{stopped: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(r.stopped)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			r.mu.Lock()
			r.at = append(r.at, time.Now())
			r.count = append(r.count, issuer.Requests())
			r.mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return r, func() { close(done); <-r.stopped }
}

// peak is the most requests seen within one second between from and to.
func (r *issuerRate) peak(from, to time.Time) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best int64
	j := 0
	for i := range r.at {
		if r.at[i].Before(from) || r.at[i].After(to) {
			continue
		}
		if j < i {
			j = i
		}
		for j+1 < len(r.at) && r.at[j+1].Sub(r.at[i]) <= time.Second && !r.at[j+1].After(to) {
			j++
		}
		best = max(best, r.count[j]-r.count[i])
	}
	return best
}

// TestFleetBudget: 3 replicas sharing a real redis-server and a fleet
// budget of 20 requests/s (burst 1) are asked for 500 distinct keys at
// once. The issuer never sees more than the budget in any one-second
// window, callers get a token or RESOURCE_EXHAUSTED with RetryInfo and
// nothing else, and with Redis stopped mid-run each replica keeps to its
// local share (a third), so the fleet still stays near its budget.
func TestFleetBudget(t *testing.T) {
	const (
		rate    = 20
		burst   = 1
		keys    = 500
		share   = 1.0 / 3
		phase   = 3 * time.Second
		settled = 300 * time.Millisecond // for the breakers to open
	)
	f := startFleet(t, 3, func(c *config.Config) {
		p := &c.Providers[0]
		p.FleetRateLimit, p.FleetBurst, p.FleetLocalShare = rate, burst, share
		// The fleet budget is the one that binds.
		p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare = 1, 1, 1
	})
	for i := range keys {
		id := fmt.Sprintf("quota-client-%d", i)
		f.issuer.AddClient(devissuer.Client{ID: id, Secret: "s3cret-" + id, Scopes: []string{"api/read"}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	samples, stopSampling := sampleIssuer(f.issuer)
	start := time.Now()
	stopAt := start.Add(2 * phase)

	var (
		mu        sync.Mutex
		served    int
		exhausted int
		wg        sync.WaitGroup
	)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("quota-client-%d", i)
			sel := &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
				ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: id, ClientSecret: "s3cret-" + id},
			}}
			r := f.replicas[i%len(f.replicas)]
			for time.Now().Before(stopAt) {
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := r.client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Selector: sel})
				ccancel()
				if err == nil {
					mu.Lock()
					served++
					mu.Unlock()
					return
				}
				st := status.Convert(err)
				var retry time.Duration
				for _, d := range st.Details() {
					if ri, ok := d.(*errdetails.RetryInfo); ok {
						retry = ri.GetRetryDelay().AsDuration()
					}
				}
				if st.Code() != codes.ResourceExhausted || retry <= 0 {
					t.Errorf("key %d: %v (details %v), want a token or RESOURCE_EXHAUSTED with RetryInfo", i, err, st.Details())
					return
				}
				mu.Lock()
				exhausted++
				mu.Unlock()
				// Honour the RetryInfo, as a well-behaved caller does.
				select {
				case <-time.After(max(retry, 50*time.Millisecond)):
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	// Redis stopped mid-run: every replica falls back to its local share.
	select {
	case <-time.After(phase):
	case <-ctx.Done():
	}
	redisStopped := time.Now()
	f.redis.Stop()
	wg.Wait()
	end := time.Now()
	stopSampling()

	// With Redis up the fleet keeps to its budget; but a budget call that
	// misses its 100 ms timeout (the race detector on 2 busy cores) falls
	// back to the replica's local share, whose burst can then add to the
	// fleet's, as across the outage below. Without the fleet budget each
	// replica alone would send its own rate_limit (100/s, burst 20: 300/s).
	if p := samples.peak(start, redisStopped); p > rate+burst+3 {
		t.Errorf("with Redis up: %d requests at the issuer within one second, want at most %d (the fleet budget %d/s + burst %d, plus the local shares' bursts where a Redis call timed out)", p, rate+burst+3, rate, burst)
	}
	// While Redis is down each replica keeps to its share (a third of the
	// rate, burst max(1, ⌊1/3⌋) = 1); across the switch the fleet's bucket
	// and the replicas' full local buckets can add their bursts.
	if p := samples.peak(redisStopped.Add(settled), end); p > rate+3 {
		t.Errorf("with Redis stopped: %d requests at the issuer within one second, want at most %d (3 local shares of %d/s + their bursts)", p, rate+3, rate)
	}
	if p := samples.peak(start, end); p > rate+burst+3 {
		t.Errorf("across the outage: %d requests at the issuer within one second, want at most %d", p, rate+burst+3)
	}
	mu.Lock()
	t.Logf("%d keys served, %d RESOURCE_EXHAUSTED answers (honoured), %d issuer requests in %v", served, exhausted, f.issuer.Requests(), end.Sub(start).Round(time.Millisecond))
	if served == 0 || exhausted == 0 {
		t.Errorf("%d served and %d refused: the budget did not bind", served, exhausted)
	}
	mu.Unlock()
	if got := f.issuer.Requests(); got > int64(served)+1 {
		// Every request the issuer answered served a key (the held
		// client's start-up fetch aside).
		t.Errorf("issuer answered %d requests for %d keys served", got, served)
	}
}
