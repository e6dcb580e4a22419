package verifier

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Flavours of provider rules.
const (
	// FlavourOAuth2 is the generic OAuth 2.0 / RFC 9068 profile: "aud" is
	// checked against Provider.Audiences and "typ" against "at+jwt" when
	// Provider.RequireJWTAccessTokenType is set.
	FlavourOAuth2 = "oauth2"
	// FlavourCognito is Amazon Cognito's access tokens: token_use must be
	// "access", client_id one of Provider.ClientIDs (when set), iss the
	// user pool's URL.
	FlavourCognito = "cognito"
)

// DefaultAlgorithms are the signing algorithms a provider allows unless
// it names its own. The configuration leaves providers[].verify.algorithms
// empty by default, so this is that default's one home.
var DefaultAlgorithms = []string{"RS256", "ES256", "PS256"}

// AllowedAlgorithms are the algorithms a provider may allow: asymmetric
// ones only (an HMAC key would be the public key, which anyone has).
var AllowedAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// Provider is one issuer whose tokens the verifier accepts.
type Provider struct {
	// Name is the provider's configured name. Required; unique.
	Name string
	// Issuer is the exact "iss" of its tokens (for Cognito the user pool
	// URL, https://cognito-idp.REGION.amazonaws.com/POOL_ID). Required;
	// unique. Without JWKSURI and JWKSFile, the keys are found through
	// Issuer + DiscoveryPath.
	Issuer string
	// Flavour is FlavourOAuth2 (default) or FlavourCognito.
	Flavour string
	// JWKSURI is where the keys are published. At most one of JWKSURI and
	// JWKSFile.
	JWKSURI string
	// JWKSFile is a file holding the keys.
	JWKSFile string
	// Algorithms are the allowed signing algorithms (from
	// AllowedAlgorithms). Empty means DefaultAlgorithms.
	Algorithms []string
	// Audiences, when set, are the accepted "aud" values: a token must
	// carry at least one (flavour oauth2).
	Audiences []string
	// ClientIDs, when set, are the accepted client ids.
	ClientIDs []string
	// RequireJWTAccessTokenType requires the "typ" header "at+jwt" (RFC
	// 9068), flavour oauth2.
	RequireJWTAccessTokenType bool
	// Introspection, when set, checks opaque tokens (RFC 7662).
	Introspection *Introspection
	// Timeout bounds one JWKS, discovery or introspection request; more
	// than 0 (the provider's timeout key). Required.
	Timeout time.Duration
}

// Introspection is a provider's RFC 7662 endpoint and the client the
// broker authenticates to it with.
type Introspection struct {
	// URL is the endpoint: absolute https (http only on loopback).
	URL string
	// ClientID and ClientSecret authenticate the broker (HTTP Basic, or
	// the form with Post).
	ClientID     string
	ClientSecret secret.String
	// Secret, when set, returns the client's current secret and is asked
	// for each request (so a rotated secret is used at once); it overrides
	// ClientSecret.
	Secret func() secret.String
	// Post sends client_id and client_secret in the form
	// (client_secret_post) instead of HTTP Basic.
	Post bool
}

// secret returns the client secret to send now.
func (in *Introspection) secret() secret.String {
	if in.Secret != nil {
		return in.Secret()
	}
	return in.ClientSecret
}

// Config configures a Verifier.
type Config struct {
	// Providers are the issuers whose tokens are accepted.
	Providers []Provider
	// CacheMaxCost bounds the memory of cached results, in bytes; more
	// than 0 (verifier.cache_max_cost). Required.
	CacheMaxCost int64
	// MaxTokenSize is the longest token accepted, in bytes; more than 0
	// (verifier.max_token_size). Required.
	MaxTokenSize int
	// RefreshInterval is how often keys are fetched again; more than 0
	// (verifier.jwks_refresh_interval). Required.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two fetches of one
	// provider's keys caused by unknown key ids (and the first retry after
	// a failed scheduled fetch); more than 0
	// (verifier.jwks_min_refresh_interval). Required.
	MinRefreshInterval time.Duration
	// IntrospectionCacheTTL caps how long an introspection result is
	// cached; 0: not cached (verifier.introspection_cache_ttl).
	IntrospectionCacheTTL time.Duration
	// ClockSkew is the tolerance of the exp, nbf and iat checks; 0: none
	// (verifier.clock_skew).
	ClockSkew time.Duration
	// HTTPClient fetches keys and introspects. Nil means a client of its
	// own (with each provider's Timeout). Unless it has a CheckRedirect of
	// its own, a redirect is followed only to an https URL (http only on
	// loopback).
	HTTPClient *http.Client
	// Observer receives events for metrics. Optional.
	Observer Observer
	// Logger receives JWKS failures. Nil means slog.Default().
	Logger *slog.Logger
}

