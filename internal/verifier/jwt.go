package verifier

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// allAlgorithms are the algorithms go-jose is asked to parse, so that a
// token signed with one a provider does not allow is refused as
// disallowed rather than malformed. Nothing is verified with an algorithm
// outside the provider's list.
var allAlgorithms = []jose.SignatureAlgorithm{
	jose.HS256, jose.HS384, jose.HS512,
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// tokenClaims are the claims read from a JWT or an introspection answer.
type tokenClaims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	Expiry    *jwt.NumericDate `json:"exp"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	ID        string           `json:"jti"`
	ClientID  string           `json:"client_id"`
	AZP       string           `json:"azp"`
	CID       string           `json:"cid"`
	Scope     scopeList        `json:"scope"`
	SCP       scopeList        `json:"scp"`
	TokenUse  string           `json:"token_use"`
}

// scopeList is a scope claim: a space-separated string or a list.
type scopeList []string

// UnmarshalJSON accepts "a b c" or ["a", "b", "c"].
func (s *scopeList) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		*s = strings.Fields(str)
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("scope must be a string or a list of strings")
	}
	*s = list
	return nil
}

// claims converts tc to Claims of provider p.
func (tc *tokenClaims) claims(p string) *Claims {
	c := &Claims{
		Provider: p,
		Issuer:   tc.Issuer,
		Subject:  tc.Subject,
		ClientID: tc.ClientID,
		Audience: []string(tc.Audience),
		TokenUse: tc.TokenUse,
		TokenID:  tc.ID,
		Scopes:   []string(tc.Scope),
	}
	if c.ClientID == "" {
		c.ClientID = tc.AZP
	}
	if c.ClientID == "" {
		c.ClientID = tc.CID
	}
	if len(c.Scopes) == 0 {
		c.Scopes = []string(tc.SCP)
	}
	if tc.Expiry != nil {
		c.Expiry = tc.Expiry.Time()
	}
	if tc.IssuedAt != nil {
		c.IssuedAt = tc.IssuedAt.Time()
	}
	return c
}

// ParseJWT parses a compact JWS without verifying it and returns its
// header and its claims. Refusals are *RefusedError values (malformed,
// disallowed algorithm, or a refused header); the errors never quote the
// token. It is the parser Verify uses, exported for fuzzing.
func ParseJWT(token string) (*jwt.JSONWebToken, *tokenClaims, error) {
	tok, err := jwt.ParseSigned(token, allAlgorithms)
	if err != nil {
		if alg := peekAlg(token); alg != "" && !slices.Contains(allAlgorithms, jose.SignatureAlgorithm(alg)) {
			return nil, nil, refuse(ReasonDisallowedAlgorithm, "signing algorithm %s is not allowed", safeAlg(alg))
		}
		return nil, nil, refuse(ReasonMalformed, "token is not a well-formed signed JWT")
	}
	if len(tok.Headers) != 1 {
		return nil, nil, refuse(ReasonMalformed, "token must have exactly one signature")
	}
	h := tok.Headers[0]
	switch {
	case h.JSONWebKey != nil:
		return nil, nil, refuse(ReasonMalformed, `token header "jwk" (an embedded key) is not accepted: keys come from the provider`)
	case h.ExtraHeaders["jku"] != nil:
		return nil, nil, refuse(ReasonMalformed, `token header "jku" is not accepted: keys come from the provider`)
	case h.ExtraHeaders["x5u"] != nil:
		return nil, nil, refuse(ReasonMalformed, `token header "x5u" is not accepted: keys come from the provider`)
	}
	if _, err := h.Certificates(x509.VerifyOptions{}); !errors.Is(err, jose.ErrMissingX5cHeader) {
		return nil, nil, refuse(ReasonMalformed, `token header "x5c" is not accepted: keys come from the provider`)
	}
	var tc tokenClaims
	if err := tok.UnsafeClaimsWithoutVerification(&tc); err != nil {
		return nil, nil, refuse(ReasonMalformed, "token claims are not a JSON object of the registered claim types")
	}
	return tok, &tc, nil
}

// peekAlg returns the "alg" of a compact JWS's header, "" if it cannot be
// read. It only classifies a token go-jose refused.
func peekAlg(token string) string {
	head, _, ok := strings.Cut(token, ".")
	if !ok || len(head) > 4096 {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return ""
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return h.Alg
}

// safeAlg returns alg quoted when it is a short token of letters, digits
// and '-', else a placeholder: it comes from the token.
func safeAlg(alg string) string {
	if len(alg) > 16 {
		return "(unrecognised)"
	}
	for _, r := range alg {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return "(unrecognised)"
		}
	}
	return `"` + alg + `"`
}

// verifyJWT verifies a signed token: provider by issuer, algorithm, key,
// signature, times and the provider's rules. The returned entry has the
// provider's name even on error, when one matched.
func (v *Verifier) verifyJWT(ctx context.Context, req Request) (*entry, error) {
	tok, tc, err := ParseJWT(req.Token)
	if err != nil {
		return nil, err
	}
	p := v.byIssuer[tc.Issuer]
	if p == nil {
		return nil, refuse(ReasonWrongIssuer, "token's issuer is not a configured provider's")
	}
	named := &entry{claims: &Claims{Provider: p.Name}}
	h := tok.Headers[0]
	alg := jose.SignatureAlgorithm(h.Algorithm)
	if !slices.Contains(p.algs, alg) {
		return named, refuse(ReasonDisallowedAlgorithm, "signing algorithm %s is not allowed for provider %q", safeAlg(h.Algorithm), p.Name)
	}
	if p.Flavour == FlavourOAuth2 && p.RequireJWTAccessTokenType {
		typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
		if t := strings.ToLower(typ); t != "at+jwt" && t != "application/at+jwt" {
			return named, refuse(ReasonWrongTokenUse, `token's typ header must be "at+jwt" (RFC 9068)`)
		}
	}
	keys, err := p.keys.lookup(ctx, h.KeyID)
	if err != nil {
		return named, err
	}
	if len(keys) == 0 {
		return named, refuse(ReasonUnknownKey, "provider %q does not publish the key the token names", p.Name)
	}
	var verified tokenClaims
	ok := false
	var kid string // of the key that verified: fresh looks it up later
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue
		}
		if err := tok.Claims(k.Key, &verified); err == nil {
			ok, kid = true, k.KeyID
			break
		}
	}
	if !ok {
		return named, refuse(ReasonBadSignature, "signature does not verify with provider %q's key", p.Name)
	}
	if err := v.checkTimes(&verified); err != nil {
		return named, err
	}
	c := verified.claims(p.Name)
	if err := checkRules(p, c); err != nil {
		return named, err
	}
	return &entry{claims: c, kid: &kid, until: c.Expiry.Add(v.skew)}, nil
}

