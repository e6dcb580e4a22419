package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
	"github.com/tokenbroker/tokenbroker/internal/verifyserver"
)

// setupVerifier builds the token verifier when a provider has a verify
// section, and registers TokenVerifierService and Envoy's ext_authz
// Authorization service on the main gRPC server, behind the same
// authentication and policy (policy[].verify) as the broker's RPCs.
func (a *App) setupVerifier(cfg config.Config, guard *access.Authenticator, reg prometheus.Registerer, logger *slog.Logger) error {
	var providers []verifier.Provider
	for _, p := range cfg.Providers {
		pv := p.Verify
		if pv == nil {
			continue
		}
		vp := verifier.Provider{
			Name:                      p.Name,
			Issuer:                    pv.Issuer,
			Flavour:                   pv.Flavour,
			JWKSURI:                   pv.JWKSURI,
			JWKSFile:                  pv.JWKSFile,
			Algorithms:                pv.Algorithms,
			Audiences:                 pv.Audiences,
			ClientIDs:                 pv.ClientIDs,
			RequireJWTAccessTokenType: pv.RequireJWTType,
			Timeout:                   time.Duration(p.Timeout),
		}
		if pv.IntrospectionURL != "" {
			for i, c := range cfg.Clients {
				if c.Name == pv.IntrospectionClient {
					vp.Introspection = &verifier.Introspection{URL: pv.IntrospectionURL, ClientID: c.ClientID,
						Secret: currentSecret(c), Post: cfg.ClientAuthMethod(i) == config.AuthClientSecretPost}
				}
			}
		}
		providers = append(providers, vp)
	}
	if len(providers) == 0 {
		return nil
	}
	vm, err := metrics.NewVerifier(reg)
	if err != nil {
		return err
	}
	vc := cfg.Verifier
	v, err := verifier.New(verifier.Config{
		Providers:             providers,
		CacheMaxCost:          int64(vc.CacheMaxCost),
		MaxTokenSize:          int(vc.MaxTokenSize),
		RefreshInterval:       time.Duration(vc.JWKSRefreshInterval),
		MinRefreshInterval:    time.Duration(vc.JWKSMinRefreshInterval),
		IntrospectionCacheTTL: time.Duration(vc.IntrospectionCacheTTL),
		ClockSkew:             time.Duration(vc.ClockSkew),
		Observer:              vm,
		Logger:                logger,
	})
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	paths := make([]verifyserver.PathScopes, len(vc.PathScopes))
	for i, ps := range vc.PathScopes {
		paths[i] = verifyserver.PathScopes{Prefix: ps.Prefix, Scopes: ps.Scopes}
	}
	h := vc.Headers
	srv, err := verifyserver.New(verifyserver.Config{
		Verifier:   v,
		Authorize:  guard.AuthorizeVerify,
		Caller:     callerIdentity,
		RateLimit:  vc.RateLimit,
		RateBurst:  vc.RateBurst,
		Headers:    verifyserver.Headers{Subject: h.Subject, ClientID: h.ClientID, Scopes: h.Scopes, Provider: h.Provider, Issuer: h.Issuer, Audience: h.Audience},
		PathScopes: paths,
	})
	if err != nil {
		v.Close()
		return err
	}
	srv.Register(a.server.GRPCServer())
	a.verifier = v
	return nil
}

// currentSecret returns a function giving c's secret as it is now: its
// Credential's current material, which the credential watcher replaces
// when client_secret_file changes, else the secret loaded at startup.
func currentSecret(c config.Client) func() secret.String {
	return func() secret.String {
		if c.Credential != nil {
			if m := c.Credential.Current(); m != nil {
				return m.Secret
			}
		}
		return c.Secret
	}
}

// runVerifier starts the verifier's key refreshes until ctx ends and
// returns a function that waits for them to stop.
func (a *App) runVerifier(ctx context.Context) (wait func()) {
	if a.verifier == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = a.verifier.Run(ctx) }()
	return func() { <-done }
}
