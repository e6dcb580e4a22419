// Package config holds the broker's configuration: its defaults, the YAML
// file that overrides them, the environment and command-line flags that
// override the file, and Validate, which reports every problem at once with
// the key it concerns.
//
// The order of precedence is defaults < file < environment < flags. Parse
// builds a Config that way; Load reads only a file. Neither validates nor
// reads client secrets: the caller adds what it must (for example the
// providers of -dev mode), then calls Validate and LoadSecrets.
//
// testdata/example.yaml is the reference file: every key, with its default.
package config

import (
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
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
)

// MinCacheMaxCost is the smallest cache.max_cost Validate accepts.
const MinCacheMaxCost = 64 * KiB

// MaxCacheMaxCost is the largest cache.max_cost Validate accepts: millions
// of tokens, far beyond any fleet's need, and a bound on the cache's own
// bookkeeping.
const MaxCacheMaxCost = 16 * GiB

// MaxSecretSize is the largest client secret file LoadSecrets reads.
const MaxSecretSize = 512

// Config is the broker's whole configuration.
type Config struct {
	// Listen is the gRPC listen address, host:port. Default "127.0.0.1:7443".
	Listen string `yaml:"listen"`
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
	// Dev runs the broker in development mode (an embedded token endpoint).
	// It is set by the -dev flag only, never by the file.
	Dev bool `yaml:"-"`
	// DevLifetime is the lifetime of the tokens the -dev token endpoint
	// issues (default 5m). It is set by the -dev-lifetime flag only.
	DevLifetime Duration `yaml:"-"`
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
	// AuthMethod is how clients authenticate: AuthClientSecretBasic
	// (default) or AuthClientSecretPost.
	AuthMethod string `yaml:"auth_method"`
	// Timeout bounds one HTTP request to the endpoint. Default 10s; > 0.
	Timeout Duration `yaml:"timeout"`
	// RateLimit is the sustained request budget, in requests per second.
	// Default 100; must be finite and > 0.
	RateLimit float64 `yaml:"rate_limit"`
	// Burst is how many requests may exceed RateLimit at once. Default 20;
	// must be >= 1.
	Burst int `yaml:"burst"`
	// DefaultLifetime is the lifetime assumed for a token whose response
	// has no expires_in. Default 1h; must be > 0.
	DefaultLifetime Duration `yaml:"default_lifetime"`
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
	// Secret is the client secret, filled by LoadSecrets; never in the file.
	Secret secret.String `yaml:"-"`
}

// Server tunes the gRPC server.
type Server struct {
	// MaxConcurrentStreams bounds the concurrent streams (RPCs) per client
	// connection. Default 1000; must be >= 1.
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
}

// Log configures logging.
type Log struct {
	// Level is the least severity logged: debug, info (default), warn or
	// error.
	Level string `yaml:"level"`
	// Format is the log line format: json (default) or text.
	Format string `yaml:"format"`
}

// Default returns the configuration used when nothing overrides it. It has
// no providers and no clients.
func Default() Config {
	return Config{
		Listen: "127.0.0.1:7443",
		Cache: Cache{
			MaxCost:         64 * MiB,
			RefreshFraction: 0.75,
			RefreshJitter:   0.05,
			MinRemaining:    Duration(30 * time.Second),
			NegativeTTL:     Duration(5 * time.Second),
			FetchTimeout:    Duration(30 * time.Second),
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
		},
		Log:         Log{Level: "info", Format: "json"},
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
	}
}
