package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// This file is the GetToken path, read top to bottom: resolve the key,
// look the token up in the cache, apply the serving rule, and on a hit
// mark the key used (one read lock, atomics). Everything else - a miss,
// a hold-off, a fetch - leaves this file through holdOff (holdoff.go) or
// fetch (fetch.go).

// GetToken returns a token for req under the serving rule.
func (b *Broker) GetToken(ctx context.Context, req Request) (Token, error) {
	t, err := b.resolve(req.Selector)
	if err != nil {
		return Token{}, err
	}
	t.req.Caller = req.Caller // for the pass-through limits; not in the key
	rec, err := b.get(ctx, t, max(b.cfg.MinRemaining, req.MinTTL))
	if err != nil {
		return Token{}, &keyedError{keyID: t.keyID, err: err}
	}
	b.cfg.Observer.Served(Fetch{Provider: t.provider, Client: t.client, Passthrough: t.req.Passthrough}, max(0, time.Until(rec.ExpiresAt)))
	return toToken(rec, t), nil
}

// get returns a record for t with at least need of life left, and marks
// the key as used.
func (b *Broker) get(ctx context.Context, t target, need time.Duration) (*tokencache.Record, error) {
	now := time.Now()
	// The cache is the token's one home: a token it evicted (never a
	// watched one, which is pinned) is fetched again.
	cached, hit := b.cfg.Cache.Get(t.key)
	servable := hit && cached.ExpiresAt.Sub(now) >= need
	if hit {
		// A caller who wants more life than the provider's tokens can
		// give is refused whatever the age of the token at hand; one who
		// wants more than the token has left gets a new one below.
		if err := b.checkMinTTL(need, cached); err != nil {
			return nil, err
		}
		switch {
		case servable && now.Before(cached.RefreshAt):
			b.hit(t, cached, now)
			return cached, nil
		case servable && b.refreshInBackground(t, cached):
			// Past the refresh point: the refresher replaces the token
			// (or is already at it, or waits to retry), and the old one
			// serves meanwhile, without making this caller wait.
			b.hit(t, cached, now)
			return cached, nil
		}
	}
	if err := b.holdOff(t, now); err != nil {
		if servable {
			b.hit(t, cached, now)
			return cached, nil
		}
		return nil, err
	}
	b.stats.misses.Add(1)
	fresh, err := b.fetch(ctx, t, need)
	now = time.Now()
	if err != nil {
		if hit && cached.ExpiresAt.Sub(now) >= need {
			b.cfg.Logger.Warn("token refresh failed; serving the cached token",
				"key_id", t.keyID, "expires_in", cached.ExpiresAt.Sub(now).Round(time.Second), "error", err)
			b.touch(t, cached, now)
			return cached, nil
		}
		return nil, err
	}
	if err := b.checkMinTTL(need, fresh); err != nil {
		return nil, err
	}
	if left := fresh.ExpiresAt.Sub(now); left < need {
		// The fetch itself took the life the caller wanted.
		return nil, &FieldError{Field: "min_ttl", Kind: ErrTokenTooShort,
			Rule: fmt.Sprintf("the token just obtained has %v left, less than the %v asked for", left.Round(time.Second), need)}
	}
	b.touch(t, fresh, now)
	return fresh, nil
}

// checkMinTTL applies the min_ttl rule: a caller may ask for up to the
// lifetime of the key's tokens (rec's, as the provider issues them) less
// min_remaining, and gets a new token when the current one has less left;
// asking for more is an error that states the numbers. need is
// max(min_remaining, min_ttl).
func (b *Broker) checkMinTTL(need time.Duration, rec *tokencache.Record) error {
	if need <= b.cfg.MinRemaining {
		return nil
	}
	lifetime := rec.ExpiresAt.Sub(rec.IssuedAt)
	largest := max(b.cfg.MinRemaining, lifetime-b.cfg.MinRemaining)
	if need <= largest {
		return nil
	}
	return &FieldError{Field: "min_ttl", Kind: ErrTokenTooShort,
		Rule: fmt.Sprintf("must be at most %v for this key: the provider issues tokens living %v, and a token is served only while it keeps min_remaining (%v) of that life (asked for %v)",
			largest.Round(time.Second), lifetime.Round(time.Second), b.cfg.MinRemaining, need)}
}

// hit counts a call served from the cache and touches its key.
func (b *Broker) hit(t target, rec *tokencache.Record, now time.Time) {
	b.stats.hits.Add(1)
	b.touch(t, rec, now)
}

// touch marks t's key as used at now by a caller that was served rec,
// creating its entry (and so its refresh schedule) when the key has none
// and its token is cached.
func (b *Broker) touch(t target, rec *tokencache.Record, now time.Time) {
	b.mu.RLock()
	e := b.entries[t.key]
	b.mu.RUnlock()
	if e == nil {
		b.mu.Lock()
		if b.entries[t.key] == nil && !b.cfg.Cache.Has(t.key) {
			// The cache refused or let go of the token served: there is
			// nothing to track (the next caller fetches a new one).
			b.mu.Unlock()
			return
		}
		e = b.entryLocked(t)
		if !e.hasToken() {
			b.holdLocked(e, rec)
			if e.index < 0 && !e.refreshing {
				b.scheduleLocked(e, rec.RefreshAt)
			}
		}
		b.mu.Unlock()
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	e.hits.Add(1)
	e.lastUsed.Store(now.UnixNano())
}

// refreshInBackground makes sure the refresher replaces t's token, which
// is past its refresh point: it reports false when Run is not running or
// background refreshes of the key are stopped, and the caller must fetch
// itself.
func (b *Broker) refreshInBackground(t target, rec *tokencache.Record) bool {
	b.mu.RLock()
	e := b.entries[t.key]
	pending := b.running && e != nil && (e.refreshing || e.failures > 0 && !e.stopped && e.used.Load())
	b.mu.RUnlock()
	if pending {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running {
		return false
	}
	e = b.entryLocked(t)
	if e.stopped {
		return false
	}
	if !e.hasToken() {
		b.holdLocked(e, rec)
	}
	if time.Now().Before(e.tok.refreshAt) {
		// A refresh installed a new token since the caller looked.
		return true
	}
	switch {
	case !e.refreshing && e.failures == 0:
		e.used.Store(true) // before the scheduler can find the entry idle
		b.scheduleLocked(e, time.Now())
	case !e.refreshing && !e.used.Load():
		// Backing off, and found idle since its last retry: retried
		// again once its backoff ends, now that a caller asks.
		e.used.Store(true)
		if at := maxTime(time.Now(), e.retryAt); e.index < 0 || at.Before(e.due) {
			b.scheduleLocked(e, at)
		}
	}
	return true
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// toToken converts a record of t's key for the caller. The token of a
// client authenticated with a certificate reports the certificate it is
// bound to (its cnf.x5t#S256 claim).
func toToken(r *tokencache.Record, t target) Token {
	tok := Token{
		AccessToken: r.AccessToken,
		TokenType:   r.TokenType,
		Scopes:      r.Scopes,
		IssuedAt:    r.IssuedAt,
		ExpiresAt:   r.ExpiresAt,
		RefreshAt:   r.RefreshAt,
		KeyID:       t.keyID,
	}
	if cr := t.req.Credential; cr != nil && (cr.Method == upstream.AuthTLSClient || cr.Method == upstream.AuthSelfSignedTLSClient) {
		tok.CertThumbprint = upstream.BoundThumbprint(r.AccessToken.Reveal())
	}
	return tok
}
