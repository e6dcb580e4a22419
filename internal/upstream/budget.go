package upstream

import (
	"container/list"
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxPassthroughKeys bounds how many caller identities, and how many
// client ids, one provider's pass-through limits keep track of at once.
const maxPassthroughKeys = 10000

// budget is a provider's request budget: one token bucket that every
// request takes from, and for pass-through requests (credentials a caller
// presented) three more that they must take from first:
//
//   - the pass-through bucket, share × the provider's rate and burst, so
//     that pass-through traffic never spends more than its share and
//     broker-held clients always keep the rest;
//   - one bucket per caller identity and one per presented client id, each
//     a share of the pass-through bucket, so that no one caller (every
//     anonymous caller is one identity) and no one client id takes the
//     whole pass-through share.
//
// A request gets every bucket it needs or none: reservations already made
// are cancelled when a later one cannot be had.
type budget struct {
	provider    *rate.Limiter
	passthrough *rate.Limiter
	callers     *keyedLimiters
	clients     *keyedLimiters
}

// newBudget returns p's budget. p has been validated.
func newBudget(p Provider) *budget {
	ptRate, ptBurst := scaled(rate.Limit(p.RateLimit), p.Burst, p.PassthroughShare)
	callerRate, callerBurst := scaled(ptRate, ptBurst, p.PassthroughCallerShare)
	clientRate, clientBurst := scaled(ptRate, ptBurst, p.PassthroughClientShare)
	return &budget{
		provider:    rate.NewLimiter(rate.Limit(p.RateLimit), p.Burst),
		passthrough: rate.NewLimiter(ptRate, ptBurst),
		callers:     newKeyedLimiters(callerRate, callerBurst, maxPassthroughKeys),
		clients:     newKeyedLimiters(clientRate, clientBurst, maxPassthroughKeys),
	}
}

// scaled returns share of a bucket's rate and burst; the burst is at least
// 1, so that the bucket can ever grant a request.
func scaled(r rate.Limit, burst int, share float64) (rate.Limit, int) {
	return r * rate.Limit(share), max(1, int(float64(burst)*share))
}

// Descriptions of the Local ErrThrottled errors the budget gives.
const (
	descBudget      = "request budget exhausted"
	descPassthrough = "pass-through share of the request budget exhausted (the rest is kept for broker-held clients)"
	descCallerLimit = "pass-through request limit of this caller reached"
	descClientLimit = "pass-through request limit of this client id reached"
	descTooManyKeys = "too many pass-through callers or client ids at once"
)

// minKeyRetryAfter is the least RetryAfter of a refusal for want of room
// for a new caller or client id.
const minKeyRetryAfter = time.Second

// takeBudget takes what one attempt for r costs from the budget. A
// pass-through request first takes from its caller's, its client id's and
// the pass-through buckets, at once or not at all: waiting for them would
// let a caller queue up reservations (and, through them, tokens of the
// provider's bucket taken ahead of time) beyond its share. Every request
// then takes from the provider's bucket, waiting for it when the wait ends
// before ctx's deadline. If the budget cannot be had, nothing is taken and
// takeBudget returns last when there is one (the budget only stopped a
// retry), else a Local ErrThrottled error with RetryAfter set.
func (c *Client) takeBudget(ctx context.Context, r Request, last *Error) error {
	now := c.now()
	var taken []*rate.Reservation
	cancel := func(at time.Time) {
		for _, res := range taken {
			res.CancelAt(at)
		}
	}
	if r.Passthrough {
		for _, k := range []struct {
			limits *keyedLimiters
			key    string
			desc   string
		}{
			{c.budget.callers, r.Caller, descCallerLimit},
			{c.budget.clients, r.ClientID, descClientLimit},
		} {
			res, d, ok := k.limits.reserve(k.key, now)
			if !ok {
				cancel(now)
				desc := k.desc
				if res == nil {
					desc = descTooManyKeys
				}
				return c.budgetExhausted(last, d, desc)
			}
			taken = append(taken, res)
		}
		res, d, ok := reserveNow(c.budget.passthrough, now)
		if !ok {
			cancel(now)
			return c.budgetExhausted(last, d, descPassthrough)
		}
		taken = append(taken, res)
	}
	res := c.budget.provider.ReserveN(now, 1)
	if !res.OK() {
		// Not reachable with Burst >= 1; handled for safety.
		cancel(now)
		return c.budgetExhausted(last, c.maxBackoff, descBudget)
	}
	taken = append(taken, res)
	d := res.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	if !c.fits(ctx, d) {
		cancel(now)
		return c.budgetExhausted(last, d, descBudget)
	}
	if err := c.wait(ctx, d); err != nil {
		cancel(c.now())
		if last != nil {
			return last
		}
		return c.ctxError(err)
	}
	return nil
}

// reserveNow takes one request from lim at now if it has one; else it
// takes nothing and returns the delay until it will have one.
func reserveNow(lim *rate.Limiter, now time.Time) (res *rate.Reservation, d time.Duration, ok bool) {
	res = lim.ReserveN(now, 1)
	if !res.OK() {
		// Not reachable with a burst >= 1; handled for safety.
		return res, minKeyRetryAfter, false
	}
	if d = res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return res, d, false
	}
	return res, 0, true
}

