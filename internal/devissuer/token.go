package devissuer

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// Paths served by Handler.
const (
	// TokenPath is the token endpoint (RFC 6749 §3.2).
	TokenPath = "/oauth2/token"
	// JWKSPath serves the public signing key as a JSON Web Key Set.
	JWKSPath = "/.well-known/jwks.json"
	// MetadataPath serves authorization server metadata (RFC 8414).
	MetadataPath = "/.well-known/oauth-authorization-server"
	// OpenIDConfigurationPath serves the same metadata as an OpenID
	// discovery document, where verifiers look for jwks_uri.
	OpenIDConfigurationPath = "/.well-known/openid-configuration"
)

// TokenType is the "typ" header of issued access tokens (RFC 9068 §2.1).
const TokenType = "at+jwt"

// FallbackIssuer is the "iss" claim of tokens issued for a request that has
// no Host (only possible when the handler is called directly). Otherwise
// "iss" is the issuer's base URL, e.g. "http://127.0.0.1:43121".
const FallbackIssuer = "tokenbroker-dev"

// realm is the realm of the WWW-Authenticate challenge on 401 answers.
const realm = "tokenbroker-dev"

// Claims are the claims of an access token issued by the issuer, for tests
// that parse one (jwt.JSONWebToken.Claims(key, &claims)).
type Claims struct {
	jwt.Claims
	// ClientID is the client the token was issued to (RFC 9068 §2.2).
	ClientID string `json:"client_id"`
	// Scope is the space-separated list of granted scopes; omitted when none.
	Scope string `json:"scope,omitempty"`
	// TokenUse is always "access", as in Amazon Cognito's access tokens.
	TokenUse string `json:"token_use"`
	// Cnf binds the token to the client certificate the request was
	// authenticated with (RFC 8705 section 3.1); nil otherwise.
	Cnf *Confirmation `json:"cnf,omitempty"`
}

// Confirmation is the cnf claim of a certificate-bound token.
type Confirmation struct {
	// X5tS256 is the certificate's SHA-256 thumbprint, base64url.
	X5tS256 string `json:"x5t#S256"`
}

// tokenResponse is a successful token response (RFC 6749 §5.1).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
}

// oauthError is an error response (RFC 6749 §5.2). Descriptions hold only
// characters RFC 6749 allows there (%x20-21 / %x23-5B / %x5D-7E): values taken
// from the request are passed through sanitize, and secrets never appear.
type oauthError struct {
	status int
	code   string
	desc   string
}

func errInvalidRequest(format string, args ...any) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_request", fmt.Sprintf(format, args...)}
}

func errInvalidClient(format string, args ...any) *oauthError {
	return &oauthError{http.StatusUnauthorized, "invalid_client", fmt.Sprintf(format, args...)}
}

// sanitize makes a request value safe to echo in an error description: at
// most 64 bytes, and every byte RFC 6749 forbids there replaced by '?'.
func sanitize(s string) string {
	const max = 64
	truncated := len(s) > max
	if truncated {
		s = s[:max]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b[i] = '?'
		}
	}
	if truncated {
		return string(b) + "..."
	}
	return string(b)
}

// singleParams are the parameters that must not be repeated (RFC 6749 §3.2).
// audience and resource may be (RFC 8707 §2).
var singleParams = []string{"grant_type", "scope", "client_id", "client_secret", "client_assertion", "client_assertion_type"}

// serveToken is the token endpoint.
func (i *Issuer) serveToken(w http.ResponseWriter, r *http.Request) {
	i.requests.Add(1)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")

	c, resp, oerr := i.token(w, r)
	if oerr != nil {
		attrs := []any{"error", oerr.code, "status", oerr.status, "description", oerr.desc}
		if c.ID != "" {
			attrs = append(attrs, "client_id", c.ID)
		}
		i.log.Info("devissuer: token request rejected", attrs...)
		writeError(w, oerr)
		return
	}
	i.log.Info("devissuer: token issued",
		"client_id", c.ID, "scope", resp.Scope, "expires_in", resp.ExpiresIn)
	writeJSON(w, http.StatusOK, resp)
}

