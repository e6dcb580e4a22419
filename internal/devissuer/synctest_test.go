package devissuer

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// TestFakeClock shows that tokens take their times from time.Now, so the
// issuer follows a synctest bubble's fake clock (driven without sockets).
func TestFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss, err := New(Config{Lifetime: time.Minute, Clients: []Client{plainClient}})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		h := iss.Handler()
		set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: iss.PublicKey(), KeyID: iss.KeyID()}}}

		issue := func() Claims {
			t.Helper()
			form := url.Values{"grant_type": {"client_credentials"}}
			req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicHeader(plainClient.ID, plainClient.Secret))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status: got %d (%s), want 200", rec.Code, rec.Body)
			}
			var body tokenResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("decode response: %v", err)
			}
			return verify(t, set, body.AccessToken)
		}

		start := time.Now()
		first := issue()
		if got, want := int64(*first.IssuedAt), start.Unix(); got != want {
			t.Errorf("first iat: got %d, want %d (the bubble's clock)", got, want)
		}
		if got, want := int64(*first.Expiry), start.Add(time.Minute).Unix(); got != want {
			t.Errorf("first exp: got %d, want %d", got, want)
		}
		if first.Issuer != "http://example.com" {
			t.Errorf("iss: got %q, want http://example.com (the request Host)", first.Issuer)
		}

		time.Sleep(time.Hour)
		iss.SetLifetime(2 * time.Hour)
		second := issue()
		if got, want := int64(*second.IssuedAt), start.Add(time.Hour).Unix(); got != want {
			t.Errorf("iat an hour later: got %d, want %d", got, want)
		}
		if got, want := int64(*second.Expiry), start.Add(3*time.Hour).Unix(); got != want {
			t.Errorf("exp an hour later with 2h lifetime: got %d, want %d", got, want)
		}
	})
}

// TestFallbackIssuer checks the iss claim of a request without a Host.
func TestFallbackIssuer(t *testing.T) {
	iss, err := New(Config{Clients: []Client{plainClient}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {plainClient.ID}, "client_secret": {plainClient.Secret}}
	req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(form.Encode()))
	req.Host = ""
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	iss.Handler().ServeHTTP(rec, req)
	var body tokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("token: got status %d, error %v, want 200", rec.Code, err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: iss.PublicKey(), KeyID: iss.KeyID()}}}
	if got := verify(t, set, body.AccessToken).Issuer; got != FallbackIssuer {
		t.Errorf("iss: got %q, want %q", got, FallbackIssuer)
	}
}
