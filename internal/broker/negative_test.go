package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestRejectedCredentialsRememberedForAnyScopes: an invalid_client
// rejection is remembered by the credentials (provider, client id,
// secret), so the same wrong secret with other scopes, audience or none
// costs no upstream request within negative_ttl; another secret still
// does, and so does the same one after negative_ttl.
func TestRejectedCredentialsRememberedForAnyScopes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &stubFetcher{fn: func(context.Context, int64, upstream.Request) (upstream.Token, error) {
			return upstream.Token{}, &upstream.Error{Kind: upstream.ErrInvalidClient, Provider: "p", Status: 401, Code: "invalid_client"}
		}}
		b := newBroker(t, f, Config{NegativeTTL: 5 * time.Second})
		wrong := func(sec string, scopes ...string) Request {
			return Request{Selector: Selector{Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String(sec)}, Scopes: scopes}}
		}
		for _, req := range []Request{
			wrong("wrong", "a"), wrong("wrong", "b"), wrong("wrong"), wrong("wrong", "a", "c"),
			{Selector: Selector{Credentials: wrong("wrong").Selector.Credentials, Audience: "x"}},
		} {
			if _, err := b.GetToken(context.Background(), req); !errors.Is(err, upstream.ErrInvalidClient) {
				t.Fatalf("scopes %v: got %v, want ErrInvalidClient", req.Selector.Scopes, err)
			}
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("same wrong secret with 5 scope sets: got %d upstream requests, want 1", got)
		}
		b.GetToken(context.Background(), wrong("other", "a"))
		if got := f.calls.Load(); got != 2 {
			t.Errorf("another secret: got %d upstream requests, want 2", got)
		}
		time.Sleep(5 * time.Second)
		b.GetToken(context.Background(), wrong("wrong", "b"))
		if got := f.calls.Load(); got != 3 {
			t.Errorf("after negative_ttl: got %d upstream requests, want 3", got)
		}
	})
}

// TestMinTTLBeyondRefreshWindow is the README's walkthrough: 5-minute
// tokens and min_ttl 240s. Every call is served at any age of the token
// (a new token when the held one has less than 240s left, coalesced: one
// upstream request per 60 s at most), and a min_ttl a new token could not
// satisfy is an error that names the largest one the key can serve.
func TestMinTTLBeyondRefreshWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := lifetimeFetcher(5 * time.Minute)
		b := newBroker(t, f, Config{})
		runBroker(t, b)
		req := Request{Selector: held().Selector, MinTTL: 240 * time.Second}
		start := time.Now()
		for time.Since(start) < 20*time.Minute {
			tok := mustGet(t, b, req)
			if left := time.Until(tok.ExpiresAt); left < 240*time.Second {
				t.Fatalf("at %v: served a token with %v left, want at least 240s", time.Since(start), left)
			}
			time.Sleep(5 * time.Second)
		}
		// 20 minutes of calls: a new token at most every 60 s.
		if got := f.calls.Load(); got > 21 {
			t.Errorf("got %d upstream requests in 20 minutes, want at most 21", got)
		}
		_, err := b.GetToken(context.Background(), Request{Selector: held().Selector, MinTTL: 280 * time.Second})
		if !errors.Is(err, ErrTokenTooShort) {
			t.Fatalf("min_ttl 280s of 5m tokens: got %v, want ErrTokenTooShort", err)
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "min_ttl" || !strings.Contains(fe.Rule, "at most 4m30s") || !strings.Contains(fe.Rule, "5m0s") || !strings.Contains(fe.Rule, "min_remaining (30s)") {
			t.Errorf("got %v, want a min_ttl field error stating at most 4m30s, the 5m0s lifetime and min_remaining (30s)", err)
		}
	})
}
