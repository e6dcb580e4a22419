// Package broker is tokenbroker's domain: it turns a request for a token
// into a key, serves the cached token while it may be served, and otherwise
// fetches a new one from the provider's token endpoint, sharing one upstream
// request among all concurrent callers of the key.
//
// The serving rule: a cached token is served while it is before its refresh
// point and has at least max(min_remaining, min_ttl) of life left. Past the
// refresh point the next caller fetches a new token (coalesced); when that
// fetch fails and the old token still has enough life, the old token is
// served and the failure logged. A token with less than min_remaining left
// is never served.
//
// The package has no gRPC imports; the server maps its errors.
package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Fetcher obtains tokens from one provider's token endpoint.
// *upstream.Client implements it.
type Fetcher interface {
	Fetch(ctx context.Context, r upstream.Request) (upstream.Token, error)
}

// Client is a broker-held client: credentials callers name but never see.
type Client struct {
	// Provider is the name of the client's provider.
	Provider string
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// ClientSecret is the client secret.
	ClientSecret secret.String
}

// Config configures a Broker. Zero durations and fractions take the
// documented defaults.
type Config struct {
	// Providers are the token endpoints, by provider name.
	Providers map[string]Fetcher
	// Clients are the broker-held clients, by name.
	Clients map[string]Client
	// Passthrough accepts credentials presented by callers.
	Passthrough bool
	// Cache holds the tokens. Required.
	Cache *tokencache.Cache
	// RefreshFraction is where in a token's lifetime its refresh point lies
	// (default 0.75); RefreshJitter spreads it by ± that fraction of the
	// lifetime (default 0: none).
	RefreshFraction float64
	// RefreshJitter is the ± spread of the refresh point, as a fraction of
	// the lifetime.
	RefreshJitter float64
	// MinRemaining is the least life a served token may have (default 30s
	// when zero; use a negative value for none).
	MinRemaining time.Duration
	// NegativeTTL is how long a non-retryable upstream rejection is
	// remembered per key (0: not remembered).
	NegativeTTL time.Duration
	// FetchTimeout bounds one shared upstream fetch with its retries
	// (default 30s). It is independent of any caller's deadline.
	FetchTimeout time.Duration
	// HMACKey keys the cache-key HMAC. When empty, a random key is used.
	HMACKey []byte
	// Logger receives warnings (default: slog.Default()).
	Logger *slog.Logger
}

// Broker serves tokens. Its methods are safe for concurrent use.
type Broker struct {
	cfg     Config
	hmacKey []byte
	flights singleflight.Group

	mu       sync.Mutex
	negative map[string]rejection // key → remembered non-retryable failure
}

// rejection is a remembered non-retryable upstream failure.
type rejection struct {
	err   error
	until time.Time
}

// maxRejections bounds the negative cache; past it, expired entries are
// swept on insert.
const maxRejections = 10_000

// New returns a Broker.
func New(cfg Config) (*Broker, error) {
	if cfg.Cache == nil {
		return nil, errors.New("broker: Config.Cache is required")
	}
	if cfg.RefreshFraction == 0 {
		cfg.RefreshFraction = 0.75
	}
	if cfg.RefreshFraction <= 0 || cfg.RefreshFraction >= 1 {
		return nil, fmt.Errorf("broker: refresh fraction %v is not in (0, 1)", cfg.RefreshFraction)
	}
	if cfg.RefreshJitter < 0 || cfg.RefreshFraction-cfg.RefreshJitter <= 0 || cfg.RefreshFraction+cfg.RefreshJitter >= 1 {
		return nil, fmt.Errorf("broker: refresh jitter %v does not keep the refresh point in (0, 1)", cfg.RefreshJitter)
	}
	switch {
	case cfg.MinRemaining == 0:
		cfg.MinRemaining = 30 * time.Second
	case cfg.MinRemaining < 0:
		cfg.MinRemaining = 0
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for name, c := range cfg.Clients {
		if cfg.Providers[c.Provider] == nil {
			return nil, fmt.Errorf("broker: client %q names unknown provider %q", name, c.Provider)
		}
	}
	key := cfg.HMACKey
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key) // never fails (crypto/rand panics on failure).
	}
	return &Broker{cfg: cfg, hmacKey: key, negative: make(map[string]rejection)}, nil
}

// target is a request resolved against the configuration.
type target struct {
	fetcher Fetcher
	req     upstream.Request
	key     string // the cache key (raw HMAC bytes)
	keyID   string
}

