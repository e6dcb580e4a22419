package verifier

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// TestVerifyAlgorithms verifies a token signed with each default
// algorithm, keys found through OpenID discovery.
func TestVerifyAlgorithms(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.PS256} {
		t.Run(string(alg), func(t *testing.T) {
			k := newKey(t, alg, "k1")
			is := newIssuerServer(t, k)
			v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: is.URL()})
			c, err := verify(t, v, Request{Token: k.sign(t, claimsFor(is.URL()), nil), RequiredScopes: []string{"orders/read"}})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c.Provider != "p" || c.ClientID != "client-1" || c.Subject != "client-1" || !slices.Equal(c.Scopes, []string{"orders/read", "orders/write"}) || !slices.Equal(c.Audience, []string{"orders-api"}) || c.TokenUse != "access" || c.TokenID != "id-1" || c.Expiry.IsZero() || c.IssuedAt.IsZero() {
				t.Errorf("claims = %+v", c)
			}
		})
	}
}

// TestScpList reads scopes from an "scp" list.
func TestScpList(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	is := newIssuerServer(t, k)
	v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: is.URL()})
	tok := k.sign(t, with(claimsFor(is.URL()), "scope", nil, "scp", []string{"a", "b"}), nil)
	c, err := verify(t, v, Request{Token: tok, RequiredScopes: []string{"b"}})
	if err != nil || !slices.Equal(c.Scopes, []string{"a", "b"}) {
		t.Fatalf("Verify = %+v, %v; want scopes [a b]", c, err)
	}
}