// token handles one token request. On error, the returned Client is set only
// if the request named a known client (so an unknown id, which might be a
// mistyped secret, is never logged).
func (i *Issuer) token(w http.ResponseWriter, r *http.Request) (Client, *tokenResponse, *oauthError) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return Client{}, nil, &oauthError{http.StatusMethodNotAllowed, "invalid_request",
			fmt.Sprintf("method %s is not allowed; the token endpoint takes POST", sanitize(r.Method))}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return Client{}, nil, errInvalidRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	if err := r.ParseForm(); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return Client{}, nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request",
				fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
		}
		return Client{}, nil, errInvalidRequest("request body is not a valid application/x-www-form-urlencoded form")
	}
	form := r.PostForm
	for _, name := range singleParams {
		if len(form[name]) > 1 {
			return Client{}, nil, errInvalidRequest("parameter %s must not be repeated (RFC 6749 section 3.2)", name)
		}
	}

	c, thumb, oerr := i.authenticateAny(r, form)
	if oerr != nil {
		return c, nil, oerr
	}

	switch gt := form.Get("grant_type"); gt {
	case "client_credentials":
	case "":
		return c, nil, errInvalidRequest("grant_type parameter is missing; it must be client_credentials")
	default:
		return c, nil, &oauthError{http.StatusBadRequest, "unsupported_grant_type",
			fmt.Sprintf("grant_type '%s' is not supported; only client_credentials is", sanitize(gt))}
	}

	scopes, oerr := grantScopes(c, form.Get("scope"))
	if oerr != nil {
		return c, nil, oerr
	}
	aud, oerr := audiences(form)
	if oerr != nil {
		return c, nil, oerr
	}

	resp, err := i.issue(r, c, scopes, aud, thumb)
	if err != nil {
		i.log.Error("devissuer: sign access token", "client_id", c.ID, "error", err)
		return c, nil, &oauthError{http.StatusInternalServerError, "server_error", "could not sign the access token"}
	}
	return c, resp, nil
}

// authenticate checks the client's credentials, sent either with
// client_secret_basic or with client_secret_post (RFC 6749 §2.3.1), never
// both. A client_id parameter next to an Authorization header is accepted
// only if it names the same client.
func (i *Issuer) authenticate(r *http.Request, form url.Values) (Client, *oauthError) {
	authz := r.Header.Values("Authorization")
	_, hasPostID := form["client_id"]
	_, hasPostSecret := form["client_secret"]

	var id, secret string
	switch {
	case len(authz) > 1:
		return Client{}, errInvalidClient("more than one Authorization header")
	case len(authz) == 1:
		if hasPostSecret {
			return Client{}, errInvalidClient("client authenticated with both client_secret_basic (Authorization header) and client_secret_post (client_secret parameter); use exactly one method")
		}
		var oerr *oauthError
		id, secret, oerr = parseBasic(authz[0])
		if oerr != nil {
			return Client{}, oerr
		}
		if hasPostID && form.Get("client_id") != id {
			return Client{}, errInvalidClient("client_id parameter does not match the client in the Authorization header")
		}
	case hasPostID || hasPostSecret:
		if !hasPostID {
			return Client{}, errInvalidClient("client_secret_post: client_id parameter is missing")
		}
		if !hasPostSecret {
			return Client{}, errInvalidClient("client_secret_post: client_secret parameter is missing")
		}
		id, secret = form.Get("client_id"), form.Get("client_secret")
	default:
		return Client{}, errInvalidClient("no client authentication: send an Authorization Basic header (client_secret_basic) or client_id and client_secret parameters (client_secret_post)")
	}

	c, known := i.client(id)
	// Compare fixed-size digests in constant time, so neither the secret's
	// content nor its length leaks through timing. An unknown client is
	// compared against the empty secret and then rejected, so it costs the
	// same.
	got, want := sha256.Sum256([]byte(secret)), sha256.Sum256([]byte(c.Secret))
	match := subtle.ConstantTimeCompare(got[:], want[:]) == 1
	if !known {
		return Client{}, errInvalidClient("client authentication failed")
	}
	if !match || c.Secret == "" {
		// A client registered without a secret never authenticates with
		// one, not even an empty one.
		return c, errInvalidClient("client authentication failed")
	}
	return c, nil
}

