package verifier

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/sync/singleflight"
)

// MaxIntrospectionSize is the largest introspection answer read, in bytes.
const MaxIntrospectionSize = 64 << 10

// introspector checks opaque tokens with RFC 7662 token introspection.
// Concurrent checks of one token make one request.
type introspector struct {
	v  *Verifier
	sf singleflight.Group
}

// check introspects req.Token (whose SHA-256 is sum) at the provider the
// request names, or the only provider with an introspection endpoint.
func (in *introspector) check(ctx context.Context, req Request, sum [32]byte) (*entry, error) {
	v := in.v
	var p *provider
	switch {
	case req.Provider != "":
		p = v.byName[req.Provider]
		if p.Introspection == nil {
			return &entry{claims: &Claims{Provider: p.Name}}, refuse(ReasonMalformed, "token is not a JWT, and provider %q has no introspection endpoint", p.Name)
		}
	case len(v.introspec) == 1:
		p = v.introspec[0]
	case len(v.introspec) == 0:
		return nil, refuse(ReasonMalformed, "token is not a well-formed JWT (and no provider has an introspection endpoint for opaque tokens)")
	default:
		return nil, refuse(ReasonMalformed, "token is not a JWT; name the provider whose introspection endpoint should check it")
	}
	named := &entry{claims: &Claims{Provider: p.Name}}
	ch := in.sf.DoChan(p.Name+"\x00"+hex.EncodeToString(sum[:]), func() (any, error) {
		// One caller giving up does not cancel the request for the others.
		ctx, cancel := context.WithTimeout(v.base, p.timeout)
		defer cancel()
		return in.introspect(ctx, p, req.Token)
	})
	var r singleflight.Result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return named, ctx.Err()
	}
	if r.Err != nil {
		return named, r.Err
	}
	tc := r.Val.(*tokenClaims)
	if p.Issuer != "" && tc.Issuer != "" && tc.Issuer != p.Issuer {
		return named, refuse(ReasonWrongIssuer, "introspection answer's issuer is not provider %q's", p.Name)
	}
	if tc.Expiry != nil {
		if err := v.checkTimes(tc); err != nil {
			return named, err
		}
	}
	c := tc.claims(p.Name)
	if c.Issuer == "" {
		c.Issuer = p.Issuer
	}
	// Cognito's introspection answers need not carry token_use: only that
	// rule is waived (the token is an access token by asking), the
	// client_ids and audience rules still apply.
	rc := *c
	if p.Flavour == FlavourCognito && rc.TokenUse == "" {
		rc.TokenUse = "access"
	}
	if err := checkRules(p, &rc); err != nil {
		return named, err
	}
	until := v.now().Add(v.introTTL)
	if !c.Expiry.IsZero() && c.Expiry.Before(until) {
		until = c.Expiry
	}
	return &entry{claims: c, until: until}, nil
}

// introspect posts the token to p's endpoint and returns the claims of an
// active token, a refusal for an inactive one, or an error wrapping
// ErrUnavailable. Neither the token nor the answer's body appears in an
// error.
func (in *introspector) introspect(ctx context.Context, p *provider, token string) (*tokenClaims, error) {
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	ic := p.Introspection
	sec := ic.secret()
	if ic.Post {
		form.Set("client_id", ic.ClientID)
		form.Set("client_secret", sec.Reveal())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Introspection.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, unavailable("provider %q: introspection request could not be built", p.Name)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !ic.Post {
		// RFC 6749 §2.3.1: the id and secret are form-encoded before Basic.
		req.SetBasicAuth(url.QueryEscape(ic.ClientID), url.QueryEscape(sec.Reveal()))
	}
	resp, err := in.v.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, unavailable("provider %q: introspection request timed out", p.Name)
		}
		return nil, unavailable("provider %q: introspection request failed", p.Name)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxIntrospectionSize+1))
	if err != nil {
		return nil, unavailable("provider %q: introspection answer could not be read", p.Name)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, unavailable("provider %q: introspection endpoint answered HTTP %d", p.Name, resp.StatusCode)
	}
	if len(body) > MaxIntrospectionSize {
		return nil, unavailable("provider %q: introspection answer is larger than %d bytes", p.Name, MaxIntrospectionSize)
	}
	var active struct {
		Active *bool `json:"active"`
	}
	if err := json.Unmarshal(body, &active); err != nil || active.Active == nil {
		return nil, unavailable("provider %q: introspection answer is not a JSON object with a boolean \"active\"", p.Name)
	}
	if !*active.Active {
		return nil, refuse(ReasonInactive, "provider %q's introspection endpoint says the token is not active", p.Name)
	}
	var tc tokenClaims
	if err := json.Unmarshal(body, &tc); err != nil {
		return nil, unavailable("provider %q: introspection answer's claims have the wrong types", p.Name)
	}
	return &tc, nil
}
