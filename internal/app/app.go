// Package app wires tokenbroker together: it turns a validated
// configuration into upstream clients, a token cache, a broker and a gRPC
// server (plus, in -dev mode, an embedded token endpoint), runs them until
// the context ends, and shuts them down in order.
package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/credential"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/k8sauth"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/shared"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
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
	tier   *shared.Tier // nil without a Redis tier
	// metrics holds the cost accounting, whose counts the Redis tier
	// gathers for the fleet.
	metrics *metrics.Metrics
	creds   *credential.Watcher // re-reads the clients' credential files
	server  *server.Server
	http    *http.Server // nil without http_listen
	sds     *sdsService  // nil unless sds.enabled
	// sdsL is sds.listen's listener, when SDS has one of its own; Run
	// opens it, or else Serve does.
	sdsL   net.Listener
	sdsCfg config.SDS

	// verifier checks tokens for resource servers; nil unless a
	// provider has a verify section.
	verifier *verifier.Verifier
	// k8s verifies callers' service-account tokens; nil unless
	// auth.kubernetes is configured.
	k8s *k8sauth.Verifier
	// tracing is the OpenTelemetry tracing; nil when it is off.
	tracing *tracing.Tracing

	shutdownTimeout time.Duration
}

// close releases what New built, for an App that will not serve.
func (a *App) close() {
	if a.server != nil {
		a.server.Close() // its pooled handler goroutines
	}
	a.cache.Close()
	if a.verifier != nil {
		a.verifier.Close()
	}
	if a.k8s != nil {
		a.k8s.Close()
	}
	if a.tier != nil {
		_ = a.tier.Close()
	}
	shutdownTracing(a.tracing)
}

// Keys is the key material the configuration points at, loaded by the
// caller (config.LoadKeys). Nil fields mean random per-process keys.
type Keys struct {
	// Sealing is the text of the sealing keys ("ID:BASE64" lines, the
	// first one current).
	Sealing []byte
	// HMAC keys the cache-key HMAC.
	HMAC []byte
}