// check returns an error naming the first bad field of c and its rule.
func (c *Config) check() error {
	bad := func(field string, v any, rule, key string) error {
		return fmt.Errorf("verifier: Config.%s is %v, want %s (configuration verifier.%s)", field, v, rule, key)
	}
	switch {
	case c.CacheMaxCost <= 0:
		return bad("CacheMaxCost", c.CacheMaxCost, "more than 0", "cache_max_cost")
	case c.MaxTokenSize <= 0:
		return bad("MaxTokenSize", c.MaxTokenSize, "more than 0", "max_token_size")
	case c.RefreshInterval <= 0:
		return bad("RefreshInterval", c.RefreshInterval, "more than 0", "jwks_refresh_interval")
	case c.MinRefreshInterval <= 0:
		return bad("MinRefreshInterval", c.MinRefreshInterval, "more than 0", "jwks_min_refresh_interval")
	case c.IntrospectionCacheTTL < 0:
		return bad("IntrospectionCacheTTL", c.IntrospectionCacheTTL, "at least 0 (0: not cached)", "introspection_cache_ttl")
	case c.ClockSkew < 0:
		return bad("ClockSkew", c.ClockSkew, "at least 0 (0: none)", "clock_skew")
	}
	return nil
}

// provider is a checked Provider with its keys.
type provider struct {
	Provider
	algs    []jose.SignatureAlgorithm
	keys    *keySource // nil for an introspection-only provider
	timeout time.Duration
}

// Verifier verifies access tokens. Create it with New, start its key
// refreshes with Run, and Close it. It is safe for concurrent use.
type Verifier struct {
	providers []*provider
	byName    map[string]*provider
	byIssuer  map[string]*provider
	algs      []jose.SignatureAlgorithm // every allowed algorithm of any provider
	introspec []*provider

	cache    *resultCache
	maxToken int
	interval time.Duration
	skew     time.Duration
	introTTL time.Duration
	client   *http.Client
	observer Observer
	logger   *slog.Logger
	now      func() time.Time

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetches and Run's loops
	intro  introspector
}

// New checks cfg and returns a Verifier. Errors name the field, such as
// "providers[1].algorithms[0]"; a zero value is an error like any other
// bad value (the configuration holds the defaults). No key is fetched
// until Run or the first token.
func New(cfg Config) (*Verifier, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cache, err := newResultCache(cfg.CacheMaxCost)
	if err != nil {
		return nil, err
	}
	base, cancel := context.WithCancel(context.Background())
	v := &Verifier{
		byName:   map[string]*provider{},
		byIssuer: map[string]*provider{},
		cache:    cache,
		maxToken: cfg.MaxTokenSize,
		interval: cfg.RefreshInterval,
		skew:     cfg.ClockSkew,
		introTTL: cfg.IntrospectionCacheTTL,
		client:   cfg.HTTPClient,
		observer: cfg.Observer,
		logger:   cfg.Logger,
		now:      time.Now,
		base:     base,
		cancel:   cancel,
	}
	// Redirects must go to URLs checkURL allows, like the configured ones.
	v.client = safeClient(v.client)
	v.intro.v = v
	for i, p := range cfg.Providers {
		if err := v.add(i, p, cfg.MinRefreshInterval); err != nil {
			v.Close()
			return nil, err
		}
	}
	return v, nil
}

