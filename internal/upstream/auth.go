package upstream

// This file is client authentication beyond a static secret: the
// Credential a broker-held client authenticates with, whose material
// (secret, signing keys, ready assertion, certificate) may be replaced at
// any time by whoever watches its files (internal/credential), and the
// per-attempt work each method needs (a new signed assertion, a fresh read
// of an assertion file, a transport presenting the client certificate).

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// The client authentication methods beyond client_secret_basic and
// client_secret_post.
const (
	// AuthPrivateKeyJWT sends client_assertion_type and a client_assertion
	// (RFC 7523 section 2.2, OpenID Connect Core section 9): a JWT the
	// broker signs with the client's key for every attempt, or a ready one
	// read from a file for every attempt.
	AuthPrivateKeyJWT AuthMethod = "private_key_jwt"
	// AuthTLSClient authenticates with a client certificate issued by a CA
	// the endpoint trusts (RFC 8705 section 2.1); client_id is sent in the
	// form.
	AuthTLSClient AuthMethod = "tls_client_auth"
	// AuthSelfSignedTLSClient authenticates with a self-signed client
	// certificate registered with the endpoint (RFC 8705 section 2.2);
	// client_id is sent in the form.
	AuthSelfSignedTLSClient AuthMethod = "self_signed_tls_client_auth"
)

// AssertionType is the client_assertion_type of private_key_jwt (RFC 7523
// section 2.2).
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// DefaultAssertionLifetime is the lifetime of a signed client assertion
// when Credential.AssertionLifetime is 0; MaxAssertionLifetime is the
// longest allowed.
const (
	DefaultAssertionLifetime = 60 * time.Second
	MaxAssertionLifetime     = 5 * time.Minute
)

// SigningAlgorithms are the JWS algorithms a client key may sign with.
var SigningAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256}

// SigningKey is one private key of a private_key_jwt client.
type SigningKey struct {
	// Key is the private key (*rsa.PrivateKey or *ecdsa.PrivateKey).
	Key any
	// KeyID is sent as the assertion's "kid" header when not empty.
	KeyID string
	// Algorithm is RS256, PS256 or ES256.
	Algorithm jose.SignatureAlgorithm
	// Thumbprint is the RFC 7638 SHA-256 thumbprint of the public key,
	// base64url: not secret, shown to operators.
	Thumbprint string
}

// Material is a client's secret material at one moment. Exactly the
// fields its Credential's Method and kind use are set.
type Material struct {
	// Secret is the client secret (client_secret_basic and _post).
	Secret secret.String
	// Signer is the key that signs assertions (private_key_jwt with a key
	// file): the newest key of the file.
	Signer *SigningKey
	// Certificate is the client certificate and its key (tls_client_auth,
	// self_signed_tls_client_auth).
	Certificate *tls.Certificate
	// CertThumbprint is the base64url SHA-256 of Certificate's leaf (the
	// value of cnf.x5t#S256 of tokens bound to it).
	CertThumbprint string
}

// Credential is how a broker-held client authenticates. Its Material is
// set by Set, at any time, from any goroutine: the next attempt of any
// fetch uses the new material. The zero Material is not usable; Fetch
// refuses a Credential whose material was never set.
type Credential struct {
	// Name is the client's configured name, for logs (never secret).
	Name string
	// Method is the client authentication method.
	Method AuthMethod
	// Binding identifies the credential's source for the cache key: the
	// method and the files or variable it is read from, never the
	// material, so that a rotation keeps the client's cache entries.
	Binding string
	// Files are the files the material comes from, for logs.
	Files []string
	// AssertionFile, for private_key_jwt without a key, is the file
	// holding a ready client assertion, read again for every attempt.
	AssertionFile string
	// Audience is the aud claim of signed assertions; "" means the
	// provider's token URL.
	Audience string
	// AssertionLifetime is how long a signed assertion is valid; 0 means
	// DefaultAssertionLifetime.
	AssertionLifetime time.Duration

	mat     atomic.Pointer[Material]
	rotated atomic.Bool // Set was called more than once
}

// Set makes m the credential's material.
func (c *Credential) Set(m Material) {
	if c.mat.Swap(&m) != nil {
		c.rotated.Store(true)
	}
}

// Current returns the material (nil when never set).
func (c *Credential) Current() *Material { return c.mat.Load() }

// Rotated reports whether the material was replaced since it was first
// set.
func (c *Credential) Rotated() bool { return c.rotated.Load() }

// authPlan is what one attempt sends to authenticate.
type authPlan struct {
	basicID, basicSecret string      // Authorization: Basic, when basicID != ""
	form                 [][2]string // form parameters
	hc                   *http.Client
	scrub                *scrubber
	certThumbprint       string
}

