package config

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Flavours of a provider's token rules (ProviderVerify.Flavour).
const (
	// FlavourOAuth2 is the generic OAuth 2.0 / RFC 9068 profile.
	FlavourOAuth2 = "oauth2"
	// FlavourCognito is Amazon Cognito's access tokens.
	FlavourCognito = "cognito"
)

// VerifyAlgorithms are the signing algorithms providers[].verify.algorithms
// may list: asymmetric ones only.
var VerifyAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// MaxVerifyTokenSize is the largest verifier.max_token_size Validate
// accepts (the gRPC message limit is 64 KiB).
const MaxVerifyTokenSize = 60 * KiB

// ProviderVerify says how the broker verifies a provider's access tokens
// (TokenVerifierService, ext_authz). A provider without it is not used for
// verification.
type ProviderVerify struct {
	// Issuer is the exact "iss" of the provider's tokens (Amazon Cognito:
	// https://cognito-idp.REGION.amazonaws.com/POOL_ID). Without JWKSURI
	// and JWKSFile the keys are found by OpenID discovery at Issuer +
	// "/.well-known/openid-configuration", so Issuer must then be an
	// https URL (http only for loopback hosts). Required unless
	// IntrospectionURL is set; unique among the providers.
	Issuer string `yaml:"issuer"`
	// Flavour is the provider's token rules: "oauth2" (default; RFC 9068:
	// audiences, optionally typ at+jwt) or "cognito" (token_use must be
	// access; client_ids).
	Flavour string `yaml:"flavour"`
	// JWKSURI is where the keys are published, if not by discovery. At
	// most one of JWKSURI and JWKSFile.
	JWKSURI string `yaml:"jwks_uri"`
	// JWKSFile is a file holding the keys (a JWKS). Load resolves a
	// relative path against the directory of the configuration file.
	JWKSFile string `yaml:"jwks_file"`
	// Algorithms are the allowed signing algorithms, from
	// VerifyAlgorithms. Default RS256, ES256, PS256.
	Algorithms []string `yaml:"algorithms,omitempty"`
	// Audiences, when set, are the accepted "aud" values (flavour
	// oauth2): a token must carry one. Flavour oauth2 needs Audiences or
	// ClientIDs.
	Audiences []string `yaml:"audiences,omitempty"`
	// ClientIDs, when set, are the accepted client ids.
	ClientIDs []string `yaml:"client_ids,omitempty"`
	// RequireJWTType requires the "typ" header "at+jwt" (RFC 9068;
	// flavour oauth2). Default false.
	RequireJWTType bool `yaml:"require_jwt_type"`
	// IntrospectionURL is the provider's RFC 7662 introspection endpoint,
	// for opaque tokens. Default "": opaque tokens are refused.
	IntrospectionURL string `yaml:"introspection_url"`
	// IntrospectionClient names the configured client (of this provider)
	// whose credentials authenticate the broker to IntrospectionURL.
	// Required with IntrospectionURL.
	IntrospectionClient string `yaml:"introspection_client"`
}

// Verifier tunes token verification for resource servers.
type Verifier struct {
	// CacheMaxCost bounds the memory of cached verification results.
	// Default 16MiB; from 64KiB to 16GiB.
	CacheMaxCost ByteSize `yaml:"cache_max_cost"`
	// MaxTokenSize is the longest token verified; longer ones are refused
	// as malformed. Default 8KiB; from 1KiB to 60KiB.
	MaxTokenSize ByteSize `yaml:"max_token_size"`
	// JWKSRefreshInterval is how often each provider's keys are fetched
	// again. Default 1h; >= 1m.
	JWKSRefreshInterval Duration `yaml:"jwks_refresh_interval"`
	// JWKSMinRefreshInterval is the least time between two fetches of a
	// provider's keys caused by tokens naming an unknown key, and the
	// first retry after a failed fetch. Default 30s; from 1s to
	// jwks_refresh_interval.
	JWKSMinRefreshInterval Duration `yaml:"jwks_min_refresh_interval"`
	// IntrospectionCacheTTL caps how long an introspection answer is
	// cached. Default 5m; >= 0 (0: not cached).
	IntrospectionCacheTTL Duration `yaml:"introspection_cache_ttl"`
	// ClockSkew is the tolerance of the exp, nbf and iat checks. Default
	// 30s; from 0 to 5m.
	ClockSkew Duration `yaml:"clock_skew"`
	// RateLimit is the sustained verifications per second one caller may
	// ask for (VerifyToken and Check together). Default 0: no limit.
	RateLimit float64 `yaml:"rate_limit"`
	// RateBurst is how many verifications a caller may ask for at once
	// above RateLimit. Default 100; >= 1.
	RateBurst int `yaml:"rate_burst"`
	// Headers names the request headers ext_authz sets for the service
	// behind Envoy; "" leaves one out.
	Headers VerifierHeaders `yaml:"headers"`
	// PathScopes are the scopes ext_authz requires per path prefix, for
	// routes without a "required_scopes" context extension. Default none.
	PathScopes []PathScopes `yaml:"path_scopes,omitempty"`
}

