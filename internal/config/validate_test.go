package config

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// digestA and digestB are well-formed API key digests.
const (
	digestA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	digestB = "FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210"
)

// validConfig returns a valid configuration with two providers, two
// clients and one API key, for tests to break one rule at a time.
func validConfig() Config {
	c := Default()
	p0 := DefaultProvider()
	p0.Name, p0.TokenURL = "cognito", "https://example.auth.eu-west-1.amazoncognito.com/oauth2/token"
	p1 := DefaultProvider()
	p1.Name, p1.TokenURL = "local", "http://127.0.0.1:8080/token"
	c.Providers = []Provider{p0, p1}
	c.Clients = []Client{
		{Name: "orders", Provider: "cognito", ClientID: "abc123", ClientSecretFile: "/run/secrets/orders"},
		{Name: "billing", Provider: "local", ClientID: "def456", ClientSecretEnv: "BILLING_SECRET"},
	}
	c.Auth.APIKeys = []APIKey{{Identity: "batch-jobs", SHA256: digestA}}
	return c
}

// withTLS sets a complete mTLS configuration on c.
func withTLS(c *Config) {
	c.TLS = TLS{CertFile: "/tls/cert.pem", KeyFile: "/tls/key.pem", ClientCAFile: "/tls/ca.pem", ClientAuth: ClientAuthRequire}
}

// problems splits a Validate error into its single problems.
func problems(err error) []string {
	if err == nil {
		return nil
	}
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []string
		for _, e := range joined.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

// withRedis configures a valid Redis tier: an address, sealing keys and
// an HMAC key.
func withRedis(c *Config) {
	c.Shared.Redis.Addrs = []string{"127.0.0.1:6379"}
	c.Sealing.KeysEnv, c.Cache.HMACKeyEnv = "SEALING_KEYS", "HMAC_KEY"
}

func TestValidateValid(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	// Edge values that are allowed.
	for _, mod := range []func(*Config){
		func(c *Config) { c.Listen = ":0"; c.InsecureAllowRemote = true },
		func(c *Config) { c.Listen = "[::1]:65535" },
		func(c *Config) { c.Listen = "localhost:7443" },
		func(c *Config) { c.Cache.MaxCost = 64 * KiB },
		func(c *Config) { c.Cache.RefreshJitter = 0 },
		func(c *Config) { c.Cache.MinRemaining, c.Cache.NegativeTTL = 0, 0 },
		func(c *Config) { c.Server.KeepaliveMinTime = 0 },
		func(c *Config) { c.Server.MaxConnectionAge = Duration(time.Second) },
		func(c *Config) { c.Server.MaxConnectionAgeGrace = Duration(time.Millisecond) },
		func(c *Config) { c.Server.MaxWatchesPerCaller, c.Server.WatchOpenBurst = 1, 1 },
		func(c *Config) { c.Server.WatchOpensPerSecond = 0.001 },
		func(c *Config) { c.Providers[1].TokenURL = "http://localhost/token" },
		func(c *Config) { c.Providers[1].TokenURL = "http://LOCALHOST:80/token" },
		func(c *Config) { c.Providers[1].TokenURL = "http://127.9.9.9/token" },
		func(c *Config) { c.Providers[1].TokenURL = "http://[::1]:9/token" },
		func(c *Config) { c.Providers[1].TokenURL = "https://idp.example/token?tenant=a" },
		func(c *Config) { c.Providers[1].AuthMethod = AuthClientSecretPost },
		func(c *Config) { c.Providers[1].Name = "0-a_b"; c.Clients[1].Provider = "0-a_b" },
		func(c *Config) { n := strings.Repeat("a", 63); c.Providers[1].Name = n; c.Clients[1].Provider = n },
		func(c *Config) { c.Clients[0].ClientID = strings.Repeat("~", 128) },
		func(c *Config) { c.Clients = nil; c.Providers = nil; c.Passthrough = true },
		func(c *Config) { c.Log = Log{Level: "debug", Format: "text", Access: "all"} },
		func(c *Config) { c.Log.Level = "warn" },
		func(c *Config) { c.Log.Level = "error" },
		withRedis,
		func(c *Config) { c.HTTPListen = "" },
		func(c *Config) {
			c.HTTPListen = "0.0.0.0:7080"
			c.InsecureAllowRemote = true
			c.HTTPDefaultProvider = c.Providers[0].Name
		},
		func(c *Config) {
			withRedis(c)
			c.Shared.Redis.Addrs = []string{"s1:26379", "s2:26379"}
			c.Shared.Redis.MasterName, c.Shared.Redis.PasswordEnv = "m", "P"
			c.Shared.Redis.TLS = RedisTLS{Enabled: true, CAFile: "ca", CertFile: "c", KeyFile: "k", ServerName: "r"}
			c.Shared.Redis.LockTTL, c.Shared.Redis.PollInterval = Duration(time.Second), Duration(time.Second)
		},

		// Listeners and transport security.
		func(c *Config) { c.Listen = "127.0.0.1:7443" },
		func(c *Config) { c.Listen = "127.200.0.1:1" },
		func(c *Config) { c.Listen = "[::1]:7443"; c.Admin.Listen = "localhost:7444" },
		func(c *Config) { c.Listen = ":7443"; c.InsecureAllowRemote = true },
		func(c *Config) {
			c.Listen = "10.0.0.1:7443"
			c.InsecureAllowRemote = true
			c.Admin.Listen = "0.0.0.0:9000"
		},
		func(c *Config) { withTLS(c); c.Listen = ":7443"; c.Admin.Listen = ":7444" },
		func(c *Config) { withTLS(c); c.Auth.APIKeys = nil },
		func(c *Config) { withTLS(c); c.TLS.ClientAuth = ClientAuthRequest },
		func(c *Config) {
			c.TLS = TLS{CertFile: "cert.pem", KeyFile: "key.pem", ClientAuth: ClientAuthNone}
			c.Listen = "192.0.2.1:443"
		},
		func(c *Config) {
			c.TLS = TLS{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: ClientAuthNone}
		},
		func(c *Config) { c.Admin.Listen = "unix:/run/tokenbroker/admin.sock" },
		func(c *Config) { c.Admin.Listen = "unix:/" + strings.Repeat("a", 106) },
		func(c *Config) {
			c.Admin.Listen = "unix:/run/admin.sock"
			c.Listen = ":7443"
			c.InsecureAllowRemote = true
		},

		// Authentication.
		func(c *Config) { c.Auth.APIKeys = nil; c.Auth.AllowUnauthenticated = true },
		func(c *Config) { c.Auth.APIKeys = nil; c.Dev = true },
		func(c *Config) {
			c.Auth.APIKeys = append(c.Auth.APIKeys, APIKey{Identity: "spiffe://x/y", SHA256: digestB})
		},
		func(c *Config) { c.Auth.APIKeys[0].Identity = strings.Repeat("~", MaxIdentityLength) },

		// Policy and admin.
		func(c *Config) {
			c.Policy = []PolicyRule{
				{Identity: "spiffe://prod/ns/payments/sa/worker", Clients: []string{"orders"}, Scopes: []string{"payments/read", "a:b"}},
				{Identity: "spiffe://prod/ns/ops/*", Clients: []string{"*"}, Scopes: []string{"*"}, Passthrough: true},
				{Identity: "*"},
				{Identity: "anonymous", Clients: []string{"billing", "orders"}},
				{Identity: "apikey:batch-jobs"}, {Identity: "dns:*"}, {Identity: "uri:https://example.test/*"},
			}
			c.Auth.AllowUnauthenticated = true
			c.Admin.Identities = []string{"spiffe://prod/ns/ops/sa/admin", "spiffe://prod/ns/sre/*", "*", "apikey:ops"}
		},
		func(c *Config) { c.Dev = true; c.Policy = []PolicyRule{{Identity: "*", Clients: []string{"demo"}}} },

		// Key material.
		func(c *Config) { c.Sealing.KeysFile, c.Cache.HMACKeyEnv = "/keys/sealing", "HMAC_KEY" },
		func(c *Config) { c.Sealing.KeysEnv, c.Cache.HMACKeyFile = "SEALING_KEYS", "hmac.key" },
	} {
		c := validConfig()
		mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("Validate() = %v, want nil", err)
		}
	}
}