// TestRefusals covers every refusal reason.
func TestRefusals(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	other := newKey(t, jose.ES256, "k1") // same kid, another key
	unknown := newKey(t, jose.ES256, "k-unknown")
	rs := newKey(t, jose.RS256, "rsa")
	is := newIssuerServer(t, k, rs)
	cog := newIssuerServer(t, k)
	at := newIssuerServer(t, k)
	obs := &recorder{}
	v := newTestVerifier(t, obs,
		Provider{Name: "p", Issuer: is.URL(), Algorithms: []string{"ES256"}, Audiences: []string{"orders-api", "other-api"}},
		Provider{Name: "cog", Issuer: cog.URL(), Flavour: FlavourCognito, ClientIDs: []string{"client-1"}},
		Provider{Name: "at", Issuer: at.URL(), RequireJWTAccessTokenType: true},
	)
	good := claimsFor(is.URL())
	now := time.Now()
	rsaDER, err := x509.MarshalPKIXPublicKey(rs.pub.Key)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})
	tampered := func() string {
		parts := strings.Split(k.sign(t, good, nil), ".")
		payload := with(good, "scope", "orders/admin")
		b, _ := jsonMarshal(payload)
		parts[1] = base64.RawURLEncoding.EncodeToString(b)
		return strings.Join(parts, ".")
	}()
	cases := []struct {
		name  string
		req   Request
		want  Reason
		label string
	}{
		{"garbage", Request{Token: "a.b.c"}, ReasonMalformed, "_other"},
		{"empty", Request{Token: ""}, ReasonMalformed, "_other"},
		{"too long", Request{Token: strings.Repeat("a", int(config.Default().Verifier.MaxTokenSize)+1)}, ReasonMalformed, "_other"},
		{"opaque without introspection", Request{Token: "opaque-token-value"}, ReasonMalformed, "_other"},
		{"no exp", Request{Token: k.sign(t, with(good, "exp", nil), nil)}, ReasonMalformed, "p"},
		{"jwk header", Request{Token: k.sign(t, good, map[jose.HeaderKey]any{"jwk": k.pub})}, ReasonMalformed, "_other"},
		{"jku header", Request{Token: k.sign(t, good, map[jose.HeaderKey]any{"jku": is.URL() + "/jwks"})}, ReasonMalformed, "_other"},
		{"x5u header", Request{Token: k.sign(t, good, map[jose.HeaderKey]any{"x5u": is.URL() + "/cert"})}, ReasonMalformed, "_other"},
		{"expired", Request{Token: k.sign(t, with(good, "exp", now.Add(-time.Hour).Unix(), "iat", now.Add(-2*time.Hour).Unix()), nil)}, ReasonExpired, "p"},
		{"nbf in the future", Request{Token: k.sign(t, with(good, "nbf", now.Add(time.Hour).Unix()), nil)}, ReasonNotYetValid, "p"},
		{"iat in the future", Request{Token: k.sign(t, with(good, "iat", now.Add(time.Hour).Unix()), nil)}, ReasonNotYetValid, "p"},
		{"tampered payload", Request{Token: tampered}, ReasonBadSignature, "p"},
		{"other key, same kid", Request{Token: other.sign(t, good, nil)}, ReasonBadSignature, "p"},
		{"unknown kid", Request{Token: unknown.sign(t, good, nil)}, ReasonUnknownKey, "p"},
		{"unknown issuer", Request{Token: k.sign(t, with(good, "iss", "https://elsewhere.example"), nil)}, ReasonWrongIssuer, "_other"},
		{"other provider requested", Request{Token: k.sign(t, good, nil), Provider: "cog"}, ReasonWrongIssuer, "p"},
		{"unconfigured provider requested", Request{Token: k.sign(t, good, nil), Provider: "nope"}, ReasonWrongIssuer, "_other"},
		{"audience not the provider's", Request{Token: k.sign(t, with(good, "aud", "billing-api"), nil)}, ReasonWrongAudience, "p"},
		{"audience not the expected one", Request{Token: k.sign(t, good, nil), ExpectedAudience: "other-api"}, ReasonWrongAudience, "p"},
		{"cognito id token", Request{Token: k.sign(t, with(claimsFor(cog.URL()), "token_use", "id"), nil)}, ReasonWrongTokenUse, "cog"},
		{"typ not at+jwt", Request{Token: k.sign(t, claimsFor(at.URL()), nil)}, ReasonWrongTokenUse, "at"},
		{"insufficient scope", Request{Token: k.sign(t, good, nil), RequiredScopes: []string{"orders/read", "orders/admin"}}, ReasonInsufficientScope, "p"},
		{"cognito client not accepted", Request{Token: k.sign(t, with(claimsFor(cog.URL()), "client_id", "client-2"), nil)}, ReasonWrongClient, "cog"},
		{"client not the expected one", Request{Token: k.sign(t, good, nil), ExpectedClientID: "client-9"}, ReasonWrongClient, "p"},
		{"alg none", Request{Token: unsigned(good)}, ReasonDisallowedAlgorithm, "_other"},
		{"HS256 with the RSA public key (PEM)", Request{Token: hmacSigned(t, rsaPEM, "rsa", good)}, ReasonDisallowedAlgorithm, "p"},
		{"HS256 with the RSA public key (DER)", Request{Token: hmacSigned(t, rsaDER, "rsa", good)}, ReasonDisallowedAlgorithm, "p"},
		{"RS256 not in the provider's list", Request{Token: rs.sign(t, good, nil)}, ReasonDisallowedAlgorithm, "p"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := verify(t, v, c.req)
			if r := reasonOf(err); r != c.want {
				t.Fatalf("Verify = %+v, %v; want refusal %s", got, err, c.want)
			}
			if want := c.label + "/" + c.want.String() + "/"; !strings.HasPrefix(obs.last(), want) {
				t.Errorf("observed %q, want prefix %q", obs.last(), want)
			}
			// No part of the token appears in the error.
			for _, part := range strings.Split(c.req.Token, ".") {
				if len(part) > 8 && strings.Contains(err.Error(), part) {
					t.Errorf("error %q contains part of the token", err)
				}
			}
		})
	}
	// The cached good token passes, and the same refusals hold for it.
	tok := k.sign(t, good, nil)
	for range 2 {
		if _, err := verify(t, v, Request{Token: tok}); err != nil {
			t.Fatalf("Verify(good) = %v", err)
		}
		if _, err := verify(t, v, Request{Token: tok, RequiredScopes: []string{"x"}}); reasonOf(err) != ReasonInsufficientScope {
			t.Fatalf("cached: Verify(missing scope) = %v, want insufficient_scope", err)
		}
	}
}

// TestReasonNames checks that every reason has a name.
func TestReasonNames(t *testing.T) {
	for _, r := range Reasons() {
		if strings.HasPrefix(r.String(), "reason(") {
			t.Errorf("reason %d has no name", r)
		}
	}
	if got := len(Reasons()); got != 12 {
		t.Errorf("got %d reasons, want 12", got)
	}
}