// New builds the broker and its server from cfg, which must be valid and
// have its secrets loaded.
func New(cfg config.Config, keys Keys, logger *slog.Logger) (_ *App, err error) {
	tr, err := newTracing(logger)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			shutdownTracing(tr)
		}
	}()
	logger = tr.Logger(logger) // trace_id and span_id on traced calls' lines
	k8s, err := newK8sVerifier(cfg, logger)
	if err != nil {
		return nil, err
	}
	guard, err := newAuthenticator(cfg, k8s)
	if err != nil {
		if k8s != nil {
			k8s.Close()
		}
		return nil, err
	}
	var tlsConfig *tls.Config
	if cfg.TLS.Enabled() {
		if tlsConfig, _, err = access.ServerTLSConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile, clientAuth(cfg.TLS.ClientAuth)); err != nil {
			return nil, err
		}
	}
	var b *broker.Broker
	reg, m, err := newMetrics(cfg.Metrics, func() broker.Stats { return b.Stats() })
	if err != nil {
		return nil, err
	}
	for _, p := range cfg.Providers {
		m.SetPrice(p.Name, p.PricePer1000Requests) // the cost accounting's price
	}
	a, err := newBroker(cfg, keys, logger, m, tr)
	if err != nil {
		return nil, err
	}
	b = a.broker
	a.k8s = k8s
	a.metrics = m
	srv, err := server.New(server.Config{
		Broker:                watchAdapter{b},
		Admin:                 adminBroker{b, m},
		SeparateAdmin:         cfg.Admin.Listen != "",
		Logger:                logger,
		LogSuccesses:          cfg.Log.Access == "all",
		TLS:                   tlsConfig,
		UnaryInterceptors:     []grpc.UnaryServerInterceptor{m.GRPC().UnaryServerInterceptor(metricsOptions(tr)...), guard.UnaryServerInterceptor()},
		StreamInterceptors:    []grpc.StreamServerInterceptor{m.GRPC().StreamServerInterceptor(metricsOptions(tr)...), guard.StreamServerInterceptor()},
		StatsHandlers:         statsHandlers(tr),
		Authorize:             authorize(guard),
		Identity:              callerIdentity,
		MaxConcurrentStreams:  cfg.Server.MaxConcurrentStreams,
		KeepaliveMinTime:      time.Duration(cfg.Server.KeepaliveMinTime),
		Reflection:            cfg.Server.Reflection,
		ShutdownTimeout:       time.Duration(cfg.Server.ShutdownTimeout),
		MaxWatchesPerCaller:   cfg.Server.MaxWatchesPerCaller,
		WatchOpensPerSecond:   cfg.Server.WatchOpensPerSecond,
		WatchOpenBurst:        cfg.Server.WatchOpenBurst,
		MaxConnectionAge:      time.Duration(cfg.Server.MaxConnectionAge),
		MaxConnectionAgeGrace: time.Duration(cfg.Server.MaxConnectionAgeGrace),
		MaxHeaderListSize:     uint32(cfg.Server.MaxHeaderListSize),
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.server = srv
	if err := a.setupVerifier(cfg, guard, reg, logger); err != nil {
		a.close()
		return nil, err
	}
	if cfg.SDS.Enabled {
		if a.sds, err = newSDS(cfg, b, guard, m, logger, srv); err != nil {
			a.close()
			return nil, err
		}
		a.sdsCfg = cfg.SDS
	}
	m.GRPC().InitializeMetrics(srv.GRPCServer())
	if cfg.HTTPListen != "" {
		if a.http, err = newHTTPServer(cfg, b, guard, reg, srv.Serving, a.tierHealth, tlsConfig, logger); err != nil {
			a.close()
			return nil, err
		}
		a.http.Handler = tr.HTTPHandler(a.http.Handler)
	}
	a.shutdownTimeout = time.Duration(cfg.Server.ShutdownTimeout)
	a.tracing = tr
	return a, nil
}

// newK8sVerifier builds the service-account token verifier of
// auth.kubernetes; nil when it is off.
func newK8sVerifier(cfg config.Config, logger *slog.Logger) (*k8sauth.Verifier, error) {
	k := cfg.Auth.Kubernetes
	if !k.Enabled() {
		return nil, nil
	}
	v, err := k8sauth.New(k8sauth.Config{
		Issuer:             k.IssuerURL,
		JWKSFile:           k.JWKSFile,
		Audience:           k.Audience,
		Leeway:             time.Duration(k.Leeway),
		RefreshInterval:    time.Duration(cfg.Verifier.JWKSRefreshInterval),
		MinRefreshInterval: time.Duration(cfg.Verifier.JWKSMinRefreshInterval),
		Logger:             logger,
	})
	if err != nil {
		return nil, fmt.Errorf("auth.kubernetes: %w", err)
	}
	return v, nil
}

// newAuthenticator builds caller authentication and policy from cfg, with
// k8s (nil for none) verifying service-account tokens. In -dev mode every
// caller is accepted, as "anonymous", and is an admin.
func newAuthenticator(cfg config.Config, k8s *k8sauth.Verifier) (*access.Authenticator, error) {
	keys := make([]access.APIKey, len(cfg.Auth.APIKeys))
	for i, k := range cfg.Auth.APIKeys {
		sum, err := access.ParseSHA256Hex(k.SHA256)
		if err != nil {
			return nil, fmt.Errorf("auth.api_keys[%d].sha256: %w", i, err)
		}
		keys[i] = access.APIKey{Identity: k.Identity, SHA256: sum}
	}
	rules := make([]access.Rule, len(cfg.Policy))
	for i, r := range cfg.Policy {
		rules[i] = access.Rule{Identity: r.Identity, Clients: r.Clients, Scopes: r.Scopes, Passthrough: r.Passthrough, Verify: r.Verify}
	}
	policy, err := access.NewPolicy(rules)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var sa access.TokenVerifier
	if k8s != nil {
		sa = k8s
	}
	return access.New(access.Config{
		ServiceAccounts:      sa,
		APIKeys:              keys,
		AllowUnauthenticated: cfg.Auth.AllowUnauthenticated || cfg.Dev,
		AdminIdentities:      cfg.Admin.Identities,
		AdminOpen:            cfg.Dev,
		Policy:               policy,
	})
}

// authorize applies the policy to GetToken and WatchToken selectors. A
// refusal is an *access.DeniedError (access.ErrPermissionDenied, the one
// permission-denied error), which the server maps to PermissionDenied.
func authorize(guard *access.Authenticator) func(context.Context, broker.Selector) error {
	return guard.Authorize
}

// callerIdentity names a caller for the per-caller watch limits: its
// authenticated identity, else (anonymous callers) its peer address.
func callerIdentity(ctx context.Context) string {
	if id, ok := access.FromContext(ctx); ok && id.Source != access.SourceAnonymous {
		return id.Source + ":" + id.Name
	}
	return server.PeerIdentity(ctx)
}

// clientAuth maps tls.client_auth to the TLS library's setting.
func clientAuth(s string) tls.ClientAuthType {
	switch s {
	case config.ClientAuthRequest:
		return tls.VerifyClientCertIfGiven
	case config.ClientAuthRequire:
		return tls.RequireAndVerifyClientCert
	}
	return tls.NoClientCert
}

// Serve runs the refresh scheduler and serves gRPC on l (AdminService on
// adminL, when admin.listen is set, and the HTTP listener on httpL, when
// http_listen is set) until ctx ends; then it cancels the broker's
// fetches in flight, shuts the servers down gracefully, stops the
// scheduler, waits for the fetches to end and closes the cache. An App
// serves once.
func (a *App) Serve(ctx context.Context, l, adminL, httpL net.Listener) error {
	defer a.close()
	// After the broker's fetches ended (broker.Close), before the tier
	// closes (a.close): their requests reach the fleet's figures.
	defer a.flushSavings()
	defer a.broker.Close()
	rctx, stop := context.WithCancel(context.Background())
	// Deferred after a.close: the key refreshes end (stop) before the
	// verifier is closed.
	defer a.runVerifier(rctx)()
	done := make(chan error, 2)
	go func() { done <- a.broker.Run(rctx) }()
	if a.k8s != nil {
		k8sDone := make(chan struct{})
		go func() { defer close(k8sDone); _ = a.k8s.Run(rctx) }()
		defer func() { <-k8sDone }() // stop() has ended rctx by then
	}
	credsDone := make(chan struct{})
	go func() { defer close(credsDone); _ = a.creds.Run(rctx) }()
	defer func() { <-credsDone }() // stop() has ended rctx by then
	if a.tier != nil {
		go func() { done <- a.tier.Run(rctx, a.broker) }()
		// The replica's cost accounting reaches the fleet's figures in
		// Redis about once a second.
		savingsDone := make(chan struct{})
		go func() { defer close(savingsDone); _ = a.metrics.RunSavings(rctx) }()
		defer func() { <-savingsDone }() // stop() has ended rctx by then
	} else {
		done <- nil
	}
	g, gctx := errgroup.WithContext(ctx)
	// Shutdown begins when gctx ends: the broker's fetches are cancelled
	// then, not after the servers' grace period, so callers waiting for a
	// slow token endpoint get Unavailable at once and the graceful stop
	// does not wait for them.
	context.AfterFunc(gctx, a.broker.Shutdown)
	if a.sds != nil {
		// SDS streams never end by themselves: they end when shutdown
		// begins, as the server ends WatchToken streams, so that the
		// graceful stop does not wait for them.
		context.AfterFunc(gctx, a.sds.sds.Shutdown)
		if a.sds.listener != nil {
			if a.sdsL == nil {
				var err error
				if a.sdsL, err = listenSDS(a.sdsCfg); err != nil {
					stop()
					return errors.Join(fmt.Errorf("sds.listen: %w", err), <-done, <-done)
				}
			}
			g.Go(func() error { return a.sds.serve(gctx, a.sdsL) })
		}
	}
	g.Go(func() error { return a.server.Serve(gctx, l) })
	if adminL != nil {
		g.Go(func() error { return a.server.ServeAdmin(gctx, adminL) })
	}
	if httpL != nil && a.http != nil {
		g.Go(func() error { return serveHTTP(gctx, a.http, httpL, a.shutdownTimeout) })
	}
	err := g.Wait()
	stop()
	return errors.Join(err, <-done, <-done)
}

// flushSavings adds the replica's last counts to the fleet's figures
// (nothing without a Redis tier), bounded by a second.
func (a *App) flushSavings() {
	if a.tier == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = a.metrics.FlushSavings(ctx) // the tier reports its own failures
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
func Run(ctx context.Context, cfg config.Config, keys Keys, logger *slog.Logger, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	err := func() error {
		if cfg.Dev {
			if err := startDevIssuer(ctx, g, &cfg, logger); err != nil {
				return err
			}
		}
		a, err := New(cfg, keys, logger)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			a.close()
			return fmt.Errorf("listen: %w", err)
		}
		var adminL net.Listener
		if cfg.Admin.Listen != "" {
			if adminL, err = listenAdmin(cfg.Admin); err != nil {
				l.Close()
				a.close()
				return fmt.Errorf("admin.listen: %w", err)
			}
			logger.Info("admin service listening", "addr", cfg.Admin.Listen)
		}
		var httpL net.Listener
		if cfg.HTTPListen != "" {
			if httpL, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
				l.Close()
				if adminL != nil {
					adminL.Close()
				}
				a.close()
				return fmt.Errorf("http_listen: %w", err)
			}
			logger.Info("http listening (token endpoint, /metrics, /healthz, /readyz)", "addr", httpL.Addr().String())
		}
		if cfg.SDS.Enabled && cfg.SDS.Listen != "" {
			if a.sdsL, err = listenSDS(cfg.SDS); err != nil {
				for _, open := range []net.Listener{l, adminL, httpL} {
					if open != nil {
						open.Close()
					}
				}
				a.close()
				return fmt.Errorf("sds.listen: %w", err)
			}
			logger.Info("sds listening", "addr", cfg.SDS.Listen)
		}
		if cfg.Dev {
			err := devBoundLoopback(l, adminL, httpL)
			if err == nil && a.sdsL != nil {
				err = devLoopbackAddr("sds.listen", a.sdsL.Addr())
			}
			if err != nil {
				for _, open := range []net.Listener{l, adminL, httpL, a.sdsL} {
					if open != nil {
						open.Close()
					}
				}
				a.close()
				return err
			}
		}
		logger.Info("tokenbroker listening", "addr", l.Addr().String(), "tls", cfg.TLS.Enabled(), "providers", len(cfg.Providers), "clients", len(cfg.Clients), "passthrough", cfg.Passthrough)
		if cfg.Dev {
			httpAddr := ""
			if httpL != nil {
				httpAddr = httpL.Addr().String()
			}
			printDevBanner(out, l.Addr().String(), httpAddr, cfg)
		}
		g.Go(func() error { return a.Serve(ctx, l, adminL, httpL) })
		return nil
	}()
	if err != nil {
		cancel() // stops the dev token endpoint, if it started
		return errors.Join(err, g.Wait())
	}
	return g.Wait()
}

