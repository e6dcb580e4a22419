// Package devissuer is a small, self-contained OAuth 2.0 authorization server
// that only speaks the client-credentials grant (RFC 6749 §4.4). It backs
// `tokenbroker -dev` and the end-to-end tests of the whole product: a real
// HTTP token endpoint that issues ES256-signed JWT access tokens and
// publishes its public key as a JWKS, so tokens can be verified like real
// ones.
//
// It is not meant for production: the signing key is generated fresh by New
// and lives only in memory, and clients are configured in code.
//
// Routes served by Handler:
//
//	POST /oauth2/token                          the token endpoint
//	GET  /.well-known/jwks.json                 the public key (JWKS, RFC 7517)
//	GET  /.well-known/oauth-authorization-server server metadata (RFC 8414)
//	GET  /.well-known/openid-configuration       the same, for OpenID discovery
//
// Time is read with time.Now, so the issuer works inside testing/synctest
// bubbles (when driven without real sockets).
package devissuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// DefaultLifetime is the access token lifetime used when Config.Lifetime is
// zero.
const DefaultLifetime = 5 * time.Minute

// MaxBodyBytes is the largest token request body the endpoint reads; larger
// requests are refused with 413.
const MaxBodyBytes = 64 << 10

// shutdownGrace bounds how long Serve waits for in-flight requests after its
// context is done before it closes the remaining connections.
const shutdownGrace = 5 * time.Second

// Client is a client the issuer knows, with the credentials it authenticates
// with and the scopes it may be granted.
type Client struct {
	// ID is the client identifier. Required; unique within a Config. Any
	// characters are allowed (client_secret_basic carries it form-encoded).
	ID string
	// Secret is the client secret (client_secret_basic and _post). At
	// least one of Secret, PublicKeys and CertThumbprints is required. It
	// never appears in logs or error messages.
	Secret string
	// PublicKeys are the client's registered public keys: it may
	// authenticate with private_key_jwt (RFC 7523), a client assertion
	// signed by one of them (RS256, PS256 or ES256), found by the
	// assertion's kid when it has one.
	PublicKeys []jose.JSONWebKey
	// CertThumbprints are the RFC 8705 thumbprints (base64url SHA-256 of
	// the DER) of the client certificates it may authenticate with over
	// TLS (tls_client_auth, self_signed_tls_client_auth); its tokens are
	// then bound to the certificate (cnf.x5t#S256).
	CertThumbprints []string
	// Scopes are the scopes this client may get. Each must be a scope-token
	// as defined by RFC 6749 §3.3 (printable ASCII, no space, '"' or '\').
	// A request that omits `scope` is granted all of them.
	Scopes []string
}

// Config configures an Issuer.
type Config struct {
	// Lifetime is the access token lifetime. Zero means DefaultLifetime.
	// It must be at least one second; it is truncated to whole seconds,
	// since expires_in, iat and exp are whole seconds.
	Lifetime time.Duration
	// Clients are the clients the issuer knows. More can be added later with
	// AddClient.
	Clients []Client
	// Logger receives one line per token request (client id and outcome,
	// never a secret or token). Optional; nil discards.
	Logger *slog.Logger
}

// Issuer is an in-memory OAuth 2.0 client-credentials token endpoint. Create
// it with New; all methods are safe for concurrent use.
type Issuer struct {
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
	jwks   []byte // the marshalled public JWKS, served as is
	log    *slog.Logger

	lifetime atomic.Int64 // time.Duration, whole seconds
	requests atomic.Int64

	mu      sync.RWMutex
	clients map[string]Client

	jtiMu sync.Mutex
	jtis  map[string]time.Time // assertion ids seen, until their exp
}

// New validates cfg and returns an Issuer with a freshly generated ECDSA P-256
// signing key. The returned error names the offending Config field.
func New(cfg Config) (*Issuer, error) {
	lifetime := cfg.Lifetime
	switch {
	case lifetime == 0:
		lifetime = DefaultLifetime
	case lifetime < time.Second:
		return nil, fmt.Errorf("devissuer: Config.Lifetime: must be at least 1s or zero for the default %s, got %s", DefaultLifetime, cfg.Lifetime)
	}

	clients := make(map[string]Client, len(cfg.Clients))
	index := make(map[string]int, len(cfg.Clients))
	for n, c := range cfg.Clients {
		if err := validateClient(c); err != nil {
			return nil, fmt.Errorf("devissuer: Config.Clients[%d]%w", n, err)
		}
		if prev, dup := index[c.ID]; dup {
			return nil, fmt.Errorf("devissuer: Config.Clients[%d].ID: %q duplicates Config.Clients[%d].ID; client ids must be unique", n, c.ID, prev)
		}
		index[c.ID] = n
		clients[c.ID] = cloneClient(c)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devissuer: generate signing key: %w", err)
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ES256), Use: "sig"}
	thumb, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("devissuer: compute key id: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(thumb)
	pub.KeyID = kid

	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	if err != nil {
		return nil, fmt.Errorf("devissuer: marshal JWKS: %w", err)
	}

	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType(TokenType),
	)
	if err != nil {
		return nil, fmt.Errorf("devissuer: create signer: %w", err)
	}

	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	i := &Issuer{
		key:     key,
		kid:     kid,
		signer:  signer,
		jwks:    jwks,
		log:     log,
		clients: clients,
	}
	i.lifetime.Store(int64(lifetime.Truncate(time.Second)))
	return i, nil
}