// TestUnknownKidCoalesced: 1,000 tokens with a new kid at once make one
// JWKS request, and a kid that stays unknown does not make another within
// the minimum interval.
func TestUnknownKidCoalesced(t *testing.T) {
	k1 := newKey(t, jose.ES256, "k1")
	k2 := newKey(t, jose.ES256, "k2")
	is := newIssuerServer(t, k1)
	v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: is.URL()})
	if _, err := verify(t, v, Request{Token: k1.sign(t, claimsFor(is.URL()), nil)}); err != nil {
		t.Fatal(err)
	}
	if got := is.hits.Load(); got != 1 {
		t.Fatalf("JWKS requests = %d, want 1", got)
	}
	is.setKeys(k1, k2)
	// The fetch above was a moment ago: pretend it was long ago, so that
	// the rate limit lets an unknown kid fetch again.
	ks := v.providers[0].keys
	ks.mu.Lock()
	ks.lastTry = time.Now().Add(-time.Hour)
	ks.mu.Unlock()
	// Hold the JWKS answer until every caller is waiting, so that all of
	// them arrive while the fetch is in flight.
	hold := make(chan struct{})
	is.mu.Lock()
	is.hold = hold
	is.mu.Unlock()
	const n = 1000
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = k2.sign(t, with(claimsFor(is.URL()), "jti", fmt.Sprint(i)), nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := verify(t, v, Request{Token: tokens[i]}); err != nil {
				errs <- err
			}
		})
	}
	for is.hits.Load() < 2 {
		time.Sleep(time.Millisecond) // wait for the one fetch to arrive
	}
	close(hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Verify(new kid) = %v", err)
	}
	if got := is.hits.Load(); got != 2 {
		t.Errorf("JWKS requests = %d, want 2 (one for 1,000 tokens with a new kid)", got)
	}
	k3 := newKey(t, jose.ES256, "k3")
	for range 100 {
		if _, err := verify(t, v, Request{Token: k3.sign(t, claimsFor(is.URL()), nil)}); reasonOf(err) != ReasonUnknownKey {
			t.Fatalf("Verify(unknown kid) = %v, want unknown_key", err)
		}
	}
	if got := is.hits.Load(); got != 2 {
		t.Errorf("JWKS requests after 100 unknown kids = %d, want 2 (rate-limited)", got)
	}
}

