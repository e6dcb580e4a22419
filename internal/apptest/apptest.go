// Package apptest is test support: it starts a real broker and token
// endpoint for the tests of other packages.
//
// The token endpoint is a devissuer over httptest; the broker is the whole
// product as internal/app builds it, serving gRPC on loopback TCP. Config
// gives the configuration such tests start from: provider "test" at the
// token endpoint, the broker-held client "held", pass-through on, every
// caller accepted and every caller an admin.
//
// Everything started here is stopped when the test ends. internal/app's own
// tests cannot use this package (it imports internal/app).
package apptest

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/app"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// The names Config gives the provider and the broker-held client.
const (
	// Provider is the name of the provider at the test token endpoint.
	Provider = "test"
	// HeldClient is the name of the broker-held client.
	HeldClient = "held"
)

// The two clients the test token endpoint knows.
const (
	// HeldID is the client id behind the broker-held client HeldClient.
	HeldID = "held-client"
	// HeldSecret is HeldID's secret.
	HeldSecret = "held-secret-value-5d1e"
	// PassID is a client the broker does not hold, for pass-through
	// requests; it is granted "api/read".
	PassID = "pass-client"
	// PassSecret is PassID's secret.
	PassSecret = "pass-secret-value-9a2c"
)

// StopTimeout bounds how long Stop waits for the broker to shut down.
const StopTimeout = 20 * time.Second

// Loopback is the address Start serves the broker on: a free loopback port.
const Loopback = "127.0.0.1:0"

// StartIssuer serves a token endpoint that knows the clients HeldID and
// PassID until the test ends, issuing tokens for an hour. HeldID is granted
// "api/read", "api/write" and extraHeldScopes. It returns the issuer and its
// token URL.
func StartIssuer(tb testing.TB, extraHeldScopes ...string) (*devissuer.Issuer, string) {
	tb.Helper()
	held := append([]string{"api/read", "api/write"}, extraHeldScopes...)
	issuer, err := devissuer.New(devissuer.Config{Lifetime: time.Hour, Clients: []devissuer.Client{
		{ID: HeldID, Secret: HeldSecret, Scopes: held},
		{ID: PassID, Secret: PassSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		tb.Fatalf("devissuer.New: %v", err)
	}
	hs := httptest.NewServer(issuer.Handler())
	tb.Cleanup(hs.Close)
	return issuer, hs.URL + devissuer.TokenPath
}

// Config returns the configuration the tests start from: provider Provider
// at tokenURL (with a rate limit no test reaches), the broker-held client
// HeldClient with HeldID's credentials, pass-through on, every caller
// accepted without credentials and every caller an admin. Its listen
// addresses are free ports, never the defaults.
func Config(tokenURL string) config.Config {
	cfg := config.Default()
	cfg.Listen, cfg.HTTPListen = Loopback, Loopback
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = Provider, tokenURL, 1000, 100
	cfg.Providers = []config.Provider{p}
	cfg.Clients = []config.Client{{Name: HeldClient, Provider: Provider, ClientID: HeldID, Secret: secret.String(HeldSecret)}}
	cfg.Passthrough = true
	cfg.Auth.AllowUnauthenticated = true
	cfg.Admin.Identities = []string{"*", "anonymous"}
	return cfg
}

// Broker is a running broker.
type Broker struct {
	// Addr is the address of the broker's gRPC listener.
	Addr string
	// Config is the configuration the broker runs with.
	Config config.Config

	stop func()
}

// Serve starts a broker with cfg, its gRPC server listening on addr
// (Loopback for a free port, or the Addr of a stopped Broker to start
// again where it was), logging nowhere. The broker runs until Stop is
// called or the test ends.
func Serve(tb testing.TB, cfg config.Config, addr string) *Broker {
	tb.Helper()
	a, err := app.New(cfg, app.Keys{}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("app.New: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("listen on %s: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, l, nil, nil) }()
	var once sync.Once
	b := &Broker{Addr: l.Addr().String(), Config: cfg}
	b.stop = func() {
		once.Do(func() {
			cancel()
			timer := time.NewTimer(StopTimeout)
			defer timer.Stop()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Serve: got %v, want nil after the shutdown", err)
				}
			case <-timer.C:
				tb.Errorf("Serve did not return within %s of the shutdown", StopTimeout)
			}
		})
	}
	tb.Cleanup(b.stop)
	return b
}

// Stop shuts the broker down and waits, at most StopTimeout, for it to
// finish; a Serve error or a late shutdown fails the test. Calling Stop
// again does nothing.
func (b *Broker) Stop() { b.stop() }

// Stack is a token endpoint and a broker that uses it.
type Stack struct {
	// Issuer is the token endpoint.
	Issuer *devissuer.Issuer
	// Broker is the broker; Restart replaces it.
	*Broker
}

// Start starts a token endpoint with StartIssuer(tb, extraHeldScopes...)
// and serves a broker with its Config on Loopback. adjust, when not nil,
// may change the configuration and the token endpoint first.
func Start(tb testing.TB, adjust func(*config.Config, *devissuer.Issuer), extraHeldScopes ...string) *Stack {
	tb.Helper()
	issuer, tokenURL := StartIssuer(tb, extraHeldScopes...)
	cfg := Config(tokenURL)
	if adjust != nil {
		adjust(&cfg, issuer)
	}
	return &Stack{Issuer: issuer, Broker: Serve(tb, cfg, Loopback)}
}

// Restart stops the broker, if it still runs, and starts a new one with
// the same configuration on the same address.
func (s *Stack) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	s.Broker = Serve(tb, s.Config, s.Addr)
}