// parseBasic decodes an Authorization header of the Basic scheme whose user
// and password are the form-encoded client id and secret (RFC 6749 §2.3.1).
func parseBasic(header string) (id, secret string, oerr *oauthError) {
	scheme, creds, _ := strings.Cut(strings.TrimSpace(header), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", "", errInvalidClient("Authorization header must use the Basic scheme")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(creds))
	if err != nil {
		return "", "", errInvalidClient("Authorization header: Basic credentials are not valid base64")
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", errInvalidClient("Authorization header: Basic credentials lack the ':' between client id and secret")
	}
	if id, err = url.QueryUnescape(user); err != nil {
		return "", "", errInvalidClient("Authorization header: client id is not form-encoded (RFC 6749 section 2.3.1)")
	}
	if secret, err = url.QueryUnescape(pass); err != nil {
		return "", "", errInvalidClient("Authorization header: client secret is not form-encoded (RFC 6749 section 2.3.1)")
	}
	return id, secret, nil
}

// grantScopes returns the scopes to grant for the space-separated request
// parameter: each must be one of the client's; none means all of them.
// Repeated scopes are granted once; empty items (double spaces) are skipped.
func grantScopes(c Client, param string) ([]string, *oauthError) {
	var want []string
	for s := range strings.SplitSeq(param, " ") {
		if s != "" && !slices.Contains(want, s) {
			want = append(want, s)
		}
	}
	if len(want) == 0 {
		return slices.Clone(c.Scopes), nil
	}
	var bad []string
	for _, s := range want {
		if !slices.Contains(c.Scopes, s) {
			bad = append(bad, sanitize(s))
		}
	}
	if len(bad) > 0 {
		return nil, &oauthError{http.StatusBadRequest, "invalid_scope",
			fmt.Sprintf("scope not allowed for this client: %s", strings.Join(bad, " "))}
	}
	return want, nil
}

// audiences collects the audience (RFC 8693 style) and resource (RFC 8707)
// parameters, in order and without repeats, for the "aud" claim. A resource
// must be an absolute URI without a fragment.
func audiences(form url.Values) ([]string, *oauthError) {
	var aud []string
	add := func(v string) {
		if v != "" && !slices.Contains(aud, v) {
			aud = append(aud, v)
		}
	}
	for _, v := range form["audience"] {
		add(v)
	}
	for _, v := range form["resource"] {
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(v, "#") {
			return nil, &oauthError{http.StatusBadRequest, "invalid_target",
				fmt.Sprintf("resource '%s' must be an absolute URI without a fragment (RFC 8707 section 2)", sanitize(v))}
		}
		add(v)
	}
	return aud, nil
}

// issue signs an access token for c.
func (i *Issuer) issue(r *http.Request, c Client, scopes, aud []string, certThumbprint string) (*tokenResponse, error) {
	lifetimeSec := int64(time.Duration(i.lifetime.Load()) / time.Second)
	iat := time.Now().Unix()
	issuedAt, expiry := jwt.NumericDate(iat), jwt.NumericDate(iat+lifetimeSec)
	scope := strings.Join(scopes, " ")
	claims := Claims{
		Claims: jwt.Claims{
			Issuer:   issuerURL(r),
			Subject:  c.ID,
			Audience: jwt.Audience(aud),
			IssuedAt: &issuedAt,
			Expiry:   &expiry,
			ID:       rand.Text(),
		},
		ClientID: c.ID,
		Scope:    scope,
		TokenUse: "access",
	}
	if certThumbprint != "" {
		claims.Cnf = &Confirmation{X5tS256: certThumbprint}
	}
	tok, err := jwt.Signed(i.signer).Claims(claims).Serialize()
	if err != nil {
		return nil, err
	}
	return &tokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: lifetimeSec, Scope: scope}, nil
}

// issuerURL is the base URL the request reached the issuer at.
func issuerURL(r *http.Request) string {
	if r.Host == "" {
		return FallbackIssuer
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// serveJWKS serves the public signing key.
func (i *Issuer) serveJWKS(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(i.jwks)
}

// metadata is the authorization server metadata (RFC 8414 §2).
type metadata struct {
	Issuer                            string   `json:"issuer"`
	TokenEndpoint                     string   `json:"token_endpoint"`
	JWKSURI                           string   `json:"jwks_uri"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	GrantTypesSupported               []string `json:"grant_types_supported"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported"`
}

// serveMetadata serves the authorization server metadata.
func (i *Issuer) serveMetadata(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	base := issuerURL(r)
	writeJSON(w, http.StatusOK, metadata{
		Issuer:                            base,
		TokenEndpoint:                     base + TokenPath,
		JWKSURI:                           base + JWKSPath,
		ResponseTypesSupported:            []string{},
		GrantTypesSupported:               []string{"client_credentials"},
		TokenEndpointAuthMethodsSupported: []string{"client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"},
	})
}

// getOrHead answers 405 and returns false unless r is a GET or HEAD.
func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed; use GET", http.StatusMethodNotAllowed)
	return false
}

// writeError writes an RFC 6749 §5.2 error response. A 401 carries a Basic
// challenge, as RFC 6749 §5.2 and RFC 9110 §15.5.2 require.
func writeError(w http.ResponseWriter, e *oauthError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+realm+`", charset="UTF-8"`)
	}
	writeJSON(w, e.status, struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{e.code, e.desc})
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of strings and numbers are written here.
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