// VerifierHeaders are the claim headers ext_authz forwards.
type VerifierHeaders struct {
	// Subject carries "sub". Default "x-token-subject".
	Subject string `yaml:"subject"`
	// ClientID carries the client id. Default "x-token-client-id".
	ClientID string `yaml:"client_id"`
	// Scopes carries the scopes, space-separated. Default
	// "x-token-scopes".
	Scopes string `yaml:"scopes"`
	// Provider carries the provider's name. Default "x-token-provider".
	Provider string `yaml:"provider"`
	// Issuer carries "iss". Default "x-token-issuer".
	Issuer string `yaml:"issuer"`
	// Audience carries the audiences, space-separated. Default "".
	Audience string `yaml:"audience"`
}

// PathScopes are the scopes a path prefix requires.
type PathScopes struct {
	// Prefix is a path prefix starting with '/', matched on whole segments
	// of the percent-decoded, cleaned request path; the longest match wins.
	Prefix string `yaml:"prefix"`
	// Scopes must all be among the token's scopes.
	Scopes []string `yaml:"scopes,omitempty"`
}

// defaultVerifier is the verifier section's default.
func defaultVerifier() Verifier {
	return Verifier{
		CacheMaxCost:           16 * MiB,
		MaxTokenSize:           8 * KiB,
		JWKSRefreshInterval:    Duration(time.Hour),
		JWKSMinRefreshInterval: Duration(30 * time.Second),
		IntrospectionCacheTTL:  Duration(5 * time.Minute),
		ClockSkew:              Duration(30 * time.Second),
		RateBurst:              100,
		Headers: VerifierHeaders{
			Subject:  "x-token-subject",
			ClientID: "x-token-client-id",
			Scopes:   "x-token-scopes",
			Provider: "x-token-provider",
			Issuer:   "x-token-issuer",
		},
	}
}