// checkTimes checks exp (required), nbf and iat against the clock.
func (v *Verifier) checkTimes(tc *tokenClaims) error {
	now := v.now()
	if tc.Expiry == nil {
		return refuse(ReasonMalformed, `token has no "exp" claim`)
	}
	if exp := tc.Expiry.Time(); now.After(exp.Add(v.skew)) {
		return refuse(ReasonExpired, "token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if tc.NotBefore != nil && tc.NotBefore.Time().After(now.Add(v.skew)) {
		return refuse(ReasonNotYetValid, "token is not valid before %s", tc.NotBefore.Time().UTC().Format(time.RFC3339))
	}
	if tc.IssuedAt != nil && tc.IssuedAt.Time().After(now.Add(v.skew)) {
		return refuse(ReasonNotYetValid, "token is issued in the future (%s)", tc.IssuedAt.Time().UTC().Format(time.RFC3339))
	}
	return nil
}

// checkRules applies the provider's flavour rules to verified claims.
func checkRules(p *provider, c *Claims) error {
	if p.Flavour == FlavourCognito && c.TokenUse != "access" {
		return refuse(ReasonWrongTokenUse, `token_use must be "access" (an Amazon Cognito access token)`)
	}
	if len(p.ClientIDs) > 0 && !slices.Contains(p.ClientIDs, c.ClientID) {
		return refuse(ReasonWrongClient, "token's client is not one provider %q accepts", p.Name)
	}
	if p.Flavour == FlavourOAuth2 && len(p.Audiences) > 0 && !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(p.Audiences, a) }) {
		return refuse(ReasonWrongAudience, "token's audience is not one provider %q accepts", p.Name)
	}
	return nil
}
