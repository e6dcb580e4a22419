package upstream

import (
	"container/list"
	"context"
	"errors"
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

	// fleet, when set, is the budget the whole fleet shares, and local
	// this replica's share of it, used while the fleet's cannot be asked.
	fleet *Fleet
	local *rate.Limiter
}

// FleetBudget is a provider's request budget shared by every replica of
// the broker (internal/shared's Budget, kept in Redis).
type FleetBudget interface {
	// Take takes one request. A broker-held request (passthrough false)
	// may be granted a turn up to maxWait ahead; a pass-through request
	// only one available now, from the pass-through share as well. It
	// returns the wait before sending when granted (ok), else the wait
	// until a request could be granted; err when the fleet's budget could
	// not be asked.
	Take(ctx context.Context, passthrough bool, maxWait time.Duration) (wait time.Duration, ok bool, err error)
}

// Fleet is a provider's fleet-wide request budget, as a Client uses it.
type Fleet struct {
	// Budget is the fleet's budget.
	Budget FleetBudget
	// Rate and Burst are the fleet's budget (requests per second, and at
	// once); LocalShare, in (0, 1], is the fraction of both this replica
	// may spend alone while Budget cannot be asked (Redis unreachable).
	Rate       float64
	Burst      int
	LocalShare float64
	// Observe, when set, is told of each decision: source FleetSource or
	// LocalSource, and whether the request was granted.
	Observe func(source string, granted bool)
}

// Sources of a budget decision, as Fleet.Observe is told.
const (
	FleetSource = "fleet" // the fleet's budget in Redis
	LocalSource = "local" // this replica's share, while Redis is unreachable
)

// maxFleetWait bounds how far ahead a broker-held request without a
// deadline reserves its turn in the fleet's budget.
const maxFleetWait = 30 * time.Second

// newBudget returns p's budget, with f as its fleet budget when not nil.
// p has been validated.
func newBudget(p Provider, f *Fleet) *budget {
	b := newProviderBudget(p)
	if f != nil && f.Budget != nil {
		b.fleet = f
		r, burst := scaled(rate.Limit(f.Rate), f.Burst, f.LocalShare)
		b.local = rate.NewLimiter(r, burst)
	}
	return b
}

func newProviderBudget(p Provider) *budget {
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
	descFleet       = "fleet-wide request budget of the provider exhausted"
	descFleetPT     = "pass-through share of the fleet-wide request budget exhausted (the rest is kept for broker-held refreshes)"
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
	if c.budget.fleet != nil {
		fd, local, err := c.takeFleet(ctx, r, now)
		if local != nil {
			taken = append(taken, local)
		}
		if err != nil {
			cancel(now)
			return c.budgetExhausted(last, fd, err.Error())
		}
		d = max(d, fd)
	}
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

// takeFleet takes one request from the fleet's budget, or from this
// replica's local share of it when the fleet's cannot be asked. It
// returns the wait before sending, the local reservation it made (to be
// cancelled when another bucket refuses), and an error whose text is the
// refusal's description when refused (the wait then being its
// RetryAfter). A pass-through request never waits for either.
func (c *Client) takeFleet(ctx context.Context, r Request, now time.Time) (time.Duration, *rate.Reservation, error) {
	f := c.budget.fleet
	maxWait := maxFleetWait
	if deadline, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, deadline.Sub(now))
	}
	desc := descFleet
	if r.Passthrough {
		desc = descFleetPT
	}
	observe := func(source string, ok bool) {
		if f.Observe != nil {
			f.Observe(source, ok)
		}
	}
	wait, ok, err := f.Budget.Take(ctx, r.Passthrough, max(0, maxWait))
	if err == nil {
		observe(FleetSource, ok)
		if !ok {
			return max(wait, time.Millisecond), nil, errors.New(desc)
		}
		return wait, nil, nil
	}
	// Redis unreachable: this replica's share, so that the fleet stays
	// within its budget as long as the shares add up to at most 1.
	// Read the clock again: the fleet's answer may have taken a while,
	// and a limiter given times out of order grants too much.
	now = c.now()
	if r.Passthrough {
		res, d, ok := reserveNow(c.budget.local, now)
		observe(LocalSource, ok)
		if !ok {
			return d, nil, errors.New(desc)
		}
		return 0, res, nil
	}
	res := c.budget.local.ReserveN(now, 1)
	d := res.DelayFrom(now)
	if !res.OK() || d > maxWait {
		res.CancelAt(now)
		observe(LocalSource, false)
		return max(d, minKeyRetryAfter), nil, errors.New(desc)
	}
	observe(LocalSource, true)
	return d, res, nil
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

// SetFleet makes f the provider's fleet-wide budget, taken after the
// replica's own. Call it before the Client is used (it is not safe
// concurrently with Fetch); Options.Fleet does the same at New.
func (c *Client) SetFleet(f *Fleet) {
	nb := newBudget(c.p, f)
	c.budget.fleet, c.budget.local = nb.fleet, nb.local
}