// TestRotationDuringLoad rotates the key while tokens are verified: tokens
// of the new key verify once it is published, tokens of the removed key
// are refused after the refresh that removed it, cached results included.
func TestRotationDuringLoad(t *testing.T) {
	old := newKey(t, jose.ES256, "old")
	nu := newKey(t, jose.RS256, "new")
	is := newIssuerServer(t, old)
	cfg := testConfig(Provider{Name: "p", Issuer: is.URL()})
	cfg.MinRefreshInterval = time.Nanosecond
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	oldTok := old.sign(t, claimsFor(is.URL()), nil)
	if _, err := verify(t, v, Request{Token: oldTok}); err != nil {
		t.Fatal(err)
	}
	v.cache.wait()
	is.setKeys(old, nu) // publish the new key
	newTok := nu.sign(t, claimsFor(is.URL()), nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds atomic.Int64
	waitRounds := func(n int64) {
		for target := rounds.Load() + n; rounds.Load() < target; {
			runtime.Gosched()
		}
	}
	errs := make(chan error, 100)
	for range 8 {
		wg.Go(func() {
			for {
				rounds.Add(1)
				select {
				case <-stop:
					return
				default:
				}
				if _, err := verify(t, v, Request{Token: newTok}); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
				_, err := verify(t, v, Request{Token: oldTok})
				if err != nil && reasonOf(err) != ReasonUnknownKey {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	waitRounds(200)
	is.setKeys(nu) // retire the old key
	// A token naming a kid nobody has makes the verifier fetch again.
	if _, err := verify(t, v, Request{Token: newKey(t, jose.ES256, "x").sign(t, claimsFor(is.URL()), nil)}); reasonOf(err) != ReasonUnknownKey {
		t.Errorf("Verify(x) = %v, want unknown_key", err)
	}
	waitRounds(200)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("during rotation: %v", err)
	}
	if _, err := verify(t, v, Request{Token: oldTok}); reasonOf(err) != ReasonUnknownKey {
		t.Errorf("after rotation: Verify(old token) = %v, want unknown_key (its cached result evicted)", err)
	}
	if _, err := verify(t, v, Request{Token: newTok}); err != nil {
		t.Errorf("after rotation: Verify(new token) = %v", err)
	}
}

// TestEvictOnRotation: the refresh that removes a key evicts the cached
// results it signed, at once.
func TestEvictOnRotation(t *testing.T) {
	old := newKey(t, jose.ES256, "old")
	nu := newKey(t, jose.ES256, "new")
	is := newIssuerServer(t, old)
	v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: is.URL()})
	tok := old.sign(t, claimsFor(is.URL()), nil)
	if _, err := verify(t, v, Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	v.cache.wait()
	sum := sha256Sum(tok)
	if _, ok := v.cache.get(sum); !ok {
		t.Fatal("result not cached")
	}
	is.setKeys(nu)
	if err := v.providers[0].keys.refresh(); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.cache.get(sum); ok {
		t.Error("result signed by the removed key is still cached")
	}
}

// TestJWKSDown: keys fetched before keep serving while the JWKS endpoint
// answers 503 or garbage; a failed fetch is observed.
func TestJWKSDown(t *testing.T) {
	for _, mode := range []struct {
		name    string
		status  int
		garbage bool
	}{{"503", http.StatusServiceUnavailable, false}, {"garbage", 0, true}} {
		t.Run(mode.name, func(t *testing.T) {
			k := newKey(t, jose.ES256, "k1")
			is := newIssuerServer(t, k)
			obs := &recorder{}
			v := newTestVerifier(t, obs, Provider{Name: "p", Issuer: is.URL()})
			p := v.providers[0]
			if err := p.keys.refresh(); err != nil {
				t.Fatal(err)
			}
			is.fail(mode.status, mode.garbage)
			if err := p.keys.refresh(); err == nil {
				t.Fatal("refresh of a failing endpoint = nil, want an error")
			}
			if got := obs.failures(); got != 1 {
				t.Errorf("observed failures = %d, want 1", got)
			}
			if _, err := verify(t, v, Request{Token: k.sign(t, claimsFor(is.URL()), nil)}); err != nil {
				t.Errorf("Verify with stale keys = %v, want nil", err)
			}
		})
	}
}

// TestNeverFetched: a provider whose keys were never fetched makes
// Verify fail with ErrUnavailable, not a refusal.
func TestNeverFetched(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	is := newIssuerServer(t, k)
	is.fail(http.StatusInternalServerError, false)
	v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: is.URL()})
	_, err := verify(t, v, Request{Token: k.sign(t, claimsFor(is.URL()), nil)})
	if !errorsIsUnavailable(err) || reasonOf(err) != 0 {
		t.Fatalf("Verify = %v, want ErrUnavailable", err)
	}
}

// TestJWKSFile reads keys from a file.
func TestJWKSFile(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	path := writeJWKS(t, k)
	v := newTestVerifier(t, nil, Provider{Name: "p", Issuer: "https://issuer.example", JWKSFile: path})
	if _, err := verify(t, v, Request{Token: k.sign(t, claimsFor("https://issuer.example"), nil)}); err != nil {
		t.Fatalf("Verify = %v", err)
	}
}

// TestCacheHit: the second verification of a token is answered by the
// cache.
func TestCacheHit(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	is := newIssuerServer(t, k)
	obs := &recorder{}
	v := newTestVerifier(t, obs, Provider{Name: "p", Issuer: is.URL()})
	tok := k.sign(t, claimsFor(is.URL()), nil)
	if _, err := verify(t, v, Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	if got, want := obs.last(), "p/ok/signature"; got != want {
		t.Errorf("first: observed %q, want %q", got, want)
	}
	v.cache.wait()
	if _, err := verify(t, v, Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	if got, want := obs.last(), "p/ok/cache"; got != want {
		t.Errorf("second: observed %q, want %q", got, want)
	}
}

// TestNewRejectsBadConfig names the field.
func TestNewRejectsBadConfig(t *testing.T) {
	for _, c := range []struct {
		p    Provider
		want string
	}{
		{Provider{Name: "p", Issuer: "https://i", Algorithms: []string{"HS256"}}, "providers[0].algorithms[0]"},
		{Provider{Name: "p", Issuer: "https://i", Algorithms: []string{"none"}}, "providers[0].algorithms[0]"},
		{Provider{Name: "p", Issuer: "https://i", Flavour: "x"}, "providers[0].flavour"},
		{Provider{Name: "p", Issuer: "http://example.com"}, "providers[0].issuer"},
		{Provider{Name: "p", Issuer: "https://i", JWKSURI: "https://i/j", JWKSFile: "/f"}, "jwks_uri and jwks_file"},
		{Provider{Name: "p"}, "providers[0].issuer"},
	} {
		_, err := New(testConfig(c.p))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", c.p, err, c.want)
		}
	}
}

// TestNewRefusesZeroValues: the defaults live in the configuration only,
// so a setting left zero (or negative) is an error naming the field, the
// rule and the configuration key, not a silent default. Zero clock skew
// and introspection cache TTL are values (none, not cached).
func TestNewRefusesZeroValues(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"CacheMaxCost", func(c *Config) { c.CacheMaxCost = 0 }, "verifier: Config.CacheMaxCost is 0, want more than 0 (configuration verifier.cache_max_cost)"},
		{"MaxTokenSize", func(c *Config) { c.MaxTokenSize = 0 }, "verifier: Config.MaxTokenSize is 0, want more than 0 (configuration verifier.max_token_size)"},
		{"RefreshInterval", func(c *Config) { c.RefreshInterval = 0 }, "verifier: Config.RefreshInterval is 0s, want more than 0 (configuration verifier.jwks_refresh_interval)"},
		{"MinRefreshInterval", func(c *Config) { c.MinRefreshInterval = 0 }, "verifier: Config.MinRefreshInterval is 0s, want more than 0 (configuration verifier.jwks_min_refresh_interval)"},
		{"IntrospectionCacheTTL", func(c *Config) { c.IntrospectionCacheTTL = -time.Second }, "verifier: Config.IntrospectionCacheTTL is -1s, want at least 0 (0: not cached) (configuration verifier.introspection_cache_ttl)"},
		{"ClockSkew", func(c *Config) { c.ClockSkew = -time.Second }, "verifier: Config.ClockSkew is -1s, want at least 0 (0: none) (configuration verifier.clock_skew)"},
		{"Timeout", func(c *Config) { c.Providers[0].Timeout = 0 }, "verifier: providers[0].timeout is 0s, want more than 0 (configuration providers[].timeout)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(Provider{Name: "p", Issuer: "https://i"})
			c.edit(&cfg)
			v, err := New(cfg)
			if err == nil || err.Error() != c.want {
				t.Fatalf("New: got error %v, want %q", err, c.want)
			}
			if v != nil {
				t.Fatalf("New: got a verifier with error %v, want none", err)
			}
		})
	}
	t.Run("KeySource MinRefreshInterval", func(t *testing.T) {
		_, err := NewKeySource(KeySourceConfig{Name: "sa", Issuer: "https://i"})
		if want := "KeySourceConfig.MinRefreshInterval is 0s, want more than 0"; err == nil || err.Error() != want {
			t.Fatalf("NewKeySource: got error %v, want %q", err, want)
		}
	})
}

