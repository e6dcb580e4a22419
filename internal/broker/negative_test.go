package broker

import (
	"context"
	"errors"
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
