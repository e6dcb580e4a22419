package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// This file is the hold-off of keys and providers after failures, and the
// negative cache of non-retryable rejections (negative_ttl, guarded by
// Broker.negMu): the two reasons not to ask a token endpoint now.
//
// Hold-off: after a retryable failure a key backs off (entry.failures,
// entry.retryAt, Broker.backoff), and so, once fetches of two or more of
// its keys keep failing, does the provider (providerState). A caller
// whose key or provider is held off and who has no servable token is
// refused at once (holdOffError: Unavailable, or ResourceExhausted when
// throttled, with the wait); the scheduler's retry of the key, or the
// first caller after the wait, is the probe, shared by every caller of
// the key.

const (
	// providerDownAfter consecutive failed fetches of a provider (with no
	// success in between) are an outage: it is logged, and when the
	// failures came from two keys or more, callers of every key of the
	// provider are held off too.
	providerDownAfter = 2
	// starvedRetryMax caps the backoff of a key that holds no servable
	// token (and of a held-off provider), so that recovery is noticed
	// within seconds by whoever waits for it.
	starvedRetryMax = 5 * time.Second
	// recoverySpread spreads the retries of a provider's keys waiting in
	// backoff when one of its requests succeeds after an outage (the
	// provider's request budget paces them further).
	recoverySpread = 2 * time.Second
)

// providerState is the health of one provider's token endpoint, as the
// broker's fetches see it. Guarded by Broker.mu.
type providerState struct {
	failures int       // consecutive failed fetches since the last success
	keys     int       // distinct keys among them (counted up to 2)
	lastKey  string    // the key of the last failure
	lastErr  error     // the last failure
	retryAt  time.Time // when a held-off provider may be probed again
	probing  bool      // a caller's fetch is probing the held-off provider
	since    time.Time // when the first of the failures happened
	requests int       // upstream requests sent since then, retries included
}

// down reports whether the provider's failures are an outage (logged).
func (p *providerState) down() bool { return p.failures >= providerDownAfter }

// heldOff reports whether the provider's callers are held off: it has
// failed repeatedly, for more than one key.
func (p *providerState) heldOff() bool {
	return p.failures >= providerDownAfter && p.keys >= 2
}

// holdOffError refuses a fetch while its key or its provider backs off
// after failures; no request was sent. It matches the kind of the failure
// that started the hold-off (upstream.ErrUnavailable, or ErrThrottled) and
// says how long to wait (RetryDelay).
type holdOffError struct {
	err  *upstream.Error
	wait time.Duration
}

func (e *holdOffError) Error() string {
	return fmt.Sprintf("%v (backing off after failures: next attempt in %v)", e.err, e.wait.Round(time.Millisecond))
}

func (e *holdOffError) Unwrap() error { return e.err }

// RetryDelay is how long the caller should wait before asking again.
func (e *holdOffError) RetryDelay() time.Duration { return e.wait }

// asRetryable describes a retryable failure as an *upstream.Error: itself
// when it is one, else an ErrUnavailable (a fetch that timed out).
func asRetryable(provider string, err error) *upstream.Error {
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Retryable() {
		return ue
	}
	desc := "the token request failed"
	if errors.Is(err, context.DeadlineExceeded) {
		desc = "no answer from the token endpoint within the fetch timeout"
	}
	return &upstream.Error{Kind: upstream.ErrUnavailable, Provider: provider, Local: true, Description: desc}
}

// keyHeldLocked returns the hold-off of e, or nil. b.mu must be held
// (read or write).
func (b *Broker) keyHeldLocked(e *entry, now time.Time) error {
	if e == nil || e.failures == 0 || e.stopped || e.lastErr == nil || !now.Before(e.retryAt) {
		return nil
	}
	return &holdOffError{err: asRetryable(e.t.provider, e.lastErr), wait: e.retryAt.Sub(now)}
}

// providerHeldLocked returns the hold-off of provider p, or nil when a
// fetch may go (as a probe, when the provider is held off). b.mu must be
// held (read or write).
func (b *Broker) providerHeldLocked(name string, now time.Time) error {
	p := b.providers[name]
	if p == nil || !p.heldOff() {
		return nil
	}
	switch {
	case now.Before(p.retryAt):
		return &holdOffError{err: asRetryable(name, p.lastErr), wait: p.retryAt.Sub(now)}
	case p.probing:
		return &holdOffError{err: asRetryable(name, p.lastErr), wait: min(b.cfg.RetryBase, starvedRetryMax)}
	}
	return nil
}

// starvedMax is the backoff cap of a key without a servable token.
func (b *Broker) starvedMax() time.Duration {
	return min(b.cfg.RetryMax, starvedRetryMax)
}

