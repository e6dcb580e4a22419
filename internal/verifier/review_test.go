package verifier

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestIntrospectionUsesCurrentSecret: the introspection client's secret is
// asked for on each request, so a rotated secret is sent at once; with
// Post the id and secret go in the form instead of Basic.
func TestIntrospectionUsesCurrentSecret(t *testing.T) {
	for _, post := range []bool{false, true} {
		var got sync.Map // token -> secret seen
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, sec, ok := r.BasicAuth()
			if post {
				if ok {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				id, sec = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
			}
			tok := r.PostFormValue("token")
			got.Store(tok, sec)
			if id != "rs-client" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "client_id": "c1", "exp": time.Now().Add(time.Hour).Unix()})
		}))
		var cur atomic.Pointer[secret.String]
		first := secret.String("first-secret")
		cur.Store(&first)
		v := newTestVerifier(t, nil, Provider{Name: "p", Introspection: &Introspection{URL: srv.URL, ClientID: "rs-client",
			ClientSecret: "startup-secret", Secret: func() secret.String { return *cur.Load() }, Post: post}})
		if _, err := verify(t, v, Request{Token: "opaque-1"}); err != nil {
			t.Fatal(err)
		}
		second := secret.String("rotated-secret")
		cur.Store(&second)
		if _, err := verify(t, v, Request{Token: "opaque-2"}); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		for tok, w := range map[string]string{"opaque-1": "first-secret", "opaque-2": "rotated-secret"} {
			if g, _ := got.Load(tok); g != w {
				t.Errorf("post=%v: introspecting %s sent secret %v, want %q", post, tok, g, w)
			}
		}
	}
}

// TestCognitoIntrospectionChecksClientIDs: an introspection answer need not
// carry token_use (flavour cognito), but the client_ids rule still applies:
// an active token of another client is refused.
func TestCognitoIntrospectionChecksClientIDs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := strings.TrimPrefix(r.PostFormValue("token"), "opaque-")
		_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "client_id": client, "exp": time.Now().Add(time.Hour).Unix()})
	}))
	defer srv.Close()
	v := newTestVerifier(t, nil, Provider{Name: "p", Flavour: FlavourCognito, ClientIDs: []string{"mine"},
		Introspection: &Introspection{URL: srv.URL, ClientID: "rs-client", ClientSecret: "s"}})
	if c, err := verify(t, v, Request{Token: "opaque-mine"}); err != nil || c.ClientID != "mine" {
		t.Fatalf("Verify(own client) = %+v, %v", c, err)
	}
	if _, err := verify(t, v, Request{Token: "opaque-other"}); reasonOf(err) != ReasonWrongClient {
		t.Fatalf("Verify(other client) = %v, want WRONG_CLIENT", err)
	}
}

// TestKidlessTokenIsCached: a token without a kid header, verified by a
// key that has one, is answered from the cache the second time (the entry
// records the verifying key's id, which the key set still has).
func TestKidlessTokenIsCached(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	iss := newIssuerServer(t, k)
	obs := &recorder{}
	v := newTestVerifier(t, obs, Provider{Name: "p", Issuer: iss.URL()})
	signer := k
	signer.kid = ""
	tok := signer.sign(t, claimsFor(iss.URL()), nil)
	if _, err := verify(t, v, Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	v.cache.wait()
	if _, err := verify(t, v, Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	if got, want := obs.last(), "p/ok/cache"; got != want {
		t.Errorf("second check of a kid-less token observed %q, want %q", got, want)
	}
}

// TestRedirectsMustPassTheURLRule: the JWKS, discovery and introspection
// clients follow a redirect only to a URL the configuration would allow;
// an https to http downgrade is refused and never requested.
func TestRedirectsMustPassTheURLRule(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k.pub}})
	if err != nil {
		t.Fatal(err)
	}
	const issuer = "https://issuer.example"
	var downgraded atomic.Int64
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r}
		switch {
		case r.URL.Scheme == "http":
			downgraded.Add(1)
			body := string(jwks)
			switch r.URL.Path {
			case DiscoveryPath:
				body = `{"issuer":"` + issuer + `","jwks_uri":"` + issuer + `/jwks"}`
			case "/introspect":
				body = fmt.Sprintf(`{"active":true,"client_id":"c1","exp":%d}`, time.Now().Add(time.Hour).Unix())
			}
			resp.Body = io.NopCloser(strings.NewReader(body))
		default:
			resp.StatusCode = http.StatusFound
			resp.Header.Set("Location", "http://"+r.URL.Host+r.URL.Path)
			resp.Body = io.NopCloser(strings.NewReader(""))
		}
		return resp, nil
	})
	cfg := testConfig(Provider{Name: "p", Issuer: issuer, JWKSURI: issuer + "/jwks"},
		Provider{Name: "q", Introspection: &Introspection{URL: issuer + "/introspect", ClientID: "rs", ClientSecret: "s"}})
	cfg.HTTPClient = &http.Client{Transport: rt}
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := verify(t, v, Request{Token: k.sign(t, claimsFor(issuer), nil)}); !errorsIsUnavailable(err) {
		t.Errorf("Verify(JWT, JWKS redirected to http) = %v, want ErrUnavailable", err)
	}
	if _, err := verify(t, v, Request{Token: "opaque", Provider: "q"}); !errorsIsUnavailable(err) {
		t.Errorf("Verify(opaque, introspection redirected to http) = %v, want ErrUnavailable", err)
	}
	ks, err := NewKeySource(KeySourceConfig{Name: "sa", Issuer: issuer, HTTPClient: &http.Client{Transport: rt}, MinRefreshInterval: cfg.MinRefreshInterval, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	if _, err := ks.Lookup(context.Background(), "k1"); !errorsIsUnavailable(err) {
		t.Errorf("KeySource.Lookup(discovery redirected to http) = %v, want ErrUnavailable", err)
	}
	if n := downgraded.Load(); n != 0 {
		t.Errorf("%d requests followed a redirect to http, want 0", n)
	}
}

// TestNoFetchStartsAfterClose: once closed, neither the verifier's nor a
// KeySource's keys are fetched again (no WaitGroup Add after Close's
// Wait), and a Run after Close returns.
func TestNoFetchStartsAfterClose(t *testing.T) {
	k := newKey(t, jose.ES256, "k1")
	iss := newIssuerServer(t, k)
	cfg := testConfig(Provider{Name: "p", Issuer: iss.URL()})
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	if _, ok := v.byName["p"].keys.startRefresh(true); ok {
		t.Error("startRefresh after Close started a fetch")
	}
	_ = v.Run(context.Background()) // returns at once: no fetch may start
	ks, err := NewKeySource(KeySourceConfig{Name: "sa", Issuer: iss.URL(), MinRefreshInterval: cfg.MinRefreshInterval, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ks.Close()
	if _, err := ks.Lookup(context.Background(), "k1"); !errorsIsUnavailable(err) {
		t.Errorf("Lookup after Close = %v, want ErrUnavailable", err)
	}
	if n := iss.hits.Load(); n != 0 {
		t.Errorf("JWKS fetched %d times after Close, want 0", n)
	}
}
