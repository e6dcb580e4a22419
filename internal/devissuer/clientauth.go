package devissuer

// This file is client authentication beyond a secret: private_key_jwt
// (RFC 7523 section 2.2, OpenID Connect Core section 9) and mutual TLS
// (RFC 8705 section 2).

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AssertionType is the client_assertion_type of private_key_jwt.
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// MaxAssertionLifetime is the longest exp - iat an assertion may have.
const MaxAssertionLifetime = 5 * time.Minute

// assertionSkew is the clock skew allowed on an assertion's iat.
const assertionSkew = 5 * time.Second

// maxJTIs bounds the remembered assertion ids.
const maxJTIs = 100_000

// authenticateAny authenticates the client by whichever method the
// request uses: a client assertion, a secret (Basic header or form), or
// a TLS client certificate with client_id in the form. For the last it
// returns the certificate's thumbprint, which binds the token.
func (i *Issuer) authenticateAny(r *http.Request, form url.Values) (Client, string, *oauthError) {
	_, hasAssertion := form["client_assertion"]
	_, hasAssertionType := form["client_assertion_type"]
	_, hasSecret := form["client_secret"]
	switch {
	case hasAssertion || hasAssertionType:
		if len(r.Header.Values("Authorization")) > 0 || hasSecret {
			return Client{}, "", errInvalidClient("client authenticated with a client assertion and a secret; use exactly one method")
		}
		c, oerr := i.authenticateAssertion(r, form)
		return c, "", oerr
	case len(r.Header.Values("Authorization")) > 0 || hasSecret:
		c, oerr := i.authenticate(r, form)
		return c, "", oerr
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		return i.authenticateTLS(r, form)
	}
	c, oerr := i.authenticate(r, form)
	return c, "", oerr
}

// authenticateTLS authenticates the client named by client_id with the
// TLS client certificate of the connection (RFC 8705 section 2): its
// thumbprint must be one of the client's CertThumbprints.
func (i *Issuer) authenticateTLS(r *http.Request, form url.Values) (Client, string, *oauthError) {
	id := form.Get("client_id")
	if id == "" {
		return Client{}, "", errInvalidClient("tls_client_auth: client_id parameter is missing")
	}
	c, known := i.client(id)
	if !known {
		return Client{}, "", errInvalidClient("client authentication failed")
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	if !slices.Contains(c.CertThumbprints, thumb) {
		return c, "", errInvalidClient("client certificate is not registered for this client")
	}
	return c, thumb, nil
}

// authenticateAssertion checks a private_key_jwt client assertion: the
// type, a signature by one of the client's PublicKeys (by kid when the
// assertion names one), iss = sub = the client id (and client_id, when
// sent), aud naming the token endpoint or the issuer, exp in the future
// and at most MaxAssertionLifetime after iat, iat not in the future, and
// a jti never seen before.
func (i *Issuer) authenticateAssertion(r *http.Request, form url.Values) (Client, *oauthError) {
	if form.Get("client_assertion_type") != AssertionType {
		return Client{}, errInvalidClient("client_assertion_type must be " + AssertionType)
	}
	tok, err := jwt.ParseSigned(form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256})
	if err != nil {
		return Client{}, errInvalidClient("client_assertion is not a JWS signed with RS256, PS256 or ES256")
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return Client{}, errInvalidClient("client_assertion claims cannot be read")
	}
	id := unverified.Issuer
	if sent := form.Get("client_id"); sent != "" && sent != id {
		return Client{}, errInvalidClient("client_id parameter does not match the assertion's iss")
	}
	c, known := i.client(id)
	if !known {
		return Client{}, errInvalidClient("client authentication failed")
	}
	kid := ""
	if len(tok.Headers) > 0 {
		kid = tok.Headers[0].KeyID
	}
	var claims jwt.Claims
	verified := false
	for _, k := range c.PublicKeys {
		if kid != "" && k.KeyID != kid {
			continue
		}
		if tok.Claims(k.Key, &claims) == nil {
			verified = true
			break
		}
	}
	switch {
	case !verified && kid != "" && !slices.ContainsFunc(c.PublicKeys, func(k jose.JSONWebKey) bool { return k.KeyID == kid }):
		return c, errInvalidClient("client_assertion: unknown kid")
	case !verified:
		return c, errInvalidClient("client_assertion: signature does not verify with the client's keys")
	}
	now := time.Now()
	base := issuerURL(r)
	switch {
	case claims.Issuer != c.ID || claims.Subject != c.ID:
		return c, errInvalidClient("client_assertion: iss and sub must be the client id")
	case !claims.Audience.Contains(base+TokenPath) && !claims.Audience.Contains(base):
		return c, errInvalidClient("client_assertion: aud must name the token endpoint or the issuer")
	case claims.Expiry == nil || !now.Before(claims.Expiry.Time()):
		return c, errInvalidClient("client_assertion: expired (exp)")
	case claims.IssuedAt == nil || claims.IssuedAt.Time().After(now.Add(assertionSkew)):
		return c, errInvalidClient("client_assertion: iat is missing or in the future")
	case claims.NotBefore != nil && claims.NotBefore.Time().After(now.Add(assertionSkew)):
		return c, errInvalidClient("client_assertion: not valid yet (nbf)")
	case claims.Expiry.Time().Sub(claims.IssuedAt.Time()) > MaxAssertionLifetime:
		return c, errInvalidClient("client_assertion: exp is more than 5 minutes after iat")
	case claims.ID == "":
		return c, errInvalidClient("client_assertion: jti is missing")
	}
	if !i.firstUse(c.ID+"\x00"+claims.ID, claims.Expiry.Time(), now) {
		return c, errInvalidClient("client_assertion: jti was already used (replay)")
	}
	return c, nil
}

// firstUse records an assertion id until exp and reports whether it was
// not seen before.
func (i *Issuer) firstUse(jti string, exp, now time.Time) bool {
	i.jtiMu.Lock()
	defer i.jtiMu.Unlock()
	if i.jtis == nil {
		i.jtis = map[string]time.Time{}
	}
	if _, seen := i.jtis[jti]; seen {
		return false
	}
	if len(i.jtis) >= maxJTIs {
		for k, until := range i.jtis {
			if !now.Before(until) {
				delete(i.jtis, k)
			}
		}
		if len(i.jtis) >= maxJTIs {
			return false
		}
	}
	i.jtis[jti] = exp
	return true
}
