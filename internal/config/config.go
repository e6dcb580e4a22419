// Package config holds the broker's configuration: its defaults, the YAML
// file that overrides them, the environment and command-line flags that
// override the file, and Validate, which reports every problem at once with
// the key it concerns.
//
// The order of precedence is defaults < file < environment < flags. Parse
// builds a Config that way; Load reads only a file. Neither validates nor
// reads client secrets or keys: the caller adds what it must (for example
// the providers of -dev mode), then calls Validate, LoadSecrets and
// LoadKeys. Validate never reads a file.
//
// testdata/example.yaml is the reference file: every key, with its default
// or, for the security sections, an example that validates.
package config

import (
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Auth methods a Provider may use to authenticate the broker's clients at
// the token endpoint (RFC 6749 §2.3.1).
const (
	// AuthClientSecretBasic sends the client id and secret in an HTTP Basic
	// Authorization header.
	AuthClientSecretBasic = "client_secret_basic"
	// AuthClientSecretPost sends them as client_id and client_secret form
	// parameters.
	AuthClientSecretPost = "client_secret_post"
	// AuthPrivateKeyJWT authenticates with a signed JWT client assertion
	// (RFC 7523): signed by the broker with client_key_file, or read
	// ready from client_assertion_file.
	AuthPrivateKeyJWT = "private_key_jwt"
	// AuthTLSClient authenticates with a CA-issued client certificate
	// (RFC 8705 section 2.1).
	AuthTLSClient = "tls_client_auth"
	// AuthSelfSignedTLSClient authenticates with a self-signed client
	// certificate registered with the provider (RFC 8705 section 2.2).
	AuthSelfSignedTLSClient = "self_signed_tls_client_auth"
)

// MinCacheMaxCost is the smallest cache.max_cost Validate accepts.
const MinCacheMaxCost = 64 * KiB

// MaxCacheMaxCost is the largest cache.max_cost Validate accepts: millions
// of tokens, far beyond any fleet's need, and a bound on the cache's own
// bookkeeping.
const MaxCacheMaxCost = 16 * GiB

// MaxSecretSize is the largest client secret file LoadSecrets reads.
const MaxSecretSize = 512

// MaxKeyFileSize is the largest sealing.keys_file or cache.hmac_key_file
// LoadKeys reads.
const MaxKeyFileSize = 64 * 1024

// MinHMACKeySize is the least number of bytes the cache HMAC key must
// decode to.
const MinHMACKeySize = 32

// Values of TLS.ClientAuth: whether the gRPC listener asks callers for a
// certificate.
const (
	// ClientAuthNone asks for no client certificate.
	ClientAuthNone = "none"
	// ClientAuthRequest asks for one and verifies it against
	// tls.client_ca_file when presented; callers without one still connect.
	ClientAuthRequest = "request"
	// ClientAuthRequire refuses callers without a certificate that verifies
	// against tls.client_ca_file.
	ClientAuthRequire = "require"
)

// AnonymousIdentity is the identity of a caller that presented neither a
// client certificate nor an API key, when auth.allow_unauthenticated lets it
// in. No API key may carry this identity.
const AnonymousIdentity = "anonymous"

// MaxIdentityLength is the longest identity (or identity pattern) Validate
// accepts, in bytes: the SPIFFE ID limit.
const MaxIdentityLength = 2048

// Config is the broker's whole configuration.
type Config struct {
	// Listen is the gRPC listen address, host:port. Default "127.0.0.1:7443".
	Listen string `yaml:"listen"`
	// HTTPListen is the address of the HTTP listener: the drop-in OAuth 2.0
	// token endpoint (POST /oauth2/token, /oauth2/{provider}/token),
	// /metrics, /healthz and /readyz. It serves HTTPS when tls is set.
	// Default "127.0.0.1:7080"; "" turns it off.
	HTTPListen string `yaml:"http_listen"`
	// HTTPDefaultProvider is the provider of POST /oauth2/token. Default
	// "": the only provider, when exactly one is configured.
	HTTPDefaultProvider string `yaml:"http_default_provider"`
	// Cache tunes the token cache and the refresh schedule.
	Cache Cache `yaml:"cache"`
	// Providers are the token endpoints callers may name.
	Providers []Provider `yaml:"providers"`
	// Clients are the credentials the broker holds on its callers' behalf.
	Clients []Client `yaml:"clients"`
	// Passthrough lets callers present their own client credentials
	// (the API Gateway model). Default false.
	Passthrough bool `yaml:"passthrough"`
	// Server tunes the gRPC server.
	Server Server `yaml:"server"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// Metrics configures the Prometheus metrics' optional labels.
	Metrics Metrics `yaml:"metrics"`
	// TLS configures TLS (and mTLS) for the gRPC listener. Without a
	// cert_file the listener speaks plaintext (the default).
	TLS TLS `yaml:"tls"`
	// Auth configures how callers without a client certificate are
	// authenticated.
	Auth Auth `yaml:"auth"`
	// InsecureAllowRemote allows plaintext (no tls) on a listen or
	// admin.listen address that is not loopback. Default false: such a
	// configuration is refused.
	InsecureAllowRemote bool `yaml:"insecure_allow_remote"`
	// Policy grants identities the use of broker-held clients, scopes and
	// passthrough. Empty (the default): every authenticated identity may use
	// everything. Otherwise whatever no rule grants is denied.
	Policy []PolicyRule `yaml:"policy"`
	// Admin configures who may call AdminService, and where.
	Admin Admin `yaml:"admin"`
	// Sealing configures the keys that seal cached tokens (AES-256-GCM).
	Sealing Sealing `yaml:"sealing"`
	// Shared configures the Redis tier that replicas share. Default: none.
	Shared Shared `yaml:"shared"`
	// Verifier tunes token verification for resource servers
	// (TokenVerifierService, Envoy ext_authz).
	Verifier Verifier `yaml:"verifier"`
	// HTTPMaxBodyBytes bounds the body of a token request on the HTTP
	// listener; a longer one is refused with 413. Default 64KiB; from 1KiB
	// to 1MiB.
	HTTPMaxBodyBytes ByteSize `yaml:"http_max_body_bytes"`
	// SDS configures the Secret Discovery Service for Envoy sidecars.
	// Default off.
	SDS SDS `yaml:"sds"`
	// SDSSecrets are the secret names SDS serves, each a broker-held
	// client's token. Default none.
	SDSSecrets []SDSSecret `yaml:"sds_secrets"`
	// Dev runs the broker in development mode (an embedded token endpoint).
	// It is set by the -dev flag only, never by the file.
	Dev bool `yaml:"-"`
	// DevLifetime is the lifetime of the tokens the -dev token endpoint
	// issues (default 5m). It is set by the -dev-lifetime flag only.
	DevLifetime Duration `yaml:"-"`
	// DevIssuer, set by the -dev-issuer flag only, makes the process serve
	// nothing but the development token endpoint, on this loopback
	// address: a token endpoint that several replicas on one machine can
	// share. Its client is "demo-client", with the secret from
	// $TOKENBROKER_DEV_SECRET.
	DevIssuer string `yaml:"-"`
	// DevSecret is the client secret of the -dev and -dev-issuer token
	// endpoints' client, from $TOKENBROKER_DEV_SECRET (read by Parse).
	// Empty: -dev makes a random one; -dev-issuer refuses to start.
	DevSecret secret.String `yaml:"-"`
}

// Cache tunes the token cache and when tokens are refreshed.
type Cache struct {
	// MaxCost bounds the memory the cached tokens may use. Default 64MiB,
	// at least MinCacheMaxCost (64KiB), at most MaxCacheMaxCost (16GiB).
	MaxCost ByteSize `yaml:"max_cost"`
	// RefreshFraction is the fraction of a token's lifetime after which it
	// is refreshed at the latest, so a subscriber's token always keeps at
	// least 1 − RefreshFraction of its life. Default 0.75; must be in
	// (0, 1).
	RefreshFraction float64 `yaml:"refresh_fraction"`
	// RefreshJitter spreads refresh points uniformly over the
	// RefreshJitter × lifetime before RefreshFraction, so that tokens issued
	// together are not refreshed together. Default 0.05; must be in
	// [0, 0.5), and RefreshFraction − RefreshJitter must stay above 0.
	RefreshJitter float64 `yaml:"refresh_jitter"`
	// MinRemaining is the least remaining life of a token served to a
	// caller. Default 30s; must be >= 0.
	MinRemaining Duration `yaml:"min_remaining"`
	// NegativeTTL is how long a non-retryable upstream answer (such as
	// invalid_client) is remembered. Default 5s; must be >= 0; 0 disables.
	NegativeTTL Duration `yaml:"negative_ttl"`
	// FetchTimeout is the deadline of one shared upstream fetch, retries
	// included. Default 30s; must be > 0.
	FetchTimeout Duration `yaml:"fetch_timeout"`
	// RefreshRetryBackoff is the backoff ceiling before the first retry of
	// a failed background refresh; it doubles with each failure up to
	// RefreshRetryBackoffMax, and the wait is uniformly random below it
	// (full jitter). Default 1s; must be > 0.
	RefreshRetryBackoff Duration `yaml:"refresh_retry_backoff"`
	// RefreshRetryBackoffMax is the largest backoff ceiling of failed
	// background refreshes. Default 1m; must be >= RefreshRetryBackoff.
	RefreshRetryBackoffMax Duration `yaml:"refresh_retry_backoff_max"`
	// HMACKeyFile is a file holding the key of the HMAC that derives cache
	// keys, in base64 (standard or URL-safe alphabet, padding optional,
	// surrounding white space ignored), decoding to at least MinHMACKeySize
	// bytes. Replicas that share a cache tier need the same key. At most
	// one of HMACKeyFile and HMACKeyEnv may be set; with neither (the
	// default) a random key is made per process. Load resolves a relative
	// path against the directory of the configuration file; LoadKeys reads
	// it.
	HMACKeyFile string `yaml:"hmac_key_file"`
	// HMACKeyEnv is the name of an environment variable holding the HMAC
	// key, written as for HMACKeyFile. Default "".
	HMACKeyEnv string `yaml:"hmac_key_env"`
}

// Provider is a token endpoint. A key the file omits takes its value from
// DefaultProvider.
type Provider struct {
	// Name is what callers and clients call the provider: 1-63 characters
	// of [a-z0-9_-], starting with a letter or digit; unique.
	Name string `yaml:"name"`
	// TokenURL is the token endpoint: an absolute https URL (http only for
	// loopback hosts), without user info or fragment.
	TokenURL string `yaml:"token_url"`
	// Verify, when set, lets the broker verify the provider's access
	// tokens for resource servers (VerifyToken, Envoy ext_authz): see
	// ProviderVerify. Default none.
	Verify *ProviderVerify `yaml:"verify"`
	// AuthMethod is how its clients authenticate unless a client says
	// otherwise: AuthClientSecretBasic (default), AuthClientSecretPost,
	// AuthPrivateKeyJWT, AuthTLSClient or AuthSelfSignedTLSClient.
	// Pass-through credentials are secrets: they are sent with
	// client_secret_post when it is AuthClientSecretPost, else with
	// client_secret_basic.
	AuthMethod string `yaml:"auth_method"`
	// Parameters are form parameters added to every token request to the
	// endpoint (for example Auth0's audience is the request's own field;
	// provider-specific extensions go here): at most 16, names of
	// [A-Za-z0-9_.-] that the broker does not set itself, values of at
	// most 1024 printable ASCII bytes. A client's parameters of the same
	// name win. Every parameter is part of the cache key. Default none.
	Parameters map[string]string `yaml:"parameters,omitempty"`
	// Timeout bounds one HTTP request to the endpoint. Default 10s; > 0.
	Timeout Duration `yaml:"timeout"`
	// RateLimit is the sustained request budget, in requests per second.
	// Default 100; must be finite and > 0.
	RateLimit float64 `yaml:"rate_limit"`
	// Burst is how many requests may exceed RateLimit at once. Default 20;
	// must be >= 1.
	Burst int `yaml:"burst"`
	// PassthroughShare is the largest fraction of RateLimit and Burst that
	// requests with caller-presented (pass-through) credentials may spend
	// together; the rest is kept for broker-held clients. Default 0.5; must
	// be > 0 and <= 1.
	PassthroughShare float64 `yaml:"passthrough_share"`
	// PassthroughCallerShare is the largest fraction of the pass-through
	// budget one caller identity may spend (every anonymous caller is one
	// identity). Default 0.25; must be > 0 and <= 1.
	PassthroughCallerShare float64 `yaml:"passthrough_caller_share"`
	// PassthroughClientShare is the largest fraction of the pass-through
	// budget one presented client id may spend. Default 0.25; must be > 0
	// and <= 1.
	PassthroughClientShare float64 `yaml:"passthrough_client_share"`
	// FleetRateLimit is the request budget of the whole fleet of replicas,
	// in requests per second, kept in the shared Redis tier (Cognito: about
	// 150 per account and region, shared by every application). 0: none,
	// each replica only has its own rate_limit. Needs shared.redis; must
	// be finite and >= 0.
	FleetRateLimit float64 `yaml:"fleet_rate_limit"`
	// FleetBurst is how many requests the fleet may send at once above
	// FleetRateLimit. Default 10; must be >= 1.
	FleetBurst int `yaml:"fleet_burst"`
	// FleetLocalShare is the fraction of FleetRateLimit and FleetBurst one
	// replica spends alone while Redis is unreachable, and the rate its
	// refresh smoothing plans for: at most 1 / the number of replicas.
	// Default 0.25; must be > 0 and <= 1.
	FleetLocalShare float64 `yaml:"fleet_local_share"`
	// PricePer1000Requests is what the provider bills per 1,000 token
	// requests (Cognito M2M: see its price list), for the estimated cost
	// saved that metrics and tokenbrokerctl stats show. 0: not shown;
	// must be finite and >= 0.
	PricePer1000Requests float64 `yaml:"price_per_1000_requests"`
	// DefaultLifetime is the lifetime assumed for a token whose response
	// has no expires_in. Default 1h; must be > 0.
	DefaultLifetime Duration `yaml:"default_lifetime"`
	// MaxAttempts is how many HTTP requests one upstream fetch makes at
	// most, the first included, when the endpoint throttles or fails
	// transiently. Default 4; from 1 to 10.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryBackoff is the backoff ceiling before the first retry within one
	// fetch; it doubles with each retry up to RetryBackoffMax, and the wait
	// is uniformly random below it (full jitter), or the endpoint's
	// Retry-After when longer. Default 100ms; must be > 0.
	RetryBackoff Duration `yaml:"retry_backoff"`
	// RetryBackoffMax is the largest backoff ceiling within one fetch.
	// Default 5s; must be >= RetryBackoff.
	RetryBackoffMax Duration `yaml:"retry_backoff_max"`
}

// Client is a set of client credentials the broker holds. Its secret is read
// from exactly one of a file or an environment variable by LoadSecrets.
type Client struct {
	// Name is what callers call the client; same rules as Provider.Name;
	// unique.
	Name string `yaml:"name"`
	// Provider is the Name of the provider the credentials belong to.
	Provider string `yaml:"provider"`
	// ClientID is the OAuth 2.0 client id: 1-128 printable ASCII
	// characters, no spaces.
	ClientID string `yaml:"client_id"`
	// ClientSecretFile is a file holding the client secret (one trailing
	// newline is ignored). Load resolves a relative path against the
	// directory of the configuration file.
	ClientSecretFile string `yaml:"client_secret_file"`
	// ClientSecretEnv is the name of an environment variable holding the
	// client secret.
	ClientSecretEnv string `yaml:"client_secret_env"`
	// AuthMethod is how the client authenticates; "" (the default) means
	// its provider's auth_method. The secret methods need exactly one of
	// client_secret_file and client_secret_env; AuthPrivateKeyJWT exactly
	// one of client_key_file and client_assertion_file; the TLS methods
	// client_cert_file and client_key_file.
	AuthMethod string `yaml:"auth_method"`
	// ClientKeyFile is, for AuthPrivateKeyJWT, a file of private keys that
	// sign client assertions: PEM blocks (PKCS #8, PKCS #1 or SEC 1) or a
	// JWK or JWK set; the last key in the file is the newest and signs.
	// For the TLS methods it is the PEM private key of client_cert_file.
	// Load resolves a relative path against the configuration file's
	// directory. Watched: a change is used by the next token request.
	ClientKeyFile string `yaml:"client_key_file"`
	// ClientKeyID is the kid header of the assertions; default "": the
	// JWK's own kid, or none.
	ClientKeyID string `yaml:"client_key_id"`
	// ClientKeyAlgorithm signs the assertions: RS256, PS256 or ES256;
	// default "": the JWK's alg, else RS256 for an RSA key, ES256 for a
	// P-256 key.
	ClientKeyAlgorithm string `yaml:"client_key_algorithm"`
	// AssertionAudience is the aud claim of signed assertions; default "":
	// the provider's token_url (some providers want their issuer).
	AssertionAudience string `yaml:"assertion_audience"`
	// AssertionLifetime is how long a signed assertion is valid: > 0 and
	// at most 5m; default 0: 60s.
	AssertionLifetime Duration `yaml:"assertion_lifetime"`
	// ClientAssertionFile is, for AuthPrivateKeyJWT, a file holding a
	// ready client assertion (a JWT) that a platform writes and renews,
	// read again for every token request. Load resolves a relative path.
	ClientAssertionFile string `yaml:"client_assertion_file"`
	// ClientCertFile is, for the TLS methods, the PEM client certificate
	// chain presented to the token endpoint. Load resolves a relative
	// path. Watched with client_key_file.
	ClientCertFile string `yaml:"client_cert_file"`
	// Parameters are form parameters added to this client's token
	// requests, over its provider's; same rules as Provider.Parameters.
	Parameters map[string]string `yaml:"parameters,omitempty"`
	// AllowedParameters are the names of the form parameters a caller may
	// pass with a request for this client (at most 16 parameters a
	// request, values of at most 1024 printable ASCII bytes). Default
	// none.
	AllowedParameters []string `yaml:"allowed_parameters,omitempty"`
	// Secret is the client secret, filled by LoadSecrets; never in the file.
	Secret secret.String `yaml:"-"`
	// Credential is the client's credential with its current material,
	// filled by LoadSecrets (every method); never in the file.
	Credential *upstream.Credential `yaml:"-"`
}

// Server tunes the gRPC server.
type Server struct {
	// MaxConcurrentStreams bounds the concurrent streams (RPCs) per client
	// connection. Default 1000; must be from 1 to 4294967295.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// ShutdownTimeout bounds a graceful shutdown; after it, remaining RPCs
	// are cut off. Default 10s; must be > 0.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// KeepaliveMinTime is the shortest keepalive ping interval a client may
	// use; clients that ping more often are disconnected. Default 30s;
	// must be >= 0.
	KeepaliveMinTime Duration `yaml:"keepalive_min_time"`
	// Reflection enables the gRPC server reflection service. Default true.
	Reflection bool `yaml:"reflection"`
	// MaxConnectionAge is how long a client connection may live before the
	// server asks the client to reconnect, so that long-lived WatchToken
	// subscribers spread over the replicas (gRPC adds ±10% jitter).
	// Default 30m; must be >= 1s.
	MaxConnectionAge Duration `yaml:"max_connection_age"`
	// MaxConnectionAgeGrace is how long calls may go on once a connection
	// reached MaxConnectionAge, before it is closed; watch streams still
	// open then end with UNAVAILABLE and are reopened by their clients.
	// Default 1m; must be > 0.
	MaxConnectionAgeGrace Duration `yaml:"max_connection_age_grace"`
	// MaxWatchesPerCaller is the most concurrent WatchToken streams one
	// caller (for now: one peer IP address) may hold. Default 1000; must
	// be >= 1.
	MaxWatchesPerCaller int `yaml:"max_watches_per_caller"`
	// WatchOpensPerSecond is the sustained rate at which one caller may
	// open WatchToken streams. Default 50; must be finite and > 0.
	WatchOpensPerSecond float64 `yaml:"watch_opens_per_second"`
	// WatchOpenBurst is how many WatchToken streams one caller may open at
	// once above WatchOpensPerSecond. Default 100; must be >= 1.
	WatchOpenBurst int `yaml:"watch_open_burst"`
	// MaxHeaderListSize bounds the metadata (HTTP/2 header list) a client
	// may send with one call; it is checked before authentication, and
	// larger header lists are refused. Default 16KiB; from 1KiB to 1MiB.
	MaxHeaderListSize ByteSize `yaml:"max_header_list_size"`
}

// Log configures logging.
type Log struct {
	// Level is the least severity logged: debug, info (default), warn or
	// error.
	Level string `yaml:"level"`
	// Format is the log line format: json (default) or text.
	Format string `yaml:"format"`
	// Access says which calls get an access-log line at info: "failures"
	// (default: every call that did not succeed; successful calls are
	// logged at debug, so log.level debug shows them too) or "all" (one
	// line per call). Failures are logged either way.
	Access string `yaml:"access"`
}

// Metrics configures the optional labels of the Prometheus metrics. Both
// are off by default, which keeps every label's values bounded by the
// configuration; each records at most 100 distinct values (further ones
// are recorded as "_other").
type Metrics struct {
	// ClientIDLabel adds a client_id label (the OAuth client id, not a
	// secret) to tokenbroker_upstream_request_duration_seconds.
	ClientIDLabel bool `yaml:"client_id_label"`
	// KeyIDLabel adds a key_id label (the cache entry's non-secret id) to
	// tokenbroker_upstream_request_duration_seconds.
	KeyIDLabel bool `yaml:"key_id_label"`
}

// TLS configures TLS for the gRPC listener (and admin.listen). It is on when
// CertFile is set. Load resolves relative paths against the directory of the
// configuration file; Validate does not read the files.
type TLS struct {
	// CertFile is the server's PEM certificate chain; the listener reloads
	// it when the file changes. Default "" (plaintext). CertFile and KeyFile
	// must be set together.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile. Default "".
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of the CAs that client certificates must
	// chain to (mTLS). Default ""; needs CertFile.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is whether callers are asked for a certificate:
	// ClientAuthNone (default), ClientAuthRequest (verified when presented)
	// or ClientAuthRequire. The last two need ClientCAFile. A caller's
	// identity is its certificate's URI SAN (a SPIFFE ID), else its first
	// DNS SAN.
	ClientAuth string `yaml:"client_auth"`
}

// Enabled reports whether the listener serves TLS (CertFile is set).
func (t TLS) Enabled() bool { return t.CertFile != "" }

// Auth configures the authentication of callers that do not present a
// client certificate.
type Auth struct {
	// APIKeys are the bearer keys callers may present as "authorization:
	// Bearer <key>" metadata. The file holds only their SHA-256 digests.
	// Default none.
	APIKeys []APIKey `yaml:"api_keys"`
	// AllowUnauthenticated accepts callers with neither a certificate nor
	// an API key, under the identity AnonymousIdentity. Default false.
	// Unless it is set (or in -dev mode), Validate demands a way to
	// authenticate callers: tls.client_auth: require or auth.api_keys.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
	// Kubernetes accepts callers' projected Kubernetes service-account
	// tokens (a bearer value shaped like a JWT), verified offline, as the
	// identity "k8s:NAMESPACE:SERVICEACCOUNT". Off unless IssuerURL is set.
	Kubernetes KubernetesAuth `yaml:"kubernetes"`
}

// KubernetesAuth configures service-account token authentication. The
// keys are cached and refreshed with verifier.jwks_refresh_interval and
// verifier.jwks_min_refresh_interval.
type KubernetesAuth struct {
	// IssuerURL is the cluster's service-account issuer, the exact "iss"
	// of its tokens (kubectl get --raw /.well-known/openid-configuration).
	// Without JWKSFile the keys are found by OpenID discovery under it, so
	// it must then be an https URL (http only for loopback hosts).
	// Default "": service-account tokens are not accepted.
	IssuerURL string `yaml:"issuer_url"`
	// JWKSFile holds the issuer's keys (kubectl get --raw
	// /openid/v1/jwks), read instead of discovery; reloaded with the
	// key refreshes. Relative to the configuration file. Default "".
	JWKSFile string `yaml:"jwks_file"`
	// Audience must be one of a token's audiences (the projected volume's
	// audience). Default "tokenbroker".
	Audience string `yaml:"audience"`
	// Leeway is the tolerance of the exp, nbf and iat checks. Default
	// 30s; from 0 to 5m.
	Leeway Duration `yaml:"leeway"`
}

// Enabled reports whether service-account tokens are accepted.
func (k KubernetesAuth) Enabled() bool { return k.IssuerURL != "" }

// APIKey is one bearer API key, known by its digest.
type APIKey struct {
	// Identity is the identity of callers presenting the key: 1-2048
	// printable ASCII characters without spaces or '*', not
	// AnonymousIdentity; unique among the keys.
	Identity string `yaml:"identity"`
	// SHA256 is the SHA-256 digest of the key, as 64 hexadecimal
	// characters (either case); unique among the keys.
	SHA256 string `yaml:"sha256"`
}

// PolicyRule grants an identity, or a set of identities, the use of
// broker-held clients, scopes and passthrough. Rules add up: a caller may do
// what any rule matching its identity grants.
type PolicyRule struct {
	// Identity is the identity the rule applies to: an exact identity, a
	// prefix ending in "/*" (matching every identity that starts with what
	// precedes the '*'), or "*" (every authenticated identity). 1-2048
	// printable ASCII characters without spaces; '*' only as described.
	Identity string `yaml:"identity"`
	// Clients are the broker-held clients the identity may use: names of
	// configured clients, or "*" for all of them. Default none.
	Clients []string `yaml:"clients"`
	// Scopes are the scopes the identity may ask for (the scopes of a
	// request must be a subset): scope tokens (printable ASCII without
	// spaces, '"' or '\'), or "*" for any scope. Default none.
	Scopes []string `yaml:"scopes"`
	// Passthrough lets the identity present its own client credentials
	// (it has effect only with the top-level passthrough on). Default
	// false.
	Passthrough bool `yaml:"passthrough"`
	// Verify lets the identity verify tokens (TokenVerifierService and
	// the Envoy ext_authz Check). Default false.
	Verify bool `yaml:"verify"`
}

// Admin configures AdminService.
type Admin struct {
	// Identities may call AdminService; each entry follows the rule of
	// PolicyRule.Identity. Default none: no caller may (in -dev mode the
	// service is open).
	Identities []string `yaml:"identities"`
	// Listen is an optional separate listener for AdminService, which is
	// then not served on the main listener: "unix:/absolute/path" (a unix
	// socket, at most 107 bytes of path) or host:port (plaintext on a
	// non-loopback host needs insecure_allow_remote, as for listen; it
	// must differ from listen). Default "": the main listener.
	Listen string `yaml:"listen"`
	// SocketMode is the permission of a unix admin.listen socket, as an
	// octal string such as "0600" or "0660"; it is set whatever the
	// process umask, before any caller can connect. Default "0600": only
	// the broker's user may connect.
	SocketMode string `yaml:"socket_mode"`
	// SocketGroup is the group of a unix admin.listen socket: a group name
	// or a numeric gid. Default "": the process's group.
	SocketGroup string `yaml:"socket_group"`
}

// SocketPerm returns SocketMode as permission bits; an error when it is
// not an octal string from 0 to 0777.
func (a Admin) SocketPerm() (fs.FileMode, error) {
	s := a.SocketMode
	if len(s) < 3 || len(s) > 4 || strings.Trim(s, "01234567") != "" || (len(s) == 4 && s[0] != '0') {
		return 0, fmt.Errorf(`must be an octal mode from 0000 to 0777 in quotes, such as "0600" or "0660", got %q`, s)
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, fmt.Errorf(`must be an octal mode such as "0600", got %q`, s)
	}
	return fs.FileMode(n), nil
}

// Sealing configures the AES-256-GCM keys that seal cached tokens. The key
// text holds one key a line, "ID:BASE64", each key 32 bytes; the first is
// the current key (it seals), every one unseals, so keys rotate by adding a
// new first line and removing the old key once its tokens expired. At most
// one of KeysFile and KeysEnv may be set; with neither (the default) a
// random key is made per process. LoadKeys reads the text.
type Sealing struct {
	// KeysFile is a file holding the key text. Load resolves a relative
	// path against the directory of the configuration file. Default "".
	KeysFile string `yaml:"keys_file"`
	// KeysEnv is the name of an environment variable holding the key text.
	// Default "".
	KeysEnv string `yaml:"keys_env"`
}

// Default returns the configuration used when nothing overrides it. It has
// no providers and no clients, and no way to authenticate callers, so it
// validates only in -dev mode (Dev set) until the file or the caller adds
// one.
func Default() Config {
	return Config{
		Listen:     "127.0.0.1:7443",
		HTTPListen: "127.0.0.1:7080",

		HTTPMaxBodyBytes: 64 * KiB,
		Cache: Cache{
			MaxCost:         64 * MiB,
			RefreshFraction: 0.75,
			RefreshJitter:   0.05,
			MinRemaining:    Duration(30 * time.Second),
			NegativeTTL:     Duration(5 * time.Second),
			FetchTimeout:    Duration(30 * time.Second),

			RefreshRetryBackoff:    Duration(time.Second),
			RefreshRetryBackoffMax: Duration(time.Minute),
		},
		Passthrough: false,
		Server: Server{
			MaxConcurrentStreams:  1000,
			ShutdownTimeout:       Duration(10 * time.Second),
			KeepaliveMinTime:      Duration(30 * time.Second),
			Reflection:            true,
			MaxConnectionAge:      Duration(30 * time.Minute),
			MaxConnectionAgeGrace: Duration(time.Minute),
			MaxWatchesPerCaller:   1000,
			WatchOpensPerSecond:   50,
			WatchOpenBurst:        100,
			MaxHeaderListSize:     16 * KiB,
		},
		Log:         Log{Level: "info", Format: "json", Access: "failures"},
		Admin:       Admin{SocketMode: "0600"},
		TLS:         TLS{ClientAuth: ClientAuthNone},
		Auth:        Auth{Kubernetes: KubernetesAuth{Audience: "tokenbroker", Leeway: Duration(30 * time.Second)}},
		Shared:      Shared{Redis: defaultRedis()},
		SDS:         defaultSDS(),
		Verifier:    defaultVerifier(),
		DevLifetime: Duration(5 * time.Minute),
	}
}

// DefaultProvider returns a Provider with every default set and no Name or
// TokenURL. Load fills a provider's omitted keys from it; code that adds
// providers (such as -dev mode) should start from it too.
func DefaultProvider() Provider {
	return Provider{
		AuthMethod:      AuthClientSecretBasic,
		Timeout:         Duration(10 * time.Second),
		RateLimit:       100,
		Burst:           20,
		DefaultLifetime: Duration(time.Hour),

		PassthroughShare:       0.5,
		PassthroughCallerShare: 0.25,
		PassthroughClientShare: 0.25,

		FleetBurst:      10,
		FleetLocalShare: 0.25,

		MaxAttempts:     4,
		RetryBackoff:    Duration(100 * time.Millisecond),
		RetryBackoffMax: Duration(5 * time.Second),
	}
}