// add checks p and adds it as providers[i].
func (v *Verifier) add(i int, p Provider, minInterval time.Duration) error {
	field := fmt.Sprintf("providers[%d]", i)
	switch {
	case p.Name == "":
		return fmt.Errorf("verifier: %s.name: must be set", field)
	case v.byName[p.Name] != nil:
		return fmt.Errorf("verifier: %s.name: %q is already a provider's", field, p.Name)
	case p.Issuer == "" && p.Introspection == nil:
		return fmt.Errorf("verifier: %s.issuer: must be set (or an introspection endpoint)", field)
	case p.Issuer != "" && v.byIssuer[p.Issuer] != nil:
		return fmt.Errorf("verifier: %s.issuer: already the issuer of provider %q", field, v.byIssuer[p.Issuer].Name)
	case p.JWKSURI != "" && p.JWKSFile != "":
		return fmt.Errorf("verifier: %s: at most one of jwks_uri and jwks_file may be set", field)
	case p.Timeout <= 0:
		return fmt.Errorf("verifier: %s.timeout is %v, want more than 0 (configuration providers[].timeout)", field, p.Timeout)
	}
	switch p.Flavour {
	case "":
		p.Flavour = FlavourOAuth2
	case FlavourOAuth2, FlavourCognito:
	default:
		return fmt.Errorf("verifier: %s.flavour: must be %s or %s, got %q", field, FlavourOAuth2, FlavourCognito, p.Flavour)
	}
	if len(p.Algorithms) == 0 {
		p.Algorithms = DefaultAlgorithms
	}
	pp := &provider{Provider: p, timeout: p.Timeout}
	for j, a := range p.Algorithms {
		if !slices.Contains(AllowedAlgorithms, a) {
			return fmt.Errorf("verifier: %s.algorithms[%d]: must be one of %s, got %q", field, j, strings.Join(AllowedAlgorithms, ", "), a)
		}
		pp.algs = append(pp.algs, jose.SignatureAlgorithm(a))
		if !slices.Contains(v.algs, jose.SignatureAlgorithm(a)) {
			v.algs = append(v.algs, jose.SignatureAlgorithm(a))
		}
	}
	if p.JWKSURI != "" {
		if msg := checkURL(p.JWKSURI); msg != "" {
			return fmt.Errorf("verifier: %s.jwks_uri: %s", field, msg)
		}
	}
	if p.Issuer != "" && p.JWKSURI == "" && p.JWKSFile == "" {
		if msg := checkURL(p.Issuer); msg != "" {
			return fmt.Errorf("verifier: %s.issuer: without jwks_uri or jwks_file the keys are found by discovery, so it %s", field, msg)
		}
	}
	if in := p.Introspection; in != nil {
		if msg := checkURL(in.URL); msg != "" {
			return fmt.Errorf("verifier: %s.introspection_url: %s", field, msg)
		}
		if in.ClientID == "" {
			return fmt.Errorf("verifier: %s.introspection_client: must name a client with an id", field)
		}
		v.introspec = append(v.introspec, pp)
	}
	if p.Issuer != "" {
		pp.keys = &keySource{
			provider:    p.Name,
			issuer:      p.Issuer,
			jwksURI:     p.JWKSURI,
			jwksFile:    p.JWKSFile,
			client:      v.client,
			timeout:     pp.timeout,
			minInterval: minInterval,
			observer:    v.observer,
			logger:      v.logger,
			removed:     func(kids []string) { v.cache.evictKeys(p.Name, kids) },
			base:        v.base,
			wg:          &v.wg,
		}
		v.byIssuer[p.Issuer] = pp
	}
	v.byName[p.Name] = pp
	v.providers = append(v.providers, pp)
	return nil
}

// Run fetches every provider's keys at once and then every
// RefreshInterval (after a failure, again after MinRefreshInterval,
// doubling), until ctx ends. It returns nil then.
func (v *Verifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range v.providers {
		if p.keys == nil {
			continue
		}
		wg.Go(func() { p.keys.run(ctx, v.interval) })
	}
	wg.Wait()
	return nil
}

// Close cancels the fetches in flight, waits for them, and releases the
// cache. Verify must not be called after Close.
func (v *Verifier) Close() {
	v.cancel()
	for _, p := range v.providers {
		if p.keys != nil {
			p.keys.closeFetches()
		}
	}
	v.wg.Wait()
	v.cache.close()
}

