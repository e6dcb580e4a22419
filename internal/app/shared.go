package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/shared"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// redisLogger sends go-redis's own messages (a failed dial on every
// attempt while Redis is down, for one) to the debug level: the tier
// reports outages once per breaker transition.
type redisLogger struct{ l *slog.Logger }

// Printf implements go-redis's logging interface.
func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

// setRedisLogger installs redisLogger for the process (go-redis has one
// logger for all its clients).
var setRedisLogger sync.Once

// newTier builds the Redis tier of cfg, sealing with kr, telling m of its
// breaker's transitions and of each failure's reason. The client fails
// fast: each operation is bounded by op_timeout and never retried, since
// the tier's breaker decides when Redis is worth another try. hook, when
// set, is added to the client (tracing's spans of its commands).
func newTier(cfg config.Redis, kr *tokencache.Keyring, logger *slog.Logger, m *metrics.Metrics, hook redis.Hook) (*shared.Tier, error) {
	var tlsConfig *tls.Config
	if cfg.TLS.Enabled {
		var err error
		if tlsConfig, err = redisTLS(cfg.TLS); err != nil {
			return nil, fmt.Errorf("shared.redis.tls: %w", err)
		}
	}
	setRedisLogger.Do(func() { redis.SetLogger(redisLogger{logger}) })
	op := time.Duration(cfg.OpTimeout)
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		Username:              cfg.Username,
		Password:              cfg.Password.Reveal(),
		DB:                    cfg.DB,
		TLSConfig:             tlsConfig,
		DialTimeout:           max(op, time.Second),
		ReadTimeout:           op,
		WriteTimeout:          op,
		PoolTimeout:           op,
		MaxRetries:            -1,
		ContextTimeoutEnabled: true,
	})
	if hook != nil {
		client.AddHook(hook)
	}
	return shared.New(shared.Options{
		Client:          client,
		Keyring:         kr,
		Prefix:          cfg.KeyPrefix,
		OpTimeout:       op,
		LockTTL:         time.Duration(cfg.LockTTL),
		PollInterval:    time.Duration(cfg.PollInterval),
		BreakerFailures: uint32(cfg.BreakerFailures),
		BreakerCooldown: time.Duration(cfg.BreakerCooldown),
		Logger:          logger,
		OnStateChange:   m.SetSharedState,
		OnFailure:       m.SharedFailed,
	})
}

// tierHealth is the /readyz line about the Redis tier while it is not in
// use, "" otherwise. A replica whose tier fails stays ready: it serves
// tokens on its own (each fetching its own), and taking every replica of
// a fleet out of service because their shared Redis failed would turn a
// degraded fleet into an outage.
func (a *App) tierHealth() string {
	if a.tier == nil {
		return ""
	}
	state, reason := a.tier.Health()
	if state == shared.StateClosed {
		return ""
	}
	if reason == "" {
		reason = shared.ReasonError
	}
	return "redis tier: " + state + " (" + reason + "): serving without the fleet"
}

// redisTLS builds the client TLS configuration for Redis.
func redisTLS(c config.RedisTLS) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %q: no PEM certificate in it", c.CAFile)
		}
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file, key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// setFleetBudgets gives each provider with a fleet_rate_limit its
// fleet-wide budget in tier, with its fleet_local_share as the fallback
// while Redis is unreachable, telling m of each decision.
func setFleetBudgets(cfg config.Config, tier *shared.Tier, providers map[string]broker.Fetcher, m *metrics.Metrics) error {
	for _, p := range cfg.Providers {
		if p.FleetRateLimit <= 0 {
			continue
		}
		c, ok := providers[p.Name].(*upstream.Client)
		if !ok {
			continue
		}
		b, err := tier.Budget(p.Name, p.FleetRateLimit, p.FleetBurst, p.PassthroughShare)
		if err != nil {
			return fmt.Errorf("providers %q: %w", p.Name, err)
		}
		name := p.Name
		c.SetFleet(&upstream.Fleet{
			Budget: b, Rate: p.FleetRateLimit, Burst: p.FleetBurst, LocalShare: p.FleetLocalShare,
			Observe: func(source string, granted bool) { m.BudgetDecision(name, source, granted) },
		})
		m.SetFleetBudget(name, p.FleetRateLimit, p.FleetLocalShare)
	}
	return nil
}

// refreshRates are the refreshes per second each replica plans for, by
// provider with a fleet budget: its local share of the budget, so that
// the fleet's refreshes together keep to the budget (broker.Config).
func refreshRates(cfg config.Config) map[string]float64 {
	r := make(map[string]float64)
	for _, p := range cfg.Providers {
		if p.FleetRateLimit > 0 && cfg.Shared.Redis.Enabled() {
			r[p.Name] = p.FleetRateLimit * p.FleetLocalShare
		}
	}
	return r
}
