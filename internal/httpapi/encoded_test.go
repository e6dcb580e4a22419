package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestTokenBodyEncodedOncePerSecond checks that token answers for the same
// token within one second of expires_in share one encoding, and that a new
// second or a new token is encoded afresh and is what the caller gets.
func TestTokenBodyEncodedOncePerSecond(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var mu sync.Mutex
	access := "at-body-one"
	h, srv := serveStub(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		mu.Lock()
		defer mu.Unlock()
		return broker.Token{AccessToken: secret.String(access), TokenType: "Bearer", Scopes: []string{"a", "b"},
			ExpiresAt: now.Add(time.Hour), KeyID: "k-body"}, nil
	}}})
	var clock time.Time
	h.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return clock
	}
	set := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		f()
	}
	check := func(step, wantToken string, wantExpiresIn float64) {
		t.Helper()
		a := postForm(t, srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic("id", "secret"))
		if got, _ := a.json["expires_in"].(float64); a.status != http.StatusOK || a.str("access_token") != wantToken ||
			got != wantExpiresIn || a.str("scope") != "a b" || a.str("token_type") != "Bearer" {
			t.Fatalf("%s: got %d %s, want 200 with %s expires_in %v", step, a.status, a.body, wantToken, wantExpiresIn)
		}
		checkNoStore(t, a)
	}
	steps := []struct {
		name          string
		at            time.Duration // after now
		token         string
		wantExpiresIn float64
		wantEncodes   int64
	}{
		{"first", 0, "at-body-one", 3600, 1},
		{"same second", 400 * time.Millisecond, "at-body-one", 3599, 1}, // 3599.6 s left
		{"same second again", 900 * time.Millisecond, "at-body-one", 3599, 0},
		{"next second", 1500 * time.Millisecond, "at-body-one", 3598, 1},
		{"new token", 1600 * time.Millisecond, "at-body-two", 3598, 1},
	}
	for _, s := range steps {
		set(func() { clock, access = now.Add(s.at), s.token })
		before := bodyEncodes.Load()
		check(s.name, s.token, s.wantExpiresIn)
		if got := bodyEncodes.Load() - before; got != s.wantEncodes {
			t.Errorf("%s: got %d encodings, want %d", s.name, got, s.wantEncodes)
		}
	}
}
