package app

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// TestShutdownCancelsSlowFetch: with a GetToken waiting on a token endpoint
// that never answers, shutdown (the ctx SIGTERM cancels) cancels the
// broker's fetch as it begins: the caller gets a clean Unavailable, and
// Serve returns without waiting out the shutdown timeout, the fetch
// timeout or the provider's timeout (each an hour here, so a broker that
// waited would outlast the test).
func TestShutdownCancelsSlowFetch(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	hang := func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case arrived <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
	}
	s := startStackHandler(t, func(cfg *config.Config, _ *devissuer.Issuer) {
		cfg.Server.ShutdownTimeout = config.Duration(time.Hour)
		cfg.Cache.FetchTimeout = config.Duration(time.Hour)
		cfg.Providers[0].Timeout = config.Duration(time.Hour)
	}, hang)
	t.Cleanup(func() { close(release) }) // before the endpoint closes

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	callErr := make(chan error, 1)
	go func() {
		_, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
		callErr <- err
	}()
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("the token request never reached the endpoint")
	}

	served := make(chan struct{})
	go func() {
		s.stop() // cancels Serve's ctx and waits for Serve to return
		close(served)
	}()
	select {
	case err := <-callErr:
		if st := status.Convert(err); st.Code() != codes.Unavailable {
			t.Errorf("caller waiting on the fetch at shutdown: got %v, want Unavailable", err)
		} else if st.Message() != "the broker is shutting down" {
			t.Errorf("caller's message: got %q, want %q", st.Message(), "the broker is shutting down")
		}
	case <-ctx.Done():
		t.Fatal("the caller was not answered at shutdown")
	}
	select {
	case <-served:
	case <-ctx.Done():
		t.Fatal("Serve did not return: shutdown waited for the token endpoint")
	}
}