// endpointFailure reports whether err, the answer to an upstream fetch,
// says the endpoint is failing: a retryable failure it answered (5xx,
// 429, a malformed body), a network failure or a timeout. The local
// request budget, rejections and shutdown say nothing of its health.
func endpointFailure(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Retryable() && !ue.Local
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// upstreamOutcome updates the provider's health after one upstream fetch
// of t answered err (nil: a token). The start of an outage (the
// providerDownAfter-th failure in a row) is logged as a warning, its end
// (the first success after it) at info with its length and the requests
// it cost; at its end every key of the provider waiting in backoff is
// retried within recoverySpread.
func (b *Broker) upstreamOutcome(t target, err error, requests int) {
	if b.life.Err() != nil {
		return
	}
	var log func()
	defer func() {
		if log != nil {
			log() // outside the lock
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.providers[t.provider]
	if p == nil {
		return
	}
	now := time.Now()
	if p.failures > 0 {
		p.requests += requests
	}
	switch {
	case err == nil:
		if p.down() {
			outage, requests := now.Sub(p.since), p.requests
			retried := b.retryWaitingLocked(t.provider, now)
			log = func() {
				b.cfg.Logger.Info("token endpoint recovered", "provider", t.provider,
					"outage", outage.Round(time.Millisecond).String(), "requests", requests, "keys_retried", retried)
			}
		}
		*p = providerState{}
	case endpointFailure(err):
		if p.failures == 0 {
			p.since, p.requests = now, requests
		}
		p.failures++
		if p.keys == 0 || p.keys == 1 && p.lastKey != t.key {
			p.keys++
		}
		p.lastKey, p.lastErr = t.key, err
		n := p.failures - providerDownAfter + 1
		p.retryAt = now.Add(b.backoff(max(1, n), err, b.starvedMax()))
		if p.failures == providerDownAfter {
			keys, failing := b.keysOfLocked(t.provider)
			log = func() {
				b.cfg.Logger.Warn("token endpoint failing: its keys back off, callers without a valid token get UNAVAILABLE",
					"provider", t.provider, "error", err, "keys", keys, "failing_keys", failing)
			}
		}
	}
}

// keysOfLocked counts the tracked keys of provider, and those of them
// whose last fetch failed. b.mu must be held.
func (b *Broker) keysOfLocked(provider string) (keys, failing int) {
	for _, e := range b.entries {
		if e.t.provider == provider {
			keys++
			if e.failures > 0 {
				failing++
			}
		}
	}
	return keys, failing
}

// retryWaitingLocked reschedules every key of provider that waits in
// backoff for someone (watchers or callers) to be retried within
// recoverySpread, and returns how many. b.mu must be held.
func (b *Broker) retryWaitingLocked(provider string, now time.Time) int {
	n := 0
	for _, e := range b.entries {
		if e.t.provider != provider || e.failures == 0 || e.refreshing || e.stopped || len(e.watchers) == 0 && !e.used.Load() {
			continue
		}
		at := now.Add(time.Duration(b.randN(int64(recoverySpread))))
		if !at.Before(e.retryAt) {
			continue
		}
		e.retryAt = at
		if e.index < 0 || at.Before(e.due) {
			b.scheduleLocked(e, at)
		}
		n++
	}
	return n
}

// rejection is a remembered non-retryable upstream failure.
type rejection struct {
	err   error
	until time.Time
	t     target // for invalidation
}

// maxRejections bounds the negative cache; past it, expired entries are
// swept on insert.
const maxRejections = 10_000

// remember files a non-retryable upstream rejection for NegativeTTL.
func (b *Broker) remember(t target, err error) {
	if b.cfg.NegativeTTL <= 0 || retryable(err) {
		return
	}
	now := time.Now()
	b.negMu.Lock()
	defer b.negMu.Unlock()
	if len(b.negative) >= maxRejections {
		for k, r := range b.negative {
			if !now.Before(r.until) {
				delete(b.negative, k)
			}
		}
	}
	if len(b.negative) < maxRejections {
		key := t.key
		if errors.Is(err, upstream.ErrInvalidClient) {
			// The credentials themselves were refused: whatever scopes,
			// audience or resource a caller asks for next, the answer is
			// the same.
			key = b.keyer.deriveCredentials(t.provider, t.req)
		}
		b.negative[key] = rejection{err: err, until: now.Add(b.cfg.NegativeTTL), t: t}
	}
}

// holdOff returns the reason not to ask the endpoint about t's key now: a
// remembered non-retryable rejection of the key or of its credentials (for
// negative_ttl), or a retryable failure of the key, or repeated failures
// of its provider, whose backoff has not ended (see holdoff.go).
func (b *Broker) holdOff(t target, now time.Time) error {
	b.mu.RLock()
	e := b.entries[t.key]
	held := b.keyHeldLocked(e, now)
	if held == nil {
		held = b.providerHeldLocked(t.provider, now)
	}
	if held != nil && e != nil && !e.used.Load() {
		// A caller waits for the key: the scheduler retries it.
		e.used.Store(true)
	}
	b.mu.RUnlock()
	if held != nil {
		return held
	}
	b.negMu.Lock()
	defer b.negMu.Unlock()
	if len(b.negative) == 0 {
		return nil
	}
	if err := b.rejectedLocked(t.key, now); err != nil {
		return err
	}
	return b.rejectedLocked(b.keyer.deriveCredentials(t.provider, t.req), now)
}

// rejectedLocked returns the rejection remembered under key, dropping it
// once expired. b.negMu must be held.
func (b *Broker) rejectedLocked(key string, now time.Time) error {
	r, ok := b.negative[key]
	if !ok {
		return nil
	}
	if now.Before(r.until) {
		return r.err
	}
	delete(b.negative, key)
	return nil
}

// retryable reports whether a failed fetch may succeed if tried again
// later: throttling, unavailability, and anything that is not an upstream
// rejection (a deadline, for instance).
func retryable(err error) bool {
	if errors.Is(err, ErrTokenTooShort) {
		return false
	}
	var uerr *upstream.Error
	if errors.As(err, &uerr) {
		return uerr.Retryable()
	}
	return true
}

// requestsOf is how many requests to the endpoint one fetch cost: what the
// upstream client reports, or one for a fetcher that does not count (a
// Local refusal sent none).
func requestsOf(tok upstream.Token, err error) int {
	var ue *upstream.Error
	switch {
	case err == nil:
		return max(1, tok.Requests)
	case errors.As(err, &ue) && ue.Local && ue.Requests == 0:
		return 0
	case errors.As(err, &ue):
		return max(1, ue.Requests)
	}
	return 1
}
