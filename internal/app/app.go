// Package app wires tokenbroker together: it turns a validated
// configuration into upstream clients, a token cache, a broker and a gRPC
// server (plus, in -dev mode, an embedded token endpoint), runs them until
// the context ends, and shuts them down in order.
package app

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// The names -dev mode configures.
const (
	DevProvider = "dev"
	DevClient   = "demo"
)

// DevScopes are the scopes the -dev client may ask for.
var DevScopes = []string{"demo/read", "demo/write"}

// App is a configured broker and its gRPC server, ready to serve.
type App struct {
	broker *broker.Broker
	cache  *tokencache.Cache
	server *server.Server
}

// New builds the broker and its server from cfg, which must be valid and
// have its secrets loaded.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	b, cache, err := newBroker(cfg, logger)
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{
		Broker:                watchAdapter{b},
		Logger:                logger,
		MaxConcurrentStreams:  cfg.Server.MaxConcurrentStreams,
		KeepaliveMinTime:      time.Duration(cfg.Server.KeepaliveMinTime),
		Reflection:            cfg.Server.Reflection,
		ShutdownTimeout:       time.Duration(cfg.Server.ShutdownTimeout),
		MaxWatchesPerCaller:   cfg.Server.MaxWatchesPerCaller,
		WatchOpensPerSecond:   cfg.Server.WatchOpensPerSecond,
		WatchOpenBurst:        cfg.Server.WatchOpenBurst,
		MaxConnectionAge:      time.Duration(cfg.Server.MaxConnectionAge),
		MaxConnectionAgeGrace: time.Duration(cfg.Server.MaxConnectionAgeGrace),
	})
	if err != nil {
		cache.Close()
		return nil, err
	}
	return &App{broker: b, cache: cache, server: srv}, nil
}

// Serve runs the refresh scheduler and serves gRPC on l until ctx ends;
// then it shuts the server down gracefully, stops the scheduler, waits for
// the fetches in flight and closes the cache. An App serves once.
func (a *App) Serve(ctx context.Context, l net.Listener) error {
	defer a.cache.Close()
	defer a.broker.Close()
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.broker.Run(rctx) }()
	err := a.server.Serve(ctx, l)
	stop()
	return errors.Join(err, <-done)
}

// watchAdapter gives the server the broker's watchers as Subscriptions.
type watchAdapter struct{ *broker.Broker }

// Watch implements server.Broker.
func (w watchAdapter) Watch(ctx context.Context, req broker.Request) (server.Subscription, error) {
	sub, err := w.Broker.Watch(ctx, req)
	if err != nil {
		return nil, err
	}
	return sub, nil
}

// Run serves cfg until ctx ends. cfg must be valid and its secrets loaded.
// In -dev mode Run first starts the embedded token endpoint, adds provider
// "dev" and client "demo" to cfg, and writes ready-to-paste grpcurl
// commands to out.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	err := func() error {
		if cfg.Dev {
			if err := startDevIssuer(ctx, g, &cfg, logger); err != nil {
				return err
			}
		}
		a, err := New(cfg, logger)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			a.cache.Close()
			return fmt.Errorf("listen: %w", err)
		}
		logger.Info("tokenbroker listening", "addr", l.Addr().String(), "providers", len(cfg.Providers), "clients", len(cfg.Clients), "passthrough", cfg.Passthrough)
		if cfg.Dev {
			printDevBanner(out, l.Addr().String())
		}
		g.Go(func() error { return a.Serve(ctx, l) })
		return nil
	}()
	if err != nil {
		cancel() // stops the dev token endpoint, if it started
		return errors.Join(err, g.Wait())
	}
	return g.Wait()
}