// validateClient checks one client. Its error starts with the field path
// relative to the client (".ID: ..."), for the caller to prefix.
func validateClient(c Client) error {
	if c.ID == "" {
		return errors.New(".ID: must not be empty")
	}
	if c.Secret == "" && len(c.PublicKeys) == 0 && len(c.CertThumbprints) == 0 {
		return fmt.Errorf(".Secret: must not be empty (client %q) unless PublicKeys or CertThumbprints are set", c.ID)
	}
	for n, k := range c.PublicKeys {
		if !k.IsPublic() || !k.Valid() {
			return fmt.Errorf(".PublicKeys[%d]: must be a valid public key (client %q)", n, c.ID)
		}
	}
	for n, s := range c.Scopes {
		if !validScopeToken(s) {
			return fmt.Errorf(".Scopes[%d]: %q is not a scope-token (RFC 6749 §3.3: one or more printable ASCII characters other than space, '\"' and '\\')", n, s)
		}
	}
	return nil
}

// validScopeToken reports whether s matches RFC 6749 §3.3's
// scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x21 || b > 0x7e || b == '"' || b == '\\' {
			return false
		}
	}
	return true
}

func cloneClient(c Client) Client {
	c.Scopes = slices.Clone(c.Scopes)
	c.PublicKeys = slices.Clone(c.PublicKeys)
	c.CertThumbprints = slices.Clone(c.CertThumbprints)
	return c
}

// Handler returns the HTTP handler serving the token endpoint, the JWKS and
// the server metadata (see the package documentation for the routes).
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(TokenPath, i.serveToken)
	mux.HandleFunc(JWKSPath, i.serveJWKS)
	mux.HandleFunc(MetadataPath, i.serveMetadata)
	mux.HandleFunc(OpenIDConfigurationPath, i.serveMetadata)
	return mux
}

// Serve runs an HTTP server with Handler on l until ctx is done, then shuts
// it down gracefully (in-flight requests get a few seconds to finish) and
// returns nil. It returns an error if serving fails before that. Serve takes
// ownership of l and closes it.
func (i *Issuer) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           i.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(i.log.Handler(), slog.LevelWarn),
	}
	// unused tracks connections that have not carried a request yet:
	// http.Server.Shutdown counts them as active for their first 5
	// seconds, so a client's spare connection (dialed, never used) would
	// hold the shutdown for the whole grace period.
	var mu sync.Mutex
	unused := make(map[net.Conn]struct{})
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if s == http.StateNew {
			unused[c] = struct{}{}
		} else {
			delete(unused, c)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()

	select {
	case err := <-errc:
		// Serve failed on its own (e.g. the listener broke).
		return fmt.Errorf("devissuer: serve on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	mu.Lock()
	for c := range unused {
		_ = c.Close() // no request on it: nothing is cut off
	}
	mu.Unlock()

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err != nil {
		// In-flight requests did not finish in time: cut them off.
		_ = srv.Close()
	}
	<-errc // http.ErrServerClosed once Shutdown or Close has run
	if err != nil {
		return fmt.Errorf("devissuer: shutdown: %w", err)
	}
	return nil
}

// Requests returns the number of requests the token endpoint has received,
// whatever their outcome (including rejected and malformed ones).
func (i *Issuer) Requests() int64 { return i.requests.Load() }

// SetLifetime changes the lifetime of tokens issued from now on. d is
// truncated to whole seconds; values below one second become one second,
// and zero or negative values restore DefaultLifetime.
func (i *Issuer) SetLifetime(d time.Duration) {
	switch {
	case d <= 0:
		d = DefaultLifetime
	case d < time.Second:
		d = time.Second
	}
	i.lifetime.Store(int64(d.Truncate(time.Second)))
}

// AddClient adds c, replacing any client with the same ID (so a test can
// rotate a secret or change scopes). A client that fails the rules of
// Client's fields is not added; the reason is logged at error level (the
// secret never is).
func (i *Issuer) AddClient(c Client) {
	if err := validateClient(c); err != nil {
		i.log.Error("devissuer: AddClient: client not added", "error", "Client"+err.Error())
		return
	}
	c = cloneClient(c)
	i.mu.Lock()
	i.clients[c.ID] = c
	i.mu.Unlock()
}

// PublicKey returns the public half of the token signing key.
func (i *Issuer) PublicKey() *ecdsa.PublicKey { return &i.key.PublicKey }

// KeyID returns the key id ("kid") of the signing key, as set in every token
// header and in the JWKS. It is the RFC 7638 SHA-256 thumbprint of the key.
func (i *Issuer) KeyID() string { return i.kid }

// client returns the client with the given id.
func (i *Issuer) client(id string) (Client, bool) {
	i.mu.RLock()
	c, ok := i.clients[id]
	i.mu.RUnlock()
	return c, ok
}