// localAuthError is a failure to prepare the authentication of a request:
// nothing was sent.
func (c *Client) localAuthError(kind error, desc string) *Error {
	return &Error{Kind: kind, Provider: c.p.Name, Local: true, Description: desc}
}

// plan prepares the authentication of one attempt of r. A credential
// whose material cannot be used yields a Local error; nothing is sent.
func (c *Client) plan(r Request, baseScrub *scrubber) (authPlan, *Error) {
	cr := r.Credential
	if cr == nil {
		p := authPlan{hc: c.hc, scrub: baseScrub}
		if c.p.AuthMethod == AuthPost {
			p.form = [][2]string{{"client_id", r.ClientID}, {"client_secret", r.ClientSecret.Reveal()}}
		} else {
			p.basicID, p.basicSecret = r.ClientID, r.ClientSecret.Reveal()
		}
		return p, nil
	}
	m := cr.Current()
	if m == nil {
		return authPlan{}, c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: credential not loaded", cr.Name))
	}
	switch cr.Method {
	case AuthBasic, AuthPost:
		if m.Secret.Reveal() == "" {
			return authPlan{}, c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: no client secret loaded", cr.Name))
		}
		p := authPlan{hc: c.hc, scrub: &scrubber{secret: m.Secret.Reveal()}}
		if cr.Method == AuthPost {
			p.form = [][2]string{{"client_id", r.ClientID}, {"client_secret", m.Secret.Reveal()}}
		} else {
			p.basicID, p.basicSecret = r.ClientID, m.Secret.Reveal()
		}
		return p, nil
	case AuthPrivateKeyJWT:
		var assertion string
		if cr.AssertionFile != "" {
			a, err := c.readAssertion(cr)
			if err != nil {
				return authPlan{}, err
			}
			assertion = a
		} else {
			if m.Signer == nil {
				return authPlan{}, c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: no signing key loaded", cr.Name))
			}
			a, err := c.sign(cr, m.Signer, r.ClientID)
			if err != nil {
				return authPlan{}, err
			}
			assertion = a
		}
		return authPlan{
			hc:    c.hc,
			scrub: &scrubber{secret: assertion},
			form: [][2]string{{"client_id", r.ClientID},
				{"client_assertion_type", AssertionType}, {"client_assertion", assertion}},
		}, nil
	case AuthTLSClient, AuthSelfSignedTLSClient:
		if m.Certificate == nil {
			return authPlan{}, c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: no client certificate loaded", cr.Name))
		}
		return authPlan{
			hc:             c.tlsClient(m),
			scrub:          baseScrub,
			form:           [][2]string{{"client_id", r.ClientID}},
			certThumbprint: m.CertThumbprint,
		}, nil
	}
	return authPlan{}, c.localAuthError(ErrRejected, fmt.Sprintf("client %q: unsupported auth method %q", cr.Name, cr.Method))
}

// sign returns a new client assertion for clientID (RFC 7523 section 3):
// iss = sub = clientID, aud = the configured audience or the token URL, a
// unique jti, iat = now, exp = now + the assertion lifetime.
func (c *Client) sign(cr *Credential, k *SigningKey, clientID string) (string, *Error) {
	opts := (&jose.SignerOptions{}).WithType("JWT")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Algorithm, Key: jose.JSONWebKey{Key: k.Key, KeyID: k.KeyID}}, opts)
	if err != nil {
		// The key was checked when loaded; this is not expected.
		return "", c.localAuthError(ErrRejected, fmt.Sprintf("client %q: cannot sign the client assertion with %s", cr.Name, k.Algorithm))
	}
	aud := cr.Audience
	if aud == "" {
		aud = c.tokenURL
	}
	life := cr.AssertionLifetime
	if life <= 0 {
		life = DefaultAssertionLifetime
	}
	now := c.now()
	claims := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{aud},
		ID:       rand.Text(),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(life)),
	}
	s, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", c.localAuthError(ErrRejected, fmt.Sprintf("client %q: cannot sign the client assertion with %s", cr.Name, k.Algorithm))
	}
	return s, nil
}

// quiet drops what it is given.
var quiet = slog.New(slog.DiscardHandler)

// MaxAssertionFileSize is the largest client_assertion_file read.
const MaxAssertionFileSize = 16 << 10

