package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// keySourceTimeout bounds one fetch of a KeySource whose Timeout is zero.
// It is a fixed value: the Kubernetes service-account verifier, the only
// user, has no timeout key.
const keySourceTimeout = 10 * time.Second

// KeySourceConfig configures a KeySource.
type KeySourceConfig struct {
	// Name names the key set in log lines (the "provider" attribute).
	Name string
	// Issuer is the issuer whose OpenID discovery document
	// (Issuer + DiscoveryPath) names the jwks_uri. Ignored with JWKSFile.
	Issuer string
	// JWKSFile, when set, is read instead of discovery.
	JWKSFile string
	// HTTPClient fetches discovery and JWKS documents. Nil: a plain
	// http.Client. Unless it has a CheckRedirect of its own, a redirect
	// is followed only to an https URL (http only on loopback).
	HTTPClient *http.Client
	// Timeout bounds one fetch. Zero: keySourceTimeout (10s; no
	// configuration key sets it).
	Timeout time.Duration
	// MinRefreshInterval is the least time between two fetches caused by
	// unknown key ids; more than 0. Required.
	MinRefreshInterval time.Duration
	// Logger receives failed fetches. Nil: slog.Default().
	Logger *slog.Logger
}

// KeySource is the verifier's JWKS cache for another user of signed JWTs
// (the Kubernetes service-account verifier): it fetches a key set by
// discovery or from a file, keeps the last good one, and fetches again
// when a token names an unknown key id (coalesced, at most once per
// MinRefreshInterval) or on schedule (Run).
type KeySource struct {
	s      *keySource
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewKeySource returns a KeySource. Nothing is fetched until the first
// Lookup or Run. The issuer must be an absolute https URL (http only on a
// loopback host) unless JWKSFile is set.
func NewKeySource(cfg KeySourceConfig) (*KeySource, error) {
	if cfg.MinRefreshInterval <= 0 {
		return nil, fmt.Errorf("KeySourceConfig.MinRefreshInterval is %v, want more than 0", cfg.MinRefreshInterval)
	}
	if cfg.JWKSFile == "" {
		if msg := checkURL(strings.TrimSuffix(cfg.Issuer, "/") + DiscoveryPath); msg != "" {
			return nil, errors.New("issuer " + msg)
		}
	}
	// Redirects must go to URLs checkURL allows, like the issuer.
	cfg.HTTPClient = safeClient(cfg.HTTPClient)
	if cfg.Timeout <= 0 {
		cfg.Timeout = keySourceTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	base, cancel := context.WithCancel(context.Background())
	k := &KeySource{cancel: cancel}
	k.s = &keySource{
		provider:    cfg.Name,
		issuer:      cfg.Issuer,
		jwksFile:    cfg.JWKSFile,
		client:      cfg.HTTPClient,
		timeout:     cfg.Timeout,
		minInterval: cfg.MinRefreshInterval,
		logger:      cfg.Logger,
		base:        base,
		wg:          &k.wg,
	}
	return k, nil
}

// Lookup returns the keys with id kid (every key for ""), fetching the
// set again when it holds none (see the type's rate limit). The error
// wraps ErrUnavailable only when no key set was ever fetched.
func (k *KeySource) Lookup(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	return k.s.lookup(ctx, kid)
}

// Run fetches the keys at once and then every interval (after a failure
// again after MinRefreshInterval, doubling) until ctx ends.
func (k *KeySource) Run(ctx context.Context, interval time.Duration) {
	k.s.run(ctx, interval)
}

// Close ends the fetches in flight and waits for them.
func (k *KeySource) Close() {
	k.cancel()
	k.s.closeFetches()
	k.wg.Wait()
}
