// Package backoff is tokenbroker's one exponential backoff with full
// jitter: the upstream client's retries within a fetch, the broker's
// retries of failed refreshes and the public token source's reconnects
// all wait what a Policy says.
//
// Retry n (counting from 0) waits a uniformly random time in
// [0, min(Max, Base·2ⁿ)] ("full jitter", as in the AWS Architecture Blog's
// "Exponential Backoff And Jitter"), or the Retry-After the other side
// asked for when that is longer. github.com/cenkalti/backoff/v5 was
// considered: its RandomizationFactor spreads a wait around the interval
// (interval·(1 ± factor)) rather than over [0, interval], so it has no
// full jitter.
package backoff

import (
	"math"
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff with full jitter. The zero value is not
// useful: Base must be greater than 0 and Max at least Base (callers check
// their configuration; Delay and Ceiling never panic whatever the values).
type Policy struct {
	// Base is the ceiling of the first retry's wait (n = 0).
	Base time.Duration
	// Max caps the ceiling.
	Max time.Duration
	// Rand returns a uniformly random integer in [0, n) for n > 0; nil
	// means math/rand/v2's Int64N. Tests make it deterministic.
	Rand func(n int64) int64
}

// Ceiling returns min(Max, Base·2ⁿ) for n >= 0 (Base for a negative n),
// without overflow however large n is.
func (p Policy) Ceiling(n int) time.Duration {
	d := p.Base
	for i := 0; i < n && d < p.Max; i++ {
		if d > p.Max/2 {
			return p.Max
		}
		d *= 2
	}
	return min(d, p.Max)
}

// Delay returns the wait before retry n (counting from 0): a uniformly
// random time in [0, Ceiling(n)], or retryAfter (the other side's
// Retry-After, 0 when it sent none) when that is longer. It is never
// negative.
func (p Policy) Delay(n int, retryAfter time.Duration) time.Duration {
	return max(p.Jitter(p.Ceiling(n)), retryAfter, 0)
}

// Jitter returns a uniformly random time in [0, ceiling] (0 for a ceiling
// that is not positive).
func (p Policy) Jitter(ceiling time.Duration) time.Duration {
	if ceiling <= 0 {
		return 0
	}
	k := int64(ceiling)
	if k < math.MaxInt64 {
		k++ // include the ceiling itself
	}
	randN := p.Rand
	if randN == nil {
		randN = rand.Int64N
	}
	return time.Duration(randN(k))
}
