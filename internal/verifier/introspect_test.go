package verifier

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestIntrospection checks opaque tokens at an RFC 7662 endpoint with the
// broker's client: active ones verify (and are cached), inactive ones are
// refused, concurrent checks of one token make one request, and a failing
// endpoint is ErrUnavailable.
func TestIntrospection(t *testing.T) {
	var hits atomic.Int64
	hold := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		id, sec, ok := r.BasicAuth()
		if !ok || id != "rs-client" || sec != "rs-secret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.PostFormValue("token") {
		case "opaque-active":
			<-hold
			_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "client_id": "c1", "scope": "orders/read", "sub": "c1", "exp": time.Now().Add(time.Hour).Unix()})
		case "opaque-broken":
			w.WriteHeader(http.StatusBadGateway)
		default:
			_ = json.NewEncoder(w).Encode(map[string]any{"active": false})
		}
	}))
	defer srv.Close()
	obs := &recorder{}
	cfg := testConfig(Provider{Name: "p", Introspection: &Introspection{URL: srv.URL, ClientID: "rs-client", ClientSecret: secret.String("rs-secret")}})
	cfg.Observer = obs
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			c, err := verify(t, v, Request{Token: "opaque-active", RequiredScopes: []string{"orders/read"}})
			if err != nil || c.ClientID != "c1" || c.Provider != "p" {
				t.Errorf("Verify(active) = %+v, %v", c, err)
			}
		})
	}
	for hits.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	close(hold)
	wg.Wait()
	if got := hits.Load(); got != 1 {
		t.Errorf("introspection requests for 50 concurrent checks = %d, want 1", got)
	}
	v.cache.wait()
	if _, err := verify(t, v, Request{Token: "opaque-active"}); err != nil {
		t.Fatal(err)
	}
	if got, want := obs.last(), "p/ok/cache"; got != want {
		t.Errorf("second check observed %q, want %q", got, want)
	}
	if _, err := verify(t, v, Request{Token: "opaque-revoked"}); reasonOf(err) != ReasonInactive {
		t.Errorf("Verify(inactive) = %v, want inactive", err)
	}
	_, err = verify(t, v, Request{Token: "opaque-broken"})
	if !errorsIsUnavailable(err) || strings.Contains(err.Error(), "opaque-broken") {
		t.Errorf("Verify(endpoint failing) = %v, want ErrUnavailable without the token", err)
	}
}
