package app

// This file is `tokenbroker -check=online`: one token request per
// broker-held client, reported per client, with no port bound.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// newUpstream returns the upstream client of provider p: the one home of
// the mapping from configuration to upstream.Client. wrap, when set,
// wraps its HTTP transports (tracing).
func newUpstream(p config.Provider, logger *slog.Logger, wrap func(http.RoundTripper) http.RoundTripper) (*upstream.Client, error) {
	c, err := upstream.New(upstream.Provider{
		Name:            p.Name,
		TokenURL:        p.TokenURL,
		AuthMethod:      passthroughMethod(p.AuthMethod),
		Timeout:         time.Duration(p.Timeout),
		RateLimit:       p.RateLimit,
		Burst:           p.Burst,
		DefaultLifetime: time.Duration(p.DefaultLifetime),

		PassthroughShare:       p.PassthroughShare,
		PassthroughCallerShare: p.PassthroughCallerShare,
		PassthroughClientShare: p.PassthroughClientShare,
	}, upstream.Options{
		Logger:      logger,
		MaxAttempts: p.MaxAttempts,
		BaseBackoff: time.Duration(p.RetryBackoff),
		MaxBackoff:  time.Duration(p.RetryBackoffMax),

		WrapTransport: wrap,
	})
	if err != nil {
		return nil, fmt.Errorf("provider %q: %w", p.Name, err)
	}
	return c, nil
}

// CheckOnline makes one token request per broker-held client of cfg
// (valid, its credentials loaded), with each client's own method and
// parameters, one attempt each, and writes a line per client to out:
// "ok" with the token's lifetime and granted scopes (never the token), or
// the endpoint's error (its code and sanitised description, never a
// secret). It binds no port. It returns an error when a client failed.
func CheckOnline(ctx context.Context, cfg config.Config, logger *slog.Logger, out io.Writer) error {
	providers := make(map[string]*upstream.Client, len(cfg.Providers))
	for _, p := range cfg.Providers {
		c, err := newUpstream(p, logger, nil)
		if err != nil {
			return err
		}
		providers[p.Name] = c
	}
	failed := 0
	for i, cl := range cfg.Clients {
		req := upstream.Request{ClientID: cl.ClientID, ClientSecret: cl.Secret, Credential: cl.Credential,
			Params: cfg.ClientParams(i), MaxAttempts: 1}
		fctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.Cache.FetchTimeout))
		tok, err := providers[cl.Provider].Fetch(fctx, req)
		cancel()
		if err != nil {
			failed++
			fmt.Fprintf(out, "client %q (provider %q, %s): FAILED: %v\n", cl.Name, cl.Provider, cfg.ClientAuthMethod(i), err)
			continue
		}
		scopes := strings.Join(tok.Scopes, " ")
		if scopes == "" {
			scopes = "(none reported)"
		}
		line := fmt.Sprintf("client %q (provider %q, %s): ok: lifetime %s, scopes %s", cl.Name, cl.Provider, cfg.ClientAuthMethod(i),
			tok.ExpiresAt.Sub(tok.IssuedAt).Round(time.Second), scopes)
		if tok.CertThumbprint != "" {
			line += ", bound to certificate " + tok.CertThumbprint
		}
		fmt.Fprintln(out, line)
	}
	if failed > 0 {
		return fmt.Errorf("-check=online: %d of %d clients failed", failed, len(cfg.Clients))
	}
	return nil
}