// MaxTokenSize returns the longest token accepted, in bytes.
func (v *Verifier) MaxTokenSize() int { return v.maxToken }

// Verify checks req.Token and req's requirements. It returns the token's
// claims, a *RefusedError, or an error wrapping ErrUnavailable (or ctx's
// error) when the token could not be checked.
func (v *Verifier) Verify(ctx context.Context, req Request) (*Claims, error) {
	c, prov, src, err := v.verify(ctx, req)
	if v.observer != nil {
		outcome := OutcomeOK
		var re *RefusedError
		switch {
		case errors.As(err, &re):
			outcome = re.Reason.String()
		case err != nil:
			outcome = "error"
		}
		v.observer.Verified(prov, outcome, src)
	}
	return c, err
}

// verify is Verify without the observer: it also returns the provider
// name (UnknownProvider if none matched) and the source.
func (v *Verifier) verify(ctx context.Context, req Request) (*Claims, string, Source, error) {
	if len(req.Token) > v.maxToken {
		return nil, UnknownProvider, SourceSignature, refuse(ReasonMalformed, "token is longer than %d bytes", v.maxToken)
	}
	if req.Token == "" {
		return nil, UnknownProvider, SourceSignature, refuse(ReasonMalformed, "token is empty")
	}
	if req.Provider != "" && v.byName[req.Provider] == nil {
		return nil, UnknownProvider, SourceSignature, refuse(ReasonWrongIssuer, "provider %q is not configured for verification", req.Provider)
	}
	sum := sha256.Sum256([]byte(req.Token))
	if e, ok := v.cache.get(sum); ok && v.fresh(e) {
		c, err := v.requirements(e.claims, req)
		return c, e.claims.Provider, SourceCache, err
	}
	var (
		e   *entry
		src = SourceSignature
		err error
	)
	if strings.Count(req.Token, ".") == 2 {
		e, err = v.verifyJWT(ctx, req)
	} else {
		src = SourceIntrospection
		e, err = v.intro.check(ctx, req, sum)
	}
	if err != nil {
		name := UnknownProvider
		if e != nil {
			name = e.claims.Provider
		}
		return nil, name, src, err
	}
	e.sum = sum
	v.cache.set(e, v.now())
	c, err := v.requirements(e.claims, req)
	return c, e.claims.Provider, src, err
}

// fresh reports whether a cached entry may still answer: unexpired, and
// (for a signed token) its key still published.
func (v *Verifier) fresh(e *entry) bool {
	if !v.now().Before(e.until) {
		return false
	}
	if e.kid == nil {
		return true
	}
	p := v.byName[e.claims.Provider]
	if p == nil || p.keys == nil {
		return false
	}
	if set := p.keys.keys(); set != nil && !set.has(*e.kid) {
		v.cache.del(e.sum)
		return false
	}
	return true
}

// requirements checks the request's own requirements against verified
// claims: provider, expiry, audience, client and scopes.
func (v *Verifier) requirements(c *Claims, req Request) (*Claims, error) {
	if req.Provider != "" && req.Provider != c.Provider {
		return nil, refuse(ReasonWrongIssuer, "token was issued by provider %q, not %q", c.Provider, req.Provider)
	}
	if !c.Expiry.IsZero() && v.now().After(c.Expiry.Add(v.skew)) {
		return nil, refuse(ReasonExpired, "token expired at %s", c.Expiry.UTC().Format(time.RFC3339))
	}
	if a := req.ExpectedAudience; a != "" && !slices.Contains(c.Audience, a) {
		return nil, refuse(ReasonWrongAudience, "token's audience does not include %q", a)
	}
	if id := req.ExpectedClientID; id != "" && c.ClientID != id {
		return nil, refuse(ReasonWrongClient, "token was not issued to client %q", id)
	}
	var missing []string
	for _, s := range req.RequiredScopes {
		if !slices.Contains(c.Scopes, s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return nil, refuse(ReasonInsufficientScope, "token lacks scope %s", strings.Join(quoteAll(missing), ", "))
	}
	return c, nil
}

// quoteAll quotes each string with %q.
func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
