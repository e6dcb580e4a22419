package config

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Shared configures what replicas of the broker share.
type Shared struct {
	// Redis is the Redis tier. Without addrs (the default) each replica
	// works alone.
	Redis Redis `yaml:"redis"`
}

// Redis configures the Redis tier: standalone, Sentinel or Cluster
// (Amazon ElastiCache runs the same engine).
type Redis struct {
	// Addrs are host:port addresses: one for a standalone server, the
	// seed nodes of a Cluster, or the Sentinels (with MasterName). Empty:
	// no Redis tier.
	Addrs []string `yaml:"addrs"`
	// MasterName is the Sentinel master's name; set only for Sentinel.
	MasterName string `yaml:"master_name"`
	// Username is the ACL user name (Redis 6+). Default "".
	Username string `yaml:"username"`
	// PasswordFile is a file holding the password. Load resolves a
	// relative path against the configuration file's directory.
	PasswordFile string `yaml:"password_file"`
	// PasswordEnv is the name of an environment variable holding the
	// password. At most one of PasswordFile and PasswordEnv may be set.
	PasswordEnv string `yaml:"password_env"`
	// DB is the database number (standalone and Sentinel). Default 0.
	DB int `yaml:"db"`
	// TLS configures TLS to Redis (ElastiCache in-transit encryption).
	TLS RedisTLS `yaml:"tls"`
	// KeyPrefix starts every key and channel name; replicas that share
	// tokens must share it. Default "tokenbroker".
	KeyPrefix string `yaml:"key_prefix"`
	// OpTimeout bounds each Redis operation. Default 100ms.
	OpTimeout Duration `yaml:"op_timeout"`
	// LockTTL is how long a replica's fetch lock lives unless released:
	// the longest the fleet waits for a replica that died mid-fetch.
	// Default 10s.
	LockTTL Duration `yaml:"lock_ttl"`
	// PollInterval is how often a replica waiting for another's fetch
	// looks in Redis, in case a notification was lost. Default 250ms.
	PollInterval Duration `yaml:"poll_interval"`
	// BreakerFailures is the number of failed operations in a row after
	// which the replica stops using Redis for BreakerCooldown. Default 3.
	BreakerFailures int `yaml:"breaker_failures"`
	// BreakerCooldown is how long Redis is left alone after the breaker
	// opens, before one operation probes it. Default 5s.
	BreakerCooldown Duration `yaml:"breaker_cooldown"`

	// Password is the password, read by LoadSecrets.
	Password secret.String `yaml:"-"`
}

// RedisTLS configures TLS to Redis.
type RedisTLS struct {
	// Enabled turns TLS on. Default false.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs Redis's certificate must chain
	// to. Default "": the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate, for Redis servers
	// that ask for one. Default "".
	CertFile string `yaml:"cert_file"`
	// KeyFile is CertFile's private key.
	KeyFile string `yaml:"key_file"`
	// ServerName overrides the name checked in Redis's certificate.
	ServerName string `yaml:"server_name"`
}

// Enabled reports whether a Redis tier is configured.
func (r Redis) Enabled() bool { return len(r.Addrs) > 0 }

// defaultRedis is the Redis section's defaults.
func defaultRedis() Redis {
	return Redis{
		KeyPrefix:       "tokenbroker",
		OpTimeout:       Duration(100 * time.Millisecond),
		LockTTL:         Duration(10 * time.Second),
		PollInterval:    Duration(250 * time.Millisecond),
		BreakerFailures: 3,
		BreakerCooldown: Duration(5 * time.Second),
	}
}

// validateShared checks the shared section; c is the whole configuration,
// since the Redis tier needs the sealing and HMAC keys too.
func (c *Config) validateShared(v *validator) {
	r := c.Shared.Redis
	if !r.Enabled() {
		return
	}
	for i, a := range r.Addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			v.add(fmt.Sprintf("shared.redis.addrs[%d]", i), "must be host:port, got %q", a)
		}
	}
	if r.DB < 0 {
		v.add("shared.redis.db", "must be >= 0, got %d", r.DB)
	}
	if r.PasswordFile != "" && r.PasswordEnv != "" {
		v.add("shared.redis", "at most one of password_file and password_env may be set, got both")
	}
	if r.KeyPrefix == "" || strings.ContainsAny(r.KeyPrefix, "{} \t\r\n") {
		v.add("shared.redis.key_prefix", "must be non-empty, without braces or white space, got %q", r.KeyPrefix)
	}
	if r.OpTimeout <= 0 || r.OpTimeout > Duration(10*time.Second) {
		v.add("shared.redis.op_timeout", "must be in (0, 10s], got %s", r.OpTimeout)
	}
	if r.LockTTL < Duration(time.Second) {
		v.add("shared.redis.lock_ttl", "must be at least 1s, got %s", r.LockTTL)
	}
	if r.PollInterval < Duration(10*time.Millisecond) || r.PollInterval > r.LockTTL {
		v.add("shared.redis.poll_interval", "must be between 10ms and lock_ttl (%s), got %s", r.LockTTL, r.PollInterval)
	}
	if r.BreakerFailures < 1 {
		v.add("shared.redis.breaker_failures", "must be at least 1, got %d", r.BreakerFailures)
	}
	if r.BreakerCooldown <= 0 {
		v.add("shared.redis.breaker_cooldown", "must be > 0, got %s", r.BreakerCooldown)
	}
	if (r.TLS.CertFile == "") != (r.TLS.KeyFile == "") {
		v.add("shared.redis.tls", "cert_file and key_file must be set together")
	}
	if (r.TLS.CAFile != "" || r.TLS.CertFile != "" || r.TLS.ServerName != "") && !r.TLS.Enabled {
		v.add("shared.redis.tls.enabled", "must be true when ca_file, cert_file or server_name is set")
	}
	// Values in Redis are sealed, and replicas must derive the same cache
	// keys: both keys must come from the configuration, not be random.
	if c.Sealing.KeysFile == "" && c.Sealing.KeysEnv == "" {
		v.add("sealing", "keys_file or keys_env must be set when shared.redis is configured: tokens in Redis are sealed with keys every replica holds")
	}
	if c.Cache.HMACKeyFile == "" && c.Cache.HMACKeyEnv == "" {
		v.add("cache.hmac_key_file", "cache.hmac_key_file or cache.hmac_key_env must be set when shared.redis is configured: replicas must derive the same cache keys")
	}
}

// loadRedisPassword reads shared.redis's password from its file or
// variable, if one is named.
func (c *Config) loadRedisPassword(getenv func(string) string, logger *slog.Logger) error {
	r := &c.Shared.Redis
	switch {
	case !r.Enabled():
	case r.PasswordFile != "":
		s, err := readSecretFile(r.PasswordFile, logger)
		if err != nil {
			return &FieldError{Key: "shared.redis.password_file", Err: err}
		}
		r.Password = s
	case r.PasswordEnv != "":
		s := getenv(r.PasswordEnv)
		if s == "" {
			return fieldErr("shared.redis.password_env", "environment variable %q is not set or is empty", r.PasswordEnv)
		}
		r.Password = secret.String(s)
	}
	return nil
}