// devBoundLoopback returns an error unless every listener of a -dev run
// (listen, admin.listen, http_listen; nil when not configured) is bound to
// a loopback address or a unix socket. The configuration's check accepts
// "localhost" by name, and /etc/hosts may map that name elsewhere: only the
// bound address tells.
func devBoundLoopback(l, adminL, httpL net.Listener) error {
	for _, b := range []struct {
		key string
		l   net.Listener
	}{{"listen", l}, {"admin.listen", adminL}, {"http_listen", httpL}} {
		if b.l == nil {
			continue
		}
		if err := devLoopbackAddr(b.key, b.l.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// devLoopbackAddr returns an error naming -dev, key and addr unless addr
// is a loopback TCP address or a unix socket.
func devLoopbackAddr(key string, addr net.Addr) error {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return nil
	case *net.TCPAddr:
		if a.IP.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("-dev: %s is bound to %s, which is not a loopback address; -dev never listens beyond loopback (check what the configured host name resolves to, or give a loopback IP such as 127.0.0.1)", key, addr)
}

// listenAdmin opens admin.listen: "unix:/path" (with admin.socket_mode
// and socket_group, whatever the umask; see listenUnix) or host:port.
func listenAdmin(a config.Admin) (net.Listener, error) {
	if path, ok := strings.CutPrefix(a.Listen, "unix:"); ok {
		perm, err := a.SocketPerm()
		if err != nil {
			return nil, fmt.Errorf("socket_mode: %w", err)
		}
		return listenUnix(path, perm, a.SocketGroup)
	}
	return net.Listen("tcp", a.Listen)
}

// newKeyring builds the sealing keyring from the configured key text, or
// a random one.
func newKeyring(text []byte) (*tokencache.Keyring, error) {
	if text == nil {
		return tokencache.RandomKeyring(), nil
	}
	keys, current, err := tokencache.ParseKeys(text)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}
	kr, err := tokencache.NewKeyring(keys, current)
	for _, k := range keys {
		clear(k.Secret)
	}
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}
	return kr, nil
}

// newBroker builds the token cache, one upstream client per provider, the
// Redis tier when one is configured, and the broker: an App without its
// server.
func newBroker(cfg config.Config, keys Keys, logger *slog.Logger, m *metrics.Metrics, tr *tracing.Tracing) (*App, error) {
	providers := make(map[string]broker.Fetcher, len(cfg.Providers))
	for _, p := range cfg.Providers {
		c, err := newUpstream(p, logger, tr.WrapTransport())
		if err != nil {
			return nil, err
		}
		providers[p.Name] = c
	}
	clients := make(map[string]broker.Client, len(cfg.Clients))
	var sources []credential.Source
	for i, c := range cfg.Clients {
		clients[c.Name] = broker.Client{Provider: c.Provider, ClientID: c.ClientID, ClientSecret: c.Secret,
			Credential: c.Credential, Params: cfg.ClientParams(i), AllowedParams: c.AllowedParameters}
		if c.Credential != nil {
			sources = append(sources, credential.Source{Spec: cfg.CredentialSpec(i), Credential: c.Credential})
		}
	}
	providerParams := make(map[string][][2]string, len(cfg.Providers))
	for _, p := range cfg.Providers {
		providerParams[p.Name] = config.SortedParams(p.Parameters)
	}
	kr, err := newKeyring(keys.Sealing)
	if err != nil {
		return nil, err
	}
	cache, err := tokencache.New(int64(cfg.Cache.MaxCost), kr)
	if err != nil {
		return nil, err
	}
	a := &App{cache: cache, creds: credential.NewWatcher(sources, 0, nil, logger)}
	var f broker.Fleet
	m.SetSharedState(metrics.SharedDisabled)
	if cfg.Shared.Redis.Enabled() {
		m.SetSharedState(metrics.SharedClosed)
		if a.tier, err = newTier(cfg.Shared.Redis, kr, logger, m, tr.RedisHook()); err != nil {
			cache.Close()
			return nil, err
		}
		f = a.tier
		// The cost accounting reports the fleet's figures, kept in Redis.
		m.SetSavingsStore(a.tier)
		if err := setFleetBudgets(cfg, a.tier, providers, m); err != nil {
			a.close()
			return nil, err
		}
	}
	b, err := broker.New(broker.Config{
		Providers:       providers,
		Clients:         clients,
		ProviderParams:  providerParams,
		Passthrough:     cfg.Passthrough,
		Cache:           cache,
		RefreshFraction: cfg.Cache.RefreshFraction,
		RefreshJitter:   cfg.Cache.RefreshJitter,
		RefreshRates:    refreshRates(cfg),
		MinRemaining:    time.Duration(cfg.Cache.MinRemaining),
		NegativeTTL:     time.Duration(cfg.Cache.NegativeTTL),
		FetchTimeout:    time.Duration(cfg.Cache.FetchTimeout),
		RetryBase:       time.Duration(cfg.Cache.RefreshRetryBackoff),
		RetryMax:        time.Duration(cfg.Cache.RefreshRetryBackoffMax),
		HMACKey:         keys.HMAC,
		Fleet:           f,
		Observer:        observer{m},
		Logger:          logger,
	})
	if err != nil {
		a.close()
		return nil, err
	}
	a.broker = b
	return a, nil
}

// DevIssuerClientID is the client id of the -dev and -dev-issuer token
// endpoints' client.
const DevIssuerClientID = "demo-client"

// ServeDevIssuer serves only the development token endpoint on addr, a
// loopback address, until ctx ends: one client, DevIssuerClientID with
// secret sec, allowed DevScopes, issuing tokens that live lifetime.
// Replicas on one machine can share it as their provider.
func ServeDevIssuer(ctx context.Context, addr string, sec secret.String, lifetime time.Duration, logger *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-dev-issuer: must be host:port, got %q", addr)
	}
	if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-dev-issuer: must be a loopback address (the development token endpoint is not for a network), got %q", addr)
	}
	if sec == "" {
		return fmt.Errorf("-dev-issuer: $%s must hold the client secret", config.EnvDevSecret)
	}
	issuer, err := devissuer.New(devissuer.Config{
		Lifetime: lifetime,
		Clients:  []devissuer.Client{{ID: DevIssuerClientID, Secret: sec.Reveal(), Scopes: DevScopes}},
		Logger:   logger,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-dev-issuer: %w", err)
	}
	logger.Info("dev token endpoint listening", "token_url", "http://"+l.Addr().String()+devissuer.TokenPath, "client_id", DevIssuerClientID, "lifetime", lifetime.String())
	if err := issuer.Serve(ctx, l); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("dev token endpoint: %w", err)
	}
	return nil
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
	sec := cfg.DevSecret.Reveal()
	if sec == "" {
		sec = rand.Text()
	}
	// Callers may present the demo credentials themselves, as apps using
	// the drop-in HTTP endpoint do.
	cfg.Passthrough = true
	issuer, err := devissuer.New(devissuer.Config{
		Lifetime: time.Duration(cfg.DevLifetime),
		Clients:  []devissuer.Client{{ID: DevIssuerClientID, Secret: sec, Scopes: DevScopes}},
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
	// Its tokens can be verified too (VerifyToken, ext_authz).
	p.Verify = &config.ProviderVerify{Issuer: url, ClientIDs: []string{DevIssuerClientID}}
	cfg.Providers = append(cfg.Providers, p)
	cfg.Clients = append(cfg.Clients, config.Client{
		Name: DevClient, Provider: DevProvider, ClientID: DevIssuerClientID, Secret: secret.String(sec),
	})
	logger.Info("dev token endpoint started", "token_url", p.TokenURL, "jwks_url", url+devissuer.JWKSPath, "lifetime", time.Duration(cfg.DevLifetime).String())
	return nil
}

// printDevBanner shows ready-to-paste grpcurl and curl commands for -dev
// mode; cfg is the configuration after startDevIssuer. The drop-in curl
// command must work in whatever shell it is pasted into: a demo secret made
// for this run (random, valid only on loopback and only until the process
// ends) is printed in it; a secret from $TOKENBROKER_DEV_SECRET is the
// user's own and is not printed: the command names the variable and fails
// with a message where it is unset, instead of sending an empty secret.
func printDevBanner(out io.Writer, addr, httpAddr string, cfg config.Config) {
	fmt.Fprintf(out, `
tokenbroker is running in -dev mode on %[1]s with an embedded token endpoint.
Provider %[2]q, client %[3]q (scopes %[4]s). Try:

  grpcurl -plaintext %[1]s list
  grpcurl -plaintext %[1]s describe tokenbroker.v1.TokenBrokerService
  grpcurl -plaintext -d '{"selector":{"client":"%[3]s","scopes":["demo/read"]}}' %[1]s tokenbroker.v1.TokenBrokerService/GetToken
  grpcurl -plaintext -d '{"service":""}' %[1]s grpc.health.v1.Health/Check
`, addr, DevProvider, DevClient, fmt.Sprint(DevScopes))
	if httpAddr != "" {
		fmt.Fprintf(out, "\n  curl -s http://%s/metrics | grep ^tokenbroker_\n", httpAddr)
		if cfg.DevSecret != "" {
			fmt.Fprintf(out, "  curl -s -u \"%s:${%s:?set it to the secret tokenbroker was started with}\" -d grant_type=client_credentials http://%s/oauth2/token\n",
				DevIssuerClientID, config.EnvDevSecret, httpAddr)
		} else {
			var sec string
			for _, c := range cfg.Clients {
				if c.Name == DevClient {
					sec = c.Secret.Reveal()
				}
			}
			fmt.Fprintf(out, "  curl -s -u %s:%s -d grant_type=client_credentials http://%s/oauth2/token\n", DevIssuerClientID, sec, httpAddr)
			fmt.Fprintf(out, "  (%s's secret above was made for this run and works only on loopback; set $%s to choose it)\n", DevIssuerClientID, config.EnvDevSecret)
		}
	}
	fmt.Fprint(out, "\nPress Ctrl-C to stop.\n\n")
}

// passthroughMethod is how a provider's requests authenticate with a
// client secret (pass-through credentials, and held clients without a
// Credential): client_secret_post when the provider's auth_method says
// so, else client_secret_basic. Broker-held clients authenticate with
// their Credential's method.
func passthroughMethod(m string) upstream.AuthMethod {
	if m == config.AuthClientSecretPost {
		return upstream.AuthPost
	}
	return upstream.AuthBasic
}
