package shared

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the fleet's request budget: one GCRA (generic cell rate
// algorithm, a token bucket kept as one timestamp) per provider in Redis,
// and one more for the provider's pass-through share, both taken by one
// atomic Lua script so that every replica draws from the same budget.

// budgetScript takes one request from every bucket in KEYS at once or
// from none. ARGV[1] is now in microseconds; then, per key, three values:
// the emission interval (microseconds per request), the burst tolerance
// (burst × interval) and the longest wait the caller accepts. A bucket's
// value is its theoretical arrival time (TAT); a request is granted when
// the new TAT lies at most the tolerance plus the accepted wait ahead of
// now, and the caller then waits until new TAT − tolerance. It returns
// {1, wait} when granted, {0, wait} when refused (wait: when the request
// would have been granted), in microseconds.
var budgetScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local news = {}
local wait = 0
local refused = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 + (i-1)*3])
  local tolerance = tonumber(ARGV[3 + (i-1)*3])
  local maxwait = tonumber(ARGV[4 + (i-1)*3])
  local tat = tonumber(redis.call("GET", key) or "0")
  if tat < now then tat = now end
  local new = tat + interval
  local w = new - tolerance - now
  if w < 0 then w = 0 end
  if w > maxwait then refused = true end
  if w > wait then wait = w end
  news[i] = new
end
if refused then return {0, math.ceil(wait)} end
for i, key in ipairs(KEYS) do
  redis.call("SET", key, string.format("%.0f", news[i]), "PX", math.ceil((news[i] - now) / 1000) + 1000)
end
return {1, math.ceil(wait)}
`)

// Budget is one provider's request budget shared by the whole fleet: a
// rate and burst for all requests, and a share of both that pass-through
// requests may not exceed. Its Take has the shape upstream.FleetBudget
// asks for. Safe for concurrent use.
type Budget struct {
	t        *Tier
	key      string // the provider's bucket
	ptKey    string // the pass-through share's bucket
	interval float64
	burst    float64
	ptInt    float64
	ptBurst  float64
	now      func() time.Time
}

// Budget returns the fleet budget of provider: rate requests per second
// and burst at once, of which pass-through requests may spend share. The
// values must be positive (config validates them); share is in (0, 1].
func (t *Tier) Budget(provider string, rate float64, burst int, share float64) (*Budget, error) {
	if !(rate > 0) || math.IsInf(rate, 1) || burst < 1 || !(share > 0 && share <= 1) {
		return nil, fmt.Errorf("shared: fleet budget of provider %q: rate must be > 0, burst >= 1 and share in (0, 1], got %v, %d, %v", provider, rate, burst, share)
	}
	p := hex.EncodeToString([]byte(provider))
	ptRate := rate * share
	return &Budget{
		t:        t,
		key:      t.tag + ":b:" + p,
		ptKey:    t.tag + ":bp:" + p,
		interval: 1e6 / rate,
		burst:    float64(burst),
		ptInt:    1e6 / ptRate,
		ptBurst:  math.Max(1, math.Floor(float64(burst)*share)),
		now:      time.Now,
	}, nil
}

// ErrBudgetUnavailable is returned by Take when Redis could not be asked:
// the caller falls back to its local share of the budget.
var ErrBudgetUnavailable = errors.New("shared: fleet budget unavailable (Redis not answering)")

// Take takes one request from the fleet's budget. A broker-held request
// (passthrough false) may wait up to maxWait for its turn, which then is
// its own: such requests queue in the fleet's budget, ahead of any later
// pass-through request. A pass-through request takes from its share's
// bucket as well, and never waits: it is granted only when both buckets
// have a request now, so broker-held refreshes come first. It returns the
// wait before sending when granted (ok), else the wait after which a
// request would have been granted; err (ErrBudgetUnavailable wrapped)
// when Redis could not be asked.
func (b *Budget) Take(ctx context.Context, passthrough bool, maxWait time.Duration) (wait time.Duration, ok bool, err error) {
	now := b.now().UnixMicro()
	keys := []string{b.key}
	mw := float64(maxWait.Microseconds())
	if passthrough {
		mw = 0
	}
	args := []any{now, b.interval, b.interval * b.burst, mw}
	if passthrough {
		keys = append(keys, b.ptKey)
		args = append(args, b.ptInt, b.ptInt*b.ptBurst, 0)
	}
	var res []int64
	err = b.t.do(ctx, func(ctx context.Context) error {
		var err error
		res, err = budgetScript.Run(ctx, b.t.rdb, keys, args...).Int64Slice()
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("%w: %w", ErrBudgetUnavailable, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("%w: unexpected reply", ErrBudgetUnavailable)
	}
	return time.Duration(res[1]) * time.Microsecond, res[0] == 1, nil
}