// resolve finds the fetcher and credentials a selector names.
func (b *Broker) resolve(sel Selector) (target, error) {
	var provider string
	var req upstream.Request
	switch {
	case sel.Credentials != nil && sel.Client != "":
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	case sel.Credentials != nil:
		if !b.cfg.Passthrough {
			return target{}, ErrPassthroughDisabled
		}
		provider = sel.Credentials.Provider
		req.ClientID, req.ClientSecret = sel.Credentials.ClientID, sel.Credentials.ClientSecret
	case sel.Client != "":
		c, ok := b.cfg.Clients[sel.Client]
		if !ok {
			return target{}, fmt.Errorf("client %q: %w", sel.Client, ErrUnknownClient)
		}
		provider = c.Provider
		req.ClientID, req.ClientSecret = c.ClientID, c.ClientSecret
	default:
		return target{}, &FieldError{Field: "selector.credentials", Rule: "exactly one of client and client_credentials must be set", Kind: ErrInvalidArgument}
	}
	f := b.cfg.Providers[provider]
	if f == nil {
		return target{}, &FieldError{Field: "selector.client_credentials.provider", Rule: "must name a configured provider", Kind: ErrUnknownProvider}
	}
	req.Scopes = normalizeScopes(sel.Scopes)
	req.Audience, req.Resource = sel.Audience, sel.Resource
	key := deriveKey(b.hmacKey, provider, req)
	return target{fetcher: f, req: req, key: key, keyID: keyID(key)}, nil
}

// GetToken returns a token for req under the serving rule.
func (b *Broker) GetToken(ctx context.Context, req Request) (Token, error) {
	t, err := b.resolve(req.Selector)
	if err != nil {
		return Token{}, err
	}
	need := max(b.cfg.MinRemaining, req.MinTTL)
	now := time.Now()
	cached, hit := b.cfg.Cache.Get(t.key)
	if hit && now.Before(cached.RefreshAt) {
		if cached.ExpiresAt.Sub(now) >= need {
			return toToken(cached, t.keyID), nil
		}
		if cached.ExpiresAt.Sub(cached.IssuedAt) < need {
			// Even a new token would not live long enough: do not spend
			// an upstream request to find that out again.
			return Token{}, ErrTokenTooShort
		}
	}
	if err := b.rejected(t.key, now); err != nil {
		return Token{}, err
	}
	fresh, err := b.fetch(ctx, t)
	now = time.Now()
	if err != nil {
		if hit && cached.ExpiresAt.Sub(now) >= need {
			b.cfg.Logger.Warn("token refresh failed; serving the cached token",
				"key_id", t.keyID, "expires_in", cached.ExpiresAt.Sub(now).Round(time.Second), "error", err)
			return toToken(cached, t.keyID), nil
		}
		return Token{}, err
	}
	if fresh.ExpiresAt.Sub(now) < need {
		return Token{}, ErrTokenTooShort
	}
	return toToken(fresh, t.keyID), nil
}

// fetch gets a new token for t, sharing one upstream request with every
// concurrent caller of the same key. The shared fetch runs on its own
// deadline: ctx ending only stops this caller's wait.
func (b *Broker) fetch(ctx context.Context, t target) (*tokencache.Record, error) {
	ch := b.flights.DoChan(t.key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.FetchTimeout)
		defer cancel()
		tok, err := t.fetcher.Fetch(fctx, t.req)
		if err != nil {
			b.remember(t.key, err)
			return nil, err
		}
		rec := b.record(tok)
		// The record stays servable until min_remaining before expiry. The
		// result reaches this flight's callers whether or not the cache
		// admits it.
		b.cfg.Cache.Set(t.key, rec, time.Until(rec.ExpiresAt)-b.cfg.MinRemaining)
		return rec, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*tokencache.Record), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// record turns a fetched token into a cache record with a jittered
// refresh point.
func (b *Broker) record(tok upstream.Token) *tokencache.Record {
	lifetime := tok.ExpiresAt.Sub(tok.IssuedAt)
	frac := b.cfg.RefreshFraction + b.cfg.RefreshJitter*(2*mathrand.Float64()-1)
	return &tokencache.Record{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		Scopes:      tok.Scopes,
		IssuedAt:    tok.IssuedAt,
		ExpiresAt:   tok.ExpiresAt,
		RefreshAt:   tok.IssuedAt.Add(time.Duration(frac * float64(lifetime))),
	}
}

// remember files a non-retryable upstream rejection for NegativeTTL.
func (b *Broker) remember(key string, err error) {
	var uerr *upstream.Error
	if b.cfg.NegativeTTL <= 0 || !errors.As(err, &uerr) || uerr.Retryable() {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.negative) >= maxRejections {
		for k, r := range b.negative {
			if !now.Before(r.until) {
				delete(b.negative, k)
			}
		}
	}
	if len(b.negative) < maxRejections {
		b.negative[key] = rejection{err: err, until: now.Add(b.cfg.NegativeTTL)}
	}
}

// rejected returns the remembered rejection of key, if it is still fresh.
func (b *Broker) rejected(key string, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
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

// toToken converts a record for the caller.
func toToken(r *tokencache.Record, keyID string) Token {
	return Token{
		AccessToken: r.AccessToken,
		TokenType:   r.TokenType,
		Scopes:      r.Scopes,
		IssuedAt:    r.IssuedAt,
		ExpiresAt:   r.ExpiresAt,
		RefreshAt:   r.RefreshAt,
		KeyID:       keyID,
	}
}