// TestValidateRules breaks one rule per case and checks that Validate
// reports exactly one problem, naming the key and the rule.
func TestValidateRules(t *testing.T) {
	const urlRule = "must be an absolute https URL (http is allowed only for loopback hosts)"
	tests := []struct {
		name string
		mod  func(*Config)
		want string // the whole problem starts with this
	}{
		{"redis addr", func(c *Config) { withRedis(c); c.Shared.Redis.Addrs = []string{"redis"} }, `shared.redis.addrs[0]: must be host:port, got "redis"`},
		{"redis db", func(c *Config) { withRedis(c); c.Shared.Redis.DB = -1 }, "shared.redis.db: must be >= 0, got -1"},
		{"redis two passwords", func(c *Config) { withRedis(c); c.Shared.Redis.PasswordFile, c.Shared.Redis.PasswordEnv = "f", "E" }, "shared.redis: at most one of password_file and password_env may be set"},
		{"redis prefix braces", func(c *Config) { withRedis(c); c.Shared.Redis.KeyPrefix = "a{b}" }, `shared.redis.key_prefix: must be non-empty, without braces or white space, got "a{b}"`},
		{"redis op_timeout", func(c *Config) { withRedis(c); c.Shared.Redis.OpTimeout = 0 }, "shared.redis.op_timeout: must be in (0, 10s], got 0s"},
		{"redis lock_ttl", func(c *Config) { withRedis(c); c.Shared.Redis.LockTTL = Duration(time.Millisecond * 999) }, "shared.redis.lock_ttl: must be at least 1s"},
		{"redis poll beyond lock", func(c *Config) { withRedis(c); c.Shared.Redis.PollInterval = Duration(11 * time.Second) }, "shared.redis.poll_interval: must be between 10ms and lock_ttl (10s), got 11s"},
		{"redis breaker", func(c *Config) { withRedis(c); c.Shared.Redis.BreakerFailures = 0 }, "shared.redis.breaker_failures: must be at least 1, got 0"},
		{"redis cooldown", func(c *Config) { withRedis(c); c.Shared.Redis.BreakerCooldown = 0 }, "shared.redis.breaker_cooldown: must be > 0"},
		{"redis tls half", func(c *Config) { withRedis(c); c.Shared.Redis.TLS = RedisTLS{Enabled: true, CertFile: "c"} }, "shared.redis.tls: cert_file and key_file must be set together"},
		{"redis tls off", func(c *Config) { withRedis(c); c.Shared.Redis.TLS.CAFile = "ca" }, "shared.redis.tls.enabled: must be true when ca_file, cert_file or server_name is set"},
		{"redis without sealing keys", func(c *Config) { withRedis(c); c.Sealing.KeysEnv = "" }, "sealing: keys_file or keys_env must be set when shared.redis is configured"},
		{"redis without hmac key", func(c *Config) { withRedis(c); c.Cache.HMACKeyEnv = "" }, "cache.hmac_key_file: cache.hmac_key_file or cache.hmac_key_env must be set when shared.redis is configured"},
		{"http_listen bad", func(c *Config) { c.HTTPListen = "7080" }, "http_listen: must be host:port"},
		{"http_listen same as listen", func(c *Config) { c.HTTPListen = c.Listen }, "http_listen: must differ from listen and admin.listen"},
		{"http_listen remote plaintext", func(c *Config) { c.HTTPListen = "0.0.0.0:7080" }, "http_listen: plaintext"},
		{"http_default_provider unknown", func(c *Config) { c.HTTPDefaultProvider = "nope" }, `http_default_provider: must name a configured provider, got "nope"`},
		{"listen empty", func(c *Config) { c.Listen = "" }, "listen: must be host:port"},
		{"listen no port", func(c *Config) { c.Listen = "127.0.0.1" }, "listen: must be host:port"},
		{"listen bad port", func(c *Config) { c.Listen = "127.0.0.1:http" }, `listen: port must be a number from 0 to 65535, got "http"`},
		{"listen port too big", func(c *Config) { c.Listen = ":65536" }, "listen: port must be a number"},
		{"listen empty port", func(c *Config) { c.Listen = "127.0.0.1:" }, "listen: port must be a number"},

		{"max_cost small", func(c *Config) { c.Cache.MaxCost = 64*KiB - 1 }, "cache.max_cost: must be between 64KiB and 16GiB, got 65535B"},
		{"provider timeout beyond fetch_timeout", func(c *Config) { c.Providers[0].Timeout = Duration(31 * time.Second) }, "providers[0].timeout: must not exceed cache.fetch_timeout (30s)"},
		{"max_cost large", func(c *Config) { c.Cache.MaxCost = 16*GiB + 1 }, "cache.max_cost: must be between 64KiB and 16GiB"},
		{"dev lifetime at min_remaining", func(c *Config) { c.Dev, c.DevLifetime = true, Duration(30*time.Second) }, "-dev-lifetime: must be at least 1s and longer than cache.min_remaining (30s), got 30s"},
		{"refresh_fraction 0", func(c *Config) { c.Cache.RefreshFraction = 0 }, "cache.refresh_fraction: must be in (0, 1), got 0"},
		{"refresh_fraction 1", func(c *Config) { c.Cache.RefreshFraction = 1 }, "cache.refresh_fraction: must be in (0, 1)"},
		{"refresh_fraction NaN", func(c *Config) { c.Cache.RefreshFraction = math.NaN() }, "cache.refresh_fraction: must be in (0, 1)"},
		{"refresh_jitter negative", func(c *Config) { c.Cache.RefreshJitter = -0.01 }, "cache.refresh_jitter: must be in [0, 0.5)"},
		{"refresh_jitter 0.5", func(c *Config) { c.Cache.RefreshJitter = 0.5 }, "cache.refresh_jitter: must be in [0, 0.5)"},
		{"refresh_jitter NaN", func(c *Config) { c.Cache.RefreshJitter = math.NaN() }, "cache.refresh_jitter: must be in [0, 0.5)"},
		{"fraction-jitter reaches 0", func(c *Config) { c.Cache.RefreshFraction, c.Cache.RefreshJitter = 0.1, 0.1 }, "cache.refresh_jitter: refresh_fraction - refresh_jitter must stay above 0"},
		{"min_remaining negative", func(c *Config) { c.Cache.MinRemaining = Duration(-time.Second) }, "cache.min_remaining: must be >= 0, got -1s"},
		{"negative_ttl negative", func(c *Config) { c.Cache.NegativeTTL = -1 }, "cache.negative_ttl: must be >= 0"},
		{"fetch_timeout 0", func(c *Config) { c.Cache.FetchTimeout = 0 }, "cache.fetch_timeout: must be > 0, got 0s"},

		{"provider name empty", func(c *Config) { c.Providers[1].Name = ""; c.Clients[1].Provider = "cognito" }, "providers[1].name: must be 1-63 characters"},
		{"provider name upper case", func(c *Config) { c.Providers[1].Name = "Local"; c.Clients[1].Provider = "Local" }, `providers[1].name: must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit, got "Local"`},
		{"provider name leading dash", func(c *Config) { c.Providers[1].Name = "-x"; c.Clients[1].Provider = "-x" }, "providers[1].name: must be 1-63 characters"},
		{"provider name too long", func(c *Config) { n := strings.Repeat("a", 64); c.Providers[1].Name = n; c.Clients[1].Provider = n }, "providers[1].name: must be 1-63 characters"},
		{"provider name duplicate", func(c *Config) { c.Providers[1].Name = "cognito"; c.Clients[1].Provider = "cognito" }, `providers[1].name: "cognito" is already the name of providers[0]`},
		{"token_url empty", func(c *Config) { c.Providers[1].TokenURL = "" }, "providers[1].token_url: " + urlRule},
		{"token_url relative", func(c *Config) { c.Providers[1].TokenURL = "/oauth2/token" }, "providers[1].token_url: " + urlRule},
		{"token_url no host", func(c *Config) { c.Providers[1].TokenURL = "https:///token" }, "providers[1].token_url: " + urlRule},
		{"token_url opaque", func(c *Config) { c.Providers[1].TokenURL = "https:token" }, "providers[1].token_url: " + urlRule},
		{"token_url http remote", func(c *Config) { c.Providers[1].TokenURL = "http://idp.example/token" }, "providers[1].token_url: " + urlRule},
		{"token_url http 10/8", func(c *Config) { c.Providers[1].TokenURL = "http://10.0.0.1/token" }, "providers[1].token_url: " + urlRule},
		{"token_url http localhost lookalike", func(c *Config) { c.Providers[1].TokenURL = "http://localhost.evil.example/token" }, "providers[1].token_url: " + urlRule},
		{"token_url ftp", func(c *Config) { c.Providers[1].TokenURL = "ftp://127.0.0.1/token" }, "providers[1].token_url: " + urlRule},
		{"token_url unparsable", func(c *Config) { c.Providers[1].TokenURL = "https://a b/\x7f" }, "providers[1].token_url: " + urlRule},
		{"token_url userinfo", func(c *Config) { c.Providers[0].TokenURL = "https://id:hunter2@idp.example/token" }, "providers[0].token_url: must not contain user info"},
		{"token_url fragment", func(c *Config) { c.Providers[0].TokenURL = "https://idp.example/token#x" }, "providers[0].token_url: must not contain a fragment"},
		{"token_url empty fragment", func(c *Config) { c.Providers[0].TokenURL = "https://idp.example/token#" }, "providers[0].token_url: must not contain a fragment"},
		{"token_url port 0", func(c *Config) { c.Providers[0].TokenURL = "https://idp.example:0/token" }, "providers[0].token_url: port must be a number from 1 to 65535"},
		{"auth_method", func(c *Config) { c.Providers[0].AuthMethod = "client_secret_jwt" }, `providers[0].auth_method: must be client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth or self_signed_tls_client_auth, got "client_secret_jwt"`},
		{"auth_method empty", func(c *Config) { c.Providers[0].AuthMethod = "" }, "providers[0].auth_method: must be client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth or self_signed_tls_client_auth"},
		{"timeout 0", func(c *Config) { c.Providers[0].Timeout = 0 }, "providers[0].timeout: must be > 0, got 0s"},
		{"timeout negative", func(c *Config) { c.Providers[0].Timeout = Duration(-time.Second) }, "providers[0].timeout: must be > 0"},
		{"rate_limit 0", func(c *Config) { c.Providers[0].RateLimit = 0 }, "providers[0].rate_limit: must be a finite number > 0"},
		{"rate_limit negative", func(c *Config) { c.Providers[0].RateLimit = -1 }, "providers[0].rate_limit: must be a finite number > 0"},
		{"rate_limit inf", func(c *Config) { c.Providers[0].RateLimit = math.Inf(1) }, "providers[0].rate_limit: must be a finite number > 0"},
		{"rate_limit NaN", func(c *Config) { c.Providers[0].RateLimit = math.NaN() }, "providers[0].rate_limit: must be a finite number > 0"},
		{"burst 0", func(c *Config) { c.Providers[0].Burst = 0 }, "providers[0].burst: must be >= 1, got 0"},
		{"default_lifetime 0", func(c *Config) { c.Providers[0].DefaultLifetime = 0 }, "providers[0].default_lifetime: must be > 0"},
		{"max_attempts 0", func(c *Config) { c.Providers[0].MaxAttempts = 0 }, "providers[0].max_attempts: must be between 1 and 10, got 0"},
		{"max_attempts 11", func(c *Config) { c.Providers[0].MaxAttempts = 11 }, "providers[0].max_attempts: must be between 1 and 10, got 11"},
		{"retry_backoff 0", func(c *Config) { c.Providers[0].RetryBackoff = 0 }, "providers[0].retry_backoff: must be > 0, got 0s"},
		{"retry_backoff_max below retry_backoff", func(c *Config) { c.Providers[0].RetryBackoffMax = Duration(time.Millisecond) }, "providers[0].retry_backoff_max: must be >= retry_backoff (100ms), got 1ms"},
		{"refresh_retry_backoff 0", func(c *Config) { c.Cache.RefreshRetryBackoff = 0 }, "cache.refresh_retry_backoff: must be > 0, got 0s"},
		{"refresh_retry_backoff_max below", func(c *Config) { c.Cache.RefreshRetryBackoffMax = Duration(time.Millisecond) }, "cache.refresh_retry_backoff_max: must be >= cache.refresh_retry_backoff (1s), got 1ms"},
		{"http_max_body_bytes 0", func(c *Config) { c.HTTPMaxBodyBytes = 0 }, "http_max_body_bytes: must be between 1KiB and 1MiB, got 0 bytes"},
		{"http_max_body_bytes 2MiB", func(c *Config) { c.HTTPMaxBodyBytes = 2 * MiB }, "http_max_body_bytes: must be between 1KiB and 1MiB, got 2097152 bytes"},

		{"client name empty", func(c *Config) { c.Clients[1].Name = "" }, "clients[1].name: must be 1-63 characters"},
		{"client name bad chars", func(c *Config) { c.Clients[1].Name = "bill ing" }, `clients[1].name: must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit, got "bill ing"`},
		{"client name duplicate", func(c *Config) { c.Clients[1].Name = "orders" }, `clients[1].name: "orders" is already the name of clients[0]`},
		{"client provider unknown", func(c *Config) { c.Clients[1].Provider = "cogntio" }, `clients[1].provider: "cogntio" is not a configured provider`},
		{"client provider empty", func(c *Config) { c.Clients[1].Provider = "" }, "clients[1].provider: must name a configured provider"},
		{"client_id empty", func(c *Config) { c.Clients[0].ClientID = "" }, "clients[0].client_id: must be 1-128 printable ASCII characters without spaces"},
		{"client_id too long", func(c *Config) { c.Clients[0].ClientID = strings.Repeat("a", 129) }, "clients[0].client_id: must be 1-128"},
		{"client_id space", func(c *Config) { c.Clients[0].ClientID = "a b" }, "clients[0].client_id: must be 1-128"},
		{"client_id control", func(c *Config) { c.Clients[0].ClientID = "a\nb" }, "clients[0].client_id: must be 1-128"},
		{"client_id non-ASCII", func(c *Config) { c.Clients[0].ClientID = "é" }, "clients[0].client_id: must be 1-128"},
		{"client secret neither", func(c *Config) { c.Clients[0].ClientSecretFile = "" }, "clients[0]: exactly one of client_secret_file and client_secret_env must be set, got neither"},
		{"client secret both", func(c *Config) { c.Clients[0].ClientSecretEnv = "X" }, "clients[0]: exactly one of client_secret_file and client_secret_env must be set, got both"},

		{"log level", func(c *Config) { c.Log.Level = "verbose" }, `log.level: must be debug, info, warn or error, got "verbose"`},
		{"log level case", func(c *Config) { c.Log.Level = "INFO" }, "log.level: must be debug, info, warn or error"},
		{"log format", func(c *Config) { c.Log.Format = "logfmt" }, `log.format: must be json or text, got "logfmt"`},

		{"max_concurrent_streams 0", func(c *Config) { c.Server.MaxConcurrentStreams = 0 }, "server.max_concurrent_streams: must be an integer from 1 to 4294967295, got 0"},
		{"shutdown_timeout 0", func(c *Config) { c.Server.ShutdownTimeout = 0 }, "server.shutdown_timeout: must be > 0, got 0s"},
		{"keepalive_min_time negative", func(c *Config) { c.Server.KeepaliveMinTime = Duration(-time.Second) }, "server.keepalive_min_time: must be >= 0, got -1s"},
		{"max_connection_age 0", func(c *Config) { c.Server.MaxConnectionAge = 0 }, "server.max_connection_age: must be at least 1s, got 0s"},
		{"max_connection_age too short", func(c *Config) { c.Server.MaxConnectionAge = Duration(999 * time.Millisecond) }, "server.max_connection_age: must be at least 1s, got 999ms"},
		{"max_connection_age_grace 0", func(c *Config) { c.Server.MaxConnectionAgeGrace = 0 }, "server.max_connection_age_grace: must be > 0, got 0s"},
		{"max_connection_age_grace negative", func(c *Config) { c.Server.MaxConnectionAgeGrace = Duration(-time.Second) }, "server.max_connection_age_grace: must be > 0, got -1s"},
		{"max_watches_per_caller 0", func(c *Config) { c.Server.MaxWatchesPerCaller = 0 }, "server.max_watches_per_caller: must be >= 1, got 0"},
		{"max_watches_per_caller negative", func(c *Config) { c.Server.MaxWatchesPerCaller = -5 }, "server.max_watches_per_caller: must be >= 1, got -5"},
		{"watch_opens_per_second 0", func(c *Config) { c.Server.WatchOpensPerSecond = 0 }, "server.watch_opens_per_second: must be a finite number > 0 (stream opens per second), got 0"},
		{"watch_opens_per_second negative", func(c *Config) { c.Server.WatchOpensPerSecond = -1 }, "server.watch_opens_per_second: must be a finite number > 0"},
		{"watch_opens_per_second NaN", func(c *Config) { c.Server.WatchOpensPerSecond = math.NaN() }, "server.watch_opens_per_second: must be a finite number > 0"},
		{"watch_opens_per_second Inf", func(c *Config) { c.Server.WatchOpensPerSecond = math.Inf(1) }, "server.watch_opens_per_second: must be a finite number > 0"},
		{"watch_open_burst 0", func(c *Config) { c.Server.WatchOpenBurst = 0 }, "server.watch_open_burst: must be >= 1, got 0"},
		{"max_header_list_size too small", func(c *Config) { c.Server.MaxHeaderListSize = 512 }, "server.max_header_list_size: must be between 1KiB and 1MiB, got 512B"},
		{"max_header_list_size too large", func(c *Config) { c.Server.MaxHeaderListSize = 2 * MiB }, "server.max_header_list_size: must be between 1KiB and 1MiB, got 2MiB"},

		{"tls cert without key", func(c *Config) { withTLS(c); c.TLS.KeyFile = "" }, "tls.key_file: must be set when tls.cert_file is"},
		{"tls key without cert", func(c *Config) { c.TLS.KeyFile = "/tls/key.pem" }, "tls.cert_file: must be set when tls.key_file is"},
		{"tls client CA without cert", func(c *Config) { c.TLS.ClientCAFile = "/tls/ca.pem" }, "tls.client_ca_file: requires tls.cert_file"},
		{"tls client_auth unknown", func(c *Config) { withTLS(c); c.TLS.ClientAuth = "optional" }, `tls.client_auth: must be none, request or require, got "optional"`},
		{"tls client_auth empty", func(c *Config) { c.TLS.ClientAuth = "" }, `tls.client_auth: must be none, request or require, got ""`},
		{"tls client_auth case", func(c *Config) { withTLS(c); c.TLS.ClientAuth = "REQUIRE" }, "tls.client_auth: must be none, request or require"},
		{"tls require without CA", func(c *Config) { withTLS(c); c.TLS.ClientCAFile = "" }, "tls.client_auth: require needs tls.client_ca_file"},
		{"tls request without CA", func(c *Config) { withTLS(c); c.TLS.ClientCAFile, c.TLS.ClientAuth = "", ClientAuthRequest }, "tls.client_auth: request needs tls.client_ca_file"},

		{"plaintext on all interfaces", func(c *Config) { c.Listen = ":7443" }, "listen: plaintext on a non-loopback address; configure tls or set insecure_allow_remote: true"},
		{"plaintext on 0.0.0.0", func(c *Config) { c.Listen = "0.0.0.0:7443" }, "listen: plaintext on a non-loopback address"},
		{"plaintext on a private address", func(c *Config) { c.Listen = "10.1.2.3:7443" }, "listen: plaintext on a non-loopback address"},
		{"plaintext on a host name", func(c *Config) { c.Listen = "broker.internal:7443" }, "listen: plaintext on a non-loopback address"},
		{"plaintext on a localhost lookalike", func(c *Config) { c.Listen = "localhost.evil.example:7443" }, "listen: plaintext on a non-loopback address"},
		{"plaintext admin listener remote", func(c *Config) { c.Admin.Listen = ":9000" }, "admin.listen: plaintext on a non-loopback address; configure tls or set insecure_allow_remote: true"},
		{"admin listen bad", func(c *Config) { c.Admin.Listen = "admin.sock" }, `admin.listen: must be "unix:/absolute/path" or host:port, got "admin.sock"`},
		{"admin listen bad port", func(c *Config) { c.Admin.Listen = "127.0.0.1:x" }, `admin.listen: port must be a number from 0 to 65535, got "x"`},
		{"admin listen relative unix", func(c *Config) { c.Admin.Listen = "unix:run/admin.sock" }, `admin.listen: must be "unix:" and an absolute path, or host:port, got "unix:run/admin.sock"`},
		{"admin listen empty unix", func(c *Config) { c.Admin.Listen = "unix:" }, `admin.listen: must be "unix:" and an absolute path`},
		{"admin listen long unix", func(c *Config) { c.Admin.Listen = "unix:/" + strings.Repeat("a", 107) }, "admin.listen: unix socket path must be at most 107 bytes, got 108"},
		{"admin listen NUL", func(c *Config) { c.Admin.Listen = "unix:/a\x00b" }, "admin.listen: unix socket path must not contain a NUL byte"},
		{"admin listen is listen", func(c *Config) { c.Admin.Listen = c.Listen }, "admin.listen: must differ from listen"},

		{"no way to authenticate", func(c *Config) { c.Auth.APIKeys = nil }, "auth.allow_unauthenticated: no way to authenticate callers: configure tls.client_auth: require, auth.api_keys, auth.kubernetes, or set auth.allow_unauthenticated: true"},
		{"kubernetes issuer not https", func(c *Config) { c.Auth.Kubernetes.IssuerURL = "http://k8s.example" }, "auth.kubernetes.issuer_url: without jwks_file the keys are found by OpenID discovery, so it must be an absolute https URL"},
		{"kubernetes jwks_file without issuer", func(c *Config) { c.Auth.Kubernetes.JWKSFile = "/jwks.json" }, "auth.kubernetes.jwks_file: needs auth.kubernetes.issuer_url"},
		{"kubernetes audience empty", func(c *Config) { c.Auth.Kubernetes.Audience = "" }, `auth.kubernetes.audience: must be 1-256 characters without spaces, got ""`},
		{"kubernetes leeway too long", func(c *Config) { c.Auth.Kubernetes.Leeway = Duration(time.Hour) }, "auth.kubernetes.leeway: must be from 0 to 5m, got 1h0m0s"},
		{"policy k8s inner star", func(c *Config) { c.Policy = []PolicyRule{{Identity: "k8s:pay*"}} }, `policy[0].identity: "*" is allowed only alone`},
		{"client_auth request does not authenticate", func(c *Config) { withTLS(c); c.TLS.ClientAuth = ClientAuthRequest; c.Auth.APIKeys = nil }, "auth.allow_unauthenticated: no way to authenticate callers"},
		{"api key identity empty", func(c *Config) { c.Auth.APIKeys[0].Identity = "" }, `auth.api_keys[0].identity: must be 1-2048 printable ASCII characters without spaces or '*', got ""`},
		{"api key identity space", func(c *Config) { c.Auth.APIKeys[0].Identity = "batch jobs" }, "auth.api_keys[0].identity: must be 1-2048 printable ASCII"},
		{"api key identity control", func(c *Config) { c.Auth.APIKeys[0].Identity = "batch\tjobs" }, "auth.api_keys[0].identity: must be 1-2048 printable ASCII"},
		{"api key identity non-ASCII", func(c *Config) { c.Auth.APIKeys[0].Identity = "bätch" }, "auth.api_keys[0].identity: must be 1-2048 printable ASCII"},
		{"api key identity star", func(c *Config) { c.Auth.APIKeys[0].Identity = "jobs/*" }, "auth.api_keys[0].identity: must be 1-2048 printable ASCII characters without spaces or '*'"},
		{"api key identity too long", func(c *Config) { c.Auth.APIKeys[0].Identity = strings.Repeat("a", MaxIdentityLength+1) }, "auth.api_keys[0].identity: must be 1-2048"},
		{"api key identity anonymous", func(c *Config) { c.Auth.APIKeys[0].Identity = AnonymousIdentity }, `auth.api_keys[0].identity: "anonymous" is reserved for unauthenticated callers`},
		{"api key identity duplicate", func(c *Config) {
			c.Auth.APIKeys = append(c.Auth.APIKeys, APIKey{Identity: "batch-jobs", SHA256: digestB})
		}, `auth.api_keys[1].identity: "batch-jobs" is already the identity of auth.api_keys[0]`},
		{"api key digest short", func(c *Config) { c.Auth.APIKeys[0].SHA256 = digestA[:63] }, "auth.api_keys[0].sha256: must be 64 hexadecimal characters (the SHA-256 digest of the key), got 63 characters"},
		{"api key digest empty", func(c *Config) { c.Auth.APIKeys[0].SHA256 = "" }, "auth.api_keys[0].sha256: must be 64 hexadecimal characters (the SHA-256 digest of the key), got 0 characters"},
		{"api key digest long", func(c *Config) { c.Auth.APIKeys[0].SHA256 = digestA + "0" }, "auth.api_keys[0].sha256: must be 64 hexadecimal characters (the SHA-256 digest of the key), got 65 characters"},
		{"api key digest not hex", func(c *Config) { c.Auth.APIKeys[0].SHA256 = "hunter2" + digestA[7:] }, "auth.api_keys[0].sha256: must be 64 hexadecimal characters (the SHA-256 digest of the key), got a character that is not hexadecimal"},
		{"api key digest is a key", func(c *Config) { c.Auth.APIKeys[0].SHA256 = "hunter2hunter2" }, "auth.api_keys[0].sha256: must be 64 hexadecimal characters"},
		{"api key digest duplicate", func(c *Config) {
			c.Auth.APIKeys = append(c.Auth.APIKeys, APIKey{Identity: "other", SHA256: strings.ToUpper(digestA)})
		}, "auth.api_keys[1].sha256: is the same digest as auth.api_keys[0].sha256"},

		{"policy identity untyped", func(c *Config) { c.Policy = []PolicyRule{{Identity: "batch-jobs"}} }, `policy[0].identity: must name its kind: "spiffe://TRUST-DOMAIN/PATH", "dns:NAME", "uri:URI", "apikey:NAME"`},
		{"admin identity untyped", func(c *Config) { c.Admin.Identities = []string{"apikey:ops", "ops.example.test"} }, `admin.identities[1]: must name its kind`},
		{"policy anonymous without unauthenticated callers", func(c *Config) { c.Policy = []PolicyRule{{Identity: "anonymous"}} }, `policy[0].identity: "anonymous" matches only unauthenticated callers, who are refused unless auth.allow_unauthenticated: true`},
		{"admin anonymous without unauthenticated callers", func(c *Config) { c.Admin.Identities = []string{"anonymous"} }, `admin.identities[0]: "anonymous" matches only unauthenticated callers`},
		{"api key identity with its kind", func(c *Config) { c.Auth.APIKeys[0].Identity = "apikey:batch-jobs" }, `auth.api_keys[0].identity: is the key's name without its kind: callers presenting the key are "apikey:NAME", write "batch-jobs"`},
		{"policy identity empty", func(c *Config) { c.Policy = []PolicyRule{{Identity: ""}} }, `policy[0].identity: must not be empty, got ""`},
		{"policy identity inner star", func(c *Config) { c.Policy = []PolicyRule{{Identity: "spiffe://prod/*/sa/x"}} }, `policy[0].identity: "*" is allowed only alone, as a trailing "/*", as "KIND:*" or as "k8s:NAMESPACE:*", got "spiffe://prod/*/sa/x"`},
		{"policy identity trailing star without slash", func(c *Config) { c.Policy = []PolicyRule{{Identity: "spiffe://prod/ns*"}} }, `policy[0].identity: "*" is allowed only alone`},
		{"policy identity two stars", func(c *Config) { c.Policy = []PolicyRule{{Identity: "dns:a/*/*"}} }, `policy[0].identity: "*" is allowed only alone`},
		{"policy identity untyped prefix", func(c *Config) { c.Policy = []PolicyRule{{Identity: "a/*"}} }, `policy[0].identity: must name its kind`},
		{"policy identity double star", func(c *Config) { c.Policy = []PolicyRule{{Identity: "**"}} }, `policy[0].identity: must name its kind`},
		{"policy identity space", func(c *Config) { c.Policy = []PolicyRule{{Identity: "apikey:a b"}} }, `policy[0].identity: must be printable ASCII characters without spaces, got "apikey:a b"`},
		{"policy identity control character", func(c *Config) { c.Policy = []PolicyRule{{Identity: "dns:a\x01b"}} }, `policy[0].identity: must be printable ASCII characters without spaces, got "dns:a\x01b"`},
		{"policy identity leading space", func(c *Config) { c.Policy = []PolicyRule{{Identity: " *"}} }, `policy[0].identity: must not have leading or trailing spaces`},
		{"policy identity too long", func(c *Config) { c.Policy = []PolicyRule{{Identity: "spiffe://" + strings.Repeat("a", 2038) + "/*"}} }, `policy[0].identity: must be at most 2048 characters, got 2049`},
		{"policy client unknown", func(c *Config) {
			c.Policy = []PolicyRule{{Identity: "*", Clients: []string{"orders", "payments"}}}
		}, `policy[0].clients[1]: "payments" is not a configured client`},
		{"policy client empty", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Clients: []string{""}}} }, `policy[0].clients[0]: must name a configured client or be "*"`},
		{"policy client demo without dev", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Clients: []string{"demo"}}} }, `policy[0].clients[0]: "demo" is not a configured client`},
		{"policy scope empty", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Scopes: []string{""}}} }, `policy[0].scopes[0]: must be a scope (printable ASCII without spaces, '"' or '\') or "*", got ""`},
		{"policy scope space", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Scopes: []string{"a", "a b"}}} }, `policy[0].scopes[1]: must be a scope`},
		{"policy scope quote", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Scopes: []string{`a"b`}}} }, `policy[0].scopes[0]: must be a scope`},
		{"policy scope backslash", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Scopes: []string{`a\b`}}} }, `policy[0].scopes[0]: must be a scope`},
		{"policy scope too long", func(c *Config) { c.Policy = []PolicyRule{{Identity: "*", Scopes: []string{strings.Repeat("s", 257)}}} }, `policy[0].scopes[0]: must be at most 256 bytes`},
		{"policy second rule", func(c *Config) {
			c.Policy = []PolicyRule{{Identity: "*"}, {Identity: "x*"}}
		}, `policy[1].identity: must name its kind`},
		{"admin identity empty", func(c *Config) { c.Admin.Identities = []string{"spiffe://a/b", ""} }, `admin.identities[1]: must not be empty, got ""`},
		{"admin identity inner star", func(c *Config) { c.Admin.Identities = []string{"spiffe://*/admin"} }, `admin.identities[0]: "*" is allowed only alone`},
		{"admin identity too long", func(c *Config) { c.Admin.Identities = []string{"uri:" + strings.Repeat("u", 2045)} }, `admin.identities[0]: must be at most 2048 characters, got 2049`},

		{"sealing both", func(c *Config) { c.Sealing = Sealing{KeysFile: "/k", KeysEnv: "K"} }, "sealing: at most one of keys_file and keys_env may be set, got both"},
		{"hmac key both", func(c *Config) { c.Cache.HMACKeyFile, c.Cache.HMACKeyEnv = "/k", "K" }, "cache: at most one of hmac_key_file and hmac_key_env may be set, got both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			got := problems(c.Validate())
			if len(got) != 1 || !strings.HasPrefix(got[0], tt.want) {
				t.Fatalf("Validate() problems = %q\nwant exactly one starting with %q", got, tt.want)
			}
			if strings.Contains(got[0], "hunter2") {
				t.Errorf("problem %q quotes a credential", got[0])
			}
		})
	}
}

func TestValidateReportsEverything(t *testing.T) {
	c := validConfig()
	c.Listen = "nope"
	c.Cache.FetchTimeout = 0
	c.Providers[0].Burst = 0
	c.Clients[1].Provider = "missing"
	c.Log.Format = "xml"
	c.TLS.ClientAuth = "maybe"
	c.Auth.APIKeys[0].SHA256 = "x"
	c.Policy = []PolicyRule{{Identity: "*", Clients: []string{"nope"}}}
	c.Sealing = Sealing{KeysFile: "f", KeysEnv: "e"}
	got := problems(c.Validate())
	want := []string{"listen: ", "cache.fetch_timeout: ", "providers[0].burst: ", "clients[1].provider: ", "log.format: ",
		"tls.client_auth: ", "auth.api_keys[0].sha256: ", "policy[0].clients[0]: ", "sealing: "}
	if len(got) != len(want) {
		t.Fatalf("Validate() problems = %q, want %d of them", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want it to start with %q", i, got[i], want[i])
		}
	}
}