// readAssertion reads the client assertion file, as it is now. An
// assertion that is not a compact JWS, or whose exp has passed, is not
// sent: the platform that writes the file has not renewed it. Errors
// name the client and the file, never the content.
func (c *Client) readAssertion(cr *Credential) (string, *Error) {
	// The file is read for every request: its mode is warned about (when
	// others may read it, as projected volumes often allow) on the first
	// read only.
	logger := quiet
	if _, seen := c.assertionReads.LoadOrStore(cr.AssertionFile, struct{}{}); !seen {
		logger = c.log
	}
	data, err := secret.ReadPrivateFile(cr.AssertionFile, MaxAssertionFileSize, logger)
	if err != nil {
		return "", c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: client_assertion_file: %v", cr.Name, err))
	}
	a := strings.TrimSpace(string(data))
	clear(data)
	exp, ok := assertionExpiry(a)
	switch {
	case !ok:
		return "", c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: client_assertion_file %q does not hold a JWT with an exp claim", cr.Name, secret.AbsPath(cr.AssertionFile)))
	case !c.now().Before(exp):
		return "", c.localAuthError(ErrUnavailable, fmt.Sprintf("client %q: the assertion in client_assertion_file %q expired at %s and was not renewed", cr.Name, secret.AbsPath(cr.AssertionFile), exp.UTC().Format(time.RFC3339)))
	}
	return a, nil
}

// assertionExpiry reads the exp claim of a compact JWS without verifying
// it (the endpoint does).
func assertionExpiry(a string) (time.Time, bool) {
	tok, err := jwt.ParseSigned(a, allJWSAlgorithms)
	if err != nil {
		return time.Time{}, false
	}
	var cl jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&cl); err != nil || cl.Expiry == nil {
		return time.Time{}, false
	}
	return cl.Expiry.Time(), true
}

// allJWSAlgorithms are the algorithms an assertion file's JWT may name;
// the broker does not verify it, only reads its exp.
var allJWSAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// tlsClients holds one HTTP client per client certificate: connections
// authenticated with one certificate are never reused for another.
type tlsClients struct {
	mu sync.Mutex
	m  map[string]*http.Client // by certificate thumbprint
}

// tlsClient returns the HTTP client presenting m's certificate, made once
// per certificate. The clients of certificates no longer current are
// dropped and their idle connections closed.
func (c *Client) tlsClient(m *Material) *http.Client {
	c.tls.mu.Lock()
	defer c.tls.mu.Unlock()
	if hc, ok := c.tls.m[m.CertThumbprint]; ok {
		return hc
	}
	if c.tls.m == nil {
		c.tls.m = map[string]*http.Client{}
	}
	if len(c.tls.m) >= 16 {
		for k, old := range c.tls.m {
			old.CloseIdleConnections()
			delete(c.tls.m, k)
		}
	}
	var base *http.Transport
	if t, ok := c.base.(*http.Transport); ok && t != nil {
		base = t.Clone()
	} else {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	if base.TLSClientConfig == nil {
		base.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	cert := *m.Certificate
	base.TLSClientConfig.Certificates = []tls.Certificate{cert}
	base.TLSClientConfig.GetClientCertificate = nil
	hc := *c.hc
	hc.Transport = base
	if c.wrap != nil {
		hc.Transport = c.wrap(base)
	}
	c.tls.m[m.CertThumbprint] = &hc
	return &hc
}

// CertThumbprint is the RFC 8705 section 3.1 thumbprint of a DER
// certificate: base64url (no padding) of its SHA-256 digest.
func CertThumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// LeafThumbprint returns CertThumbprint of a certificate chain's leaf.
func LeafThumbprint(cert *tls.Certificate) (string, error) {
	if cert == nil || len(cert.Certificate) == 0 {
		return "", errors.New("no certificate")
	}
	if _, err := x509.ParseCertificate(cert.Certificate[0]); err != nil {
		return "", err
	}
	return CertThumbprint(cert.Certificate[0]), nil
}

// BoundThumbprint returns the cnf.x5t#S256 claim of a JWT access token
// (RFC 8705 section 3.1), or "" when the token is not a JWT or is not
// bound to a certificate. The token is not verified: the claim only tells
// the caller which certificate the token must be used with.
func BoundThumbprint(accessToken string) string {
	if strings.Count(accessToken, ".") != 2 {
		return ""
	}
	parts := strings.SplitN(accessToken, ".", 3)
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var cl struct {
		Cnf struct {
			X5t string `json:"x5t#S256"`
		} `json:"cnf"`
	}
	if json.Unmarshal(payload, &cl) != nil {
		return ""
	}
	return cl.Cnf.X5t
}

// noteRejected logs that the endpoint rejected a credential that was
// rotated: the client's name and files, never the material.
func (c *Client) noteRejected(cr *Credential, e *Error) {
	if cr == nil || !cr.Rotated() || e.Kind != ErrInvalidClient {
		return
	}
	c.log.Warn("token endpoint rejected the client's rotated credential (invalid_client); check the new secret, key or certificate",
		slog.String("provider", c.p.Name), slog.String("client", cr.Name),
		slog.Any("file", cr.Files), slog.String("auth_method", string(cr.Method)))
}