// validateVerifier checks the verifier section and providers[].verify.
func (c *Config) validateVerifier(v *validator) {
	vc := c.Verifier
	if vc.CacheMaxCost < MinCacheMaxCost || vc.CacheMaxCost > MaxCacheMaxCost {
		v.add("verifier.cache_max_cost", "must be between %s and %s, got %s", MinCacheMaxCost, MaxCacheMaxCost, vc.CacheMaxCost)
	}
	if vc.MaxTokenSize < KiB || vc.MaxTokenSize > MaxVerifyTokenSize {
		v.add("verifier.max_token_size", "must be between %s and %s, got %s", ByteSize(KiB), ByteSize(MaxVerifyTokenSize), vc.MaxTokenSize)
	}
	if vc.JWKSRefreshInterval < Duration(time.Minute) {
		v.add("verifier.jwks_refresh_interval", "must be at least 1m, got %s", vc.JWKSRefreshInterval)
	}
	if vc.JWKSMinRefreshInterval < Duration(time.Second) || vc.JWKSMinRefreshInterval > vc.JWKSRefreshInterval {
		v.add("verifier.jwks_min_refresh_interval", "must be at least 1s and at most jwks_refresh_interval (%s), got %s", vc.JWKSRefreshInterval, vc.JWKSMinRefreshInterval)
	}
	if vc.IntrospectionCacheTTL < 0 {
		v.add("verifier.introspection_cache_ttl", "must be >= 0, got %s", vc.IntrospectionCacheTTL)
	}
	if vc.ClockSkew < 0 || vc.ClockSkew > Duration(5*time.Minute) {
		v.add("verifier.clock_skew", "must be between 0 and 5m, got %s", vc.ClockSkew)
	}
	if !(vc.RateLimit >= 0 && !math.IsInf(vc.RateLimit, 1)) {
		v.add("verifier.rate_limit", "must be a finite number >= 0 (verifications per second; 0: no limit), got %v", vc.RateLimit)
	}
	if vc.RateBurst < 1 {
		v.add("verifier.rate_burst", "must be >= 1, got %d", vc.RateBurst)
	}
	h := vc.Headers
	for _, f := range []struct{ key, name string }{{"subject", h.Subject}, {"client_id", h.ClientID}, {"scopes", h.Scopes}, {"provider", h.Provider}, {"issuer", h.Issuer}, {"audience", h.Audience}} {
		if f.name != "" && !validHeaderName(f.name) {
			v.add("verifier.headers."+f.key, "must be a lower-case HTTP header name (a-z, 0-9, '-'), got %q", f.name)
		}
	}
	for i, ps := range vc.PathScopes {
		key := fmt.Sprintf("verifier.path_scopes[%d]", i)
		if !strings.HasPrefix(ps.Prefix, "/") {
			v.add(key+".prefix", "must start with '/', got %q", ps.Prefix)
		}
		for j, s := range ps.Scopes {
			if !validScope(s) {
				v.add(fmt.Sprintf("%s.scopes[%d]", key, j), `must be printable ASCII without spaces, '"' or '\', got %q`, s)
			}
		}
	}

	issuers := map[string]int{}
	for i, p := range c.Providers {
		pv := p.Verify
		if pv == nil {
			continue
		}
		key := fmt.Sprintf("providers[%d].verify", i)
		if pv.Issuer == "" && pv.IntrospectionURL == "" {
			v.add(key+".issuer", "must be set (or introspection_url, for opaque tokens only)")
		}
		if pv.Issuer != "" {
			if j, dup := issuers[pv.Issuer]; dup {
				v.add(key+".issuer", "is already the issuer of providers[%d]", j)
			}
			issuers[pv.Issuer] = i
			if pv.JWKSURI == "" && pv.JWKSFile == "" {
				if msg := checkTokenURL(pv.Issuer); msg != "" {
					v.add(key+".issuer", "without jwks_uri or jwks_file the keys are found by OpenID discovery, so it %s", msg)
				}
			}
		}
		switch pv.Flavour {
		case "", FlavourOAuth2, FlavourCognito:
		default:
			v.add(key+".flavour", "must be %s or %s, got %q", FlavourOAuth2, FlavourCognito, pv.Flavour)
		}
		if (pv.Flavour == "" || pv.Flavour == FlavourOAuth2) && len(pv.Audiences) == 0 && len(pv.ClientIDs) == 0 {
			v.add(key, "flavour oauth2 needs audiences or client_ids (or both): without them a token the provider issued for any resource server would be accepted")
		}
		if pv.JWKSURI != "" && pv.JWKSFile != "" {
			v.add(key, "at most one of jwks_uri and jwks_file may be set, got both")
		}
		if pv.JWKSURI != "" {
			if msg := checkTokenURL(pv.JWKSURI); msg != "" {
				v.add(key+".jwks_uri", "%s", msg)
			}
		}
		for j, a := range pv.Algorithms {
			if !slices.Contains(VerifyAlgorithms, a) {
				v.add(fmt.Sprintf("%s.algorithms[%d]", key, j), "must be one of %s (HMAC and none are never allowed), got %q", strings.Join(VerifyAlgorithms, ", "), a)
			}
		}
		if pv.IntrospectionURL != "" {
			if msg := checkTokenURL(pv.IntrospectionURL); msg != "" {
				v.add(key+".introspection_url", "%s", msg)
			}
			if j := slices.IndexFunc(c.Clients, func(cl Client) bool { return cl.Name == pv.IntrospectionClient && cl.Provider == p.Name }); j < 0 {
				v.add(key+".introspection_client", "must name a configured client of provider %q, got %q", p.Name, pv.IntrospectionClient)
			} else if m := c.ClientAuthMethod(j); m != AuthClientSecretBasic && m != AuthClientSecretPost {
				v.add(key+".introspection_client", "must name a client that uses client_secret_basic or client_secret_post, got %q whose auth_method is %s", pv.IntrospectionClient, m)
			}
		} else if pv.IntrospectionClient != "" {
			v.add(key+".introspection_client", "needs introspection_url")
		}
	}
}

// validHeaderName reports whether s is a lower-case header name.
func validHeaderName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// validScope reports whether s is an RFC 6749 scope-token.
func validScope(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < 0x21 || b > 0x7e || b == '"' || b == '\\' {
			return false
		}
	}
	return true
}