// newBroker builds the token cache, one upstream client per provider and
// the broker.
func newBroker(cfg config.Config, logger *slog.Logger) (*broker.Broker, *tokencache.Cache, error) {
	providers := make(map[string]broker.Fetcher, len(cfg.Providers))
	for _, p := range cfg.Providers {
		c, err := upstream.New(upstream.Provider{
			Name:            p.Name,
			TokenURL:        p.TokenURL,
			AuthMethod:      upstream.AuthMethod(p.AuthMethod),
			Timeout:         time.Duration(p.Timeout),
			RateLimit:       p.RateLimit,
			Burst:           p.Burst,
			DefaultLifetime: time.Duration(p.DefaultLifetime),
		}, upstream.Options{Logger: logger})
		if err != nil {
			return nil, nil, fmt.Errorf("provider %q: %w", p.Name, err)
		}
		providers[p.Name] = c
	}
	clients := make(map[string]broker.Client, len(cfg.Clients))
	for _, c := range cfg.Clients {
		clients[c.Name] = broker.Client{Provider: c.Provider, ClientID: c.ClientID, ClientSecret: c.Secret}
	}
	cache, err := tokencache.New(int64(cfg.Cache.MaxCost))
	if err != nil {
		return nil, nil, err
	}
	minRemaining := time.Duration(cfg.Cache.MinRemaining)
	if minRemaining == 0 {
		minRemaining = -1 // broker.Config: negative means none.
	}
	b, err := broker.New(broker.Config{
		Providers:       providers,
		Clients:         clients,
		Passthrough:     cfg.Passthrough,
		Cache:           cache,
		RefreshFraction: cfg.Cache.RefreshFraction,
		RefreshJitter:   cfg.Cache.RefreshJitter,
		MinRemaining:    minRemaining,
		NegativeTTL:     time.Duration(cfg.Cache.NegativeTTL),
		FetchTimeout:    time.Duration(cfg.Cache.FetchTimeout),
		Logger:          logger,
	})
	if err != nil {
		cache.Close()
		return nil, nil, err
	}
	return b, cache, nil
}

// startDevIssuer starts the embedded token endpoint on a loopback port and
// configures provider "dev" and client "demo" (with a random secret) for it.
func startDevIssuer(ctx context.Context, g *errgroup.Group, cfg *config.Config, logger *slog.Logger) error {
	for _, p := range cfg.Providers {
		if p.Name == DevProvider {
			return fmt.Errorf("-dev: providers: %q is reserved for the embedded token endpoint", DevProvider)
		}
	}
	for _, c := range cfg.Clients {
		if c.Name == DevClient {
			return fmt.Errorf("-dev: clients: %q is reserved for the embedded token endpoint's client", DevClient)
		}
	}
	sec := rand.Text()
	issuer, err := devissuer.New(devissuer.Config{
		Lifetime: time.Duration(cfg.DevLifetime),
		Clients:  []devissuer.Client{{ID: "demo-client", Secret: sec, Scopes: DevScopes}},
		Logger:   logger,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("dev token endpoint: %w", err)
	}
	url := "http://" + l.Addr().String()
	g.Go(func() error {
		if err := issuer.Serve(ctx, l); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("dev token endpoint: %w", err)
		}
		return nil
	})
	p := config.DefaultProvider()
	p.Name, p.TokenURL = DevProvider, url+devissuer.TokenPath
	cfg.Providers = append(cfg.Providers, p)
	cfg.Clients = append(cfg.Clients, config.Client{
		Name: DevClient, Provider: DevProvider, ClientID: "demo-client", Secret: secret.String(sec),
	})
	logger.Info("dev token endpoint started", "token_url", p.TokenURL, "jwks_url", url+devissuer.JWKSPath, "lifetime", time.Duration(cfg.DevLifetime).String())
	return nil
}

// printDevBanner shows ready-to-paste grpcurl commands for -dev mode.
func printDevBanner(out io.Writer, addr string) {
	fmt.Fprintf(out, `
tokenbroker is running in -dev mode on %[1]s with an embedded token endpoint.
Provider %[2]q, client %[3]q (scopes %[4]s). Try:

  grpcurl -plaintext %[1]s list
  grpcurl -plaintext %[1]s describe tokenbroker.v1.TokenBrokerService
  grpcurl -plaintext -d '{"selector":{"client":"%[3]s","scopes":["demo/read"]}}' %[1]s tokenbroker.v1.TokenBrokerService/GetToken
  grpcurl -plaintext -d '{"service":""}' %[1]s grpc.health.v1.Health/Check

Press Ctrl-C to stop.

`, addr, DevProvider, DevClient, fmt.Sprint(DevScopes))
}