// budgetExhausted is the error of an attempt the budget refused: last,
// when the budget only stopped a retry, else a Local ErrThrottled error.
func (c *Client) budgetExhausted(last *Error, d time.Duration, desc string) error {
	if last != nil {
		return withDelay(last, d)
	}
	return &Error{
		Kind:        ErrThrottled,
		Provider:    c.p.Name,
		Local:       true,
		RetryAfter:  d,
		Description: desc,
	}
}

// keyedLimiters gives each key (a caller identity, a client id) a token
// bucket of its own, all with the same rate and burst. It keeps at most
// max of them, least recently used last. A bucket that has filled up again
// is dropped when room is needed: a new one starts the same way, so
// dropping it changes no decision. When every kept bucket is still in use,
// a new key is refused rather than another key's bucket reset.
type keyedLimiters struct {
	limit rate.Limit
	burst int
	max   int

	mu   sync.Mutex
	keys map[string]*list.Element // of *keyedLimiter
	lru  list.List                // front: most recently used
}

// keyedLimiter is one key's bucket.
type keyedLimiter struct {
	key string
	lim *rate.Limiter
}

func newKeyedLimiters(limit rate.Limit, burst, max int) *keyedLimiters {
	k := &keyedLimiters{limit: limit, burst: burst, max: max, keys: make(map[string]*list.Element)}
	k.lru.Init()
	return k
}

// reserve takes one request from key's bucket at now, without waiting.
// When the bucket is empty it takes nothing and returns the delay until it
// has a request again with ok false; when key has no bucket and none can
// be made (max reached), res is nil as well.
func (k *keyedLimiters) reserve(key string, now time.Time) (res *rate.Reservation, d time.Duration, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var kl *keyedLimiter
	if el, found := k.keys[key]; found {
		k.lru.MoveToFront(el)
		kl = el.Value.(*keyedLimiter)
	} else {
		k.dropIdleLocked(now)
		if len(k.keys) >= k.max {
			return nil, max(minKeyRetryAfter, k.oneRequest()), false
		}
		kl = &keyedLimiter{key: key, lim: rate.NewLimiter(k.limit, k.burst)}
		k.keys[key] = k.lru.PushFront(kl)
	}
	return reserveNow(kl.lim, now)
}

// dropIdleLocked drops the least recently used buckets that have filled up
// again. Each bucket is dropped once, so the work per new key is constant
// on average. k.mu is held.
func (k *keyedLimiters) dropIdleLocked(now time.Time) {
	for el := k.lru.Back(); el != nil; el = k.lru.Back() {
		kl := el.Value.(*keyedLimiter)
		if kl.lim.TokensAt(now) < float64(k.burst) {
			return
		}
		k.lru.Remove(el)
		delete(k.keys, kl.key)
	}
}

// oneRequest is how long a bucket takes to earn one request.
func (k *keyedLimiters) oneRequest() time.Duration {
	if k.limit <= 0 {
		return minKeyRetryAfter
	}
	return time.Duration(float64(time.Second) / float64(k.limit))
}

// size returns the number of buckets kept, for tests.
func (k *keyedLimiters) size() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.keys)
}