// TestZeroSkewAndIntrospectionTTLKept: clock skew 0 means none and
// introspection cache TTL 0 means not cached, as the configuration
// documents them (New used to turn them into 30s and 5m).
func TestZeroSkewAndIntrospectionTTLKept(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	is := newIssuerServer(t, k)
	var hits atomic.Int64
	intro := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "client_id": "c1", "sub": "c1", "exp": time.Now().Add(time.Hour).Unix()})
	}))
	defer intro.Close()
	cfg := testConfig(Provider{Name: "p", Issuer: is.URL()},
		Provider{Name: "q", Introspection: &Introspection{URL: intro.URL, ClientID: "rs", ClientSecret: "s"}})
	cfg.ClockSkew, cfg.IntrospectionCacheTTL = 0, 0
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	// Expired 5 seconds ago: within the old 30s default skew, refused
	// with none.
	now := time.Now()
	tok := k.sign(t, with(claimsFor(is.URL()), "exp", now.Add(-5*time.Second).Unix(), "iat", now.Add(-time.Minute).Unix()), nil)
	if _, err := verify(t, v, Request{Token: tok}); reasonOf(err) != ReasonExpired {
		t.Errorf("Verify(expired 5s ago, skew 0): got %v, want expired", err)
	}
	for i := range 2 {
		if _, err := verify(t, v, Request{Token: "opaque", Provider: "q"}); err != nil {
			t.Fatalf("Verify(opaque) #%d: got %v, want nil", i+1, err)
		}
		v.cache.wait()
	}
	if got := hits.Load(); got != 2 {
		t.Errorf("introspection requests for 2 checks with TTL 0: got %d, want 2 (not cached)", got)
	}
}
