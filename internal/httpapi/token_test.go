package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// oauth2Ctx is a context for x/oauth2 calls whose HTTP client times out.
func oauth2Ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Timeout: testTimeout})
}

// authStyles are the two client authentication methods of RFC 6749
// section 2.3.1, as x/oauth2 names them.
var authStyles = []struct {
	name  string
	style oauth2.AuthStyle
}{
	{"client_secret_basic", oauth2.AuthStyleInHeader},
	{"client_secret_post", oauth2.AuthStyleInParams},
}

// TestOAuth2Client drives the endpoint with x/oauth2's client-credentials
// client, the way an existing application would after changing its token
// URL: a token is obtained, then served from the cache.
func TestOAuth2Client(t *testing.T) {
	for _, as := range authStyles {
		t.Run(as.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			cc := clientcredentials.Config{
				ClientID:     testClientID,
				ClientSecret: testSecret,
				TokenURL:     e.srv.URL + TokenPath,
				Scopes:       []string{"api/read"},
				AuthStyle:    as.style,
			}
			ctx := oauth2Ctx(t)
			before := time.Now()
			tok, err := cc.Token(ctx)
			if err != nil {
				t.Fatalf("Token: got error %v, want none", err)
			}
			if tok.AccessToken == "" {
				t.Fatalf("access token: got empty, want a token")
			}
			if got, want := tok.TokenType, "Bearer"; got != want {
				t.Errorf("token_type: got %q, want %q", got, want)
			}
			if got, want := tok.Extra("scope"), "api/read"; got != want {
				t.Errorf("scope: got %v, want %q", got, want)
			}
			if lo, hi := before.Add(testLifetime-10*time.Second), time.Now().Add(testLifetime); tok.Expiry.Before(lo) || tok.Expiry.After(hi) {
				t.Errorf("expiry: got %v, want between %v and %v", tok.Expiry, lo, hi)
			}
			if got, want := e.requests(), int64(1); got != want {
				t.Fatalf("issuer requests after the first token: got %d, want %d", got, want)
			}

			again, err := cc.Token(ctx)
			if err != nil {
				t.Fatalf("second Token: got error %v, want none", err)
			}
			if again.AccessToken != tok.AccessToken {
				t.Errorf("second token: got a different token, want the cached one")
			}
			if got, want := e.requests(), int64(1); got != want {
				t.Errorf("issuer requests after the second token: got %d, want %d (served from the cache)", got, want)
			}
		})
	}
}

// TestSameKeysAsBroker checks that the endpoint files tokens under the
// key the gRPC API's pass-through credentials use: one token, one upstream
// request, whichever door the caller takes.
func TestSameKeysAsBroker(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := postForm(t, e.srv.URL+TokenPath, url.Values{
		"grant_type": {"client_credentials"},
		"scope":      {"api/write api/read"},
	}, basic(testClientID, testSecret))
	if a.status != http.StatusOK {
		t.Fatalf("status: got %d (%s), want 200", a.status, a.body)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	tok, err := e.broker.GetToken(ctx, broker.Request{Selector: broker.Selector{
		Credentials: &broker.Credentials{Provider: "dev", ClientID: testClientID, ClientSecret: secret.String(testSecret)},
		Scopes:      []string{"api/read", "api/write"},
	}})
	if err != nil {
		t.Fatalf("broker GetToken: %v", err)
	}
	if tok.AccessToken.Reveal() != a.str("access_token") {
		t.Errorf("broker token: got a different token, want the one the endpoint served")
	}
	if got, want := e.requests(), int64(1); got != want {
		t.Errorf("issuer requests: got %d, want %d", got, want)
	}
}

// TestConcurrentCallersShareOneRequest checks that simultaneous callers of
// one key cost one upstream request.
func TestConcurrentCallersShareOneRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	cc := clientcredentials.Config{ClientID: testClientID, ClientSecret: testSecret, TokenURL: e.srv.URL + TokenPath, AuthStyle: oauth2.AuthStyleInHeader}
	ctx := oauth2Ctx(t)
	const callers = 8
	tokens := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			tok, err := cc.Token(ctx)
			errs[i] = err
			if err == nil {
				tokens[i] = tok.AccessToken
			}
		})
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: got error %v, want none", i, errs[i])
		}
		if tokens[i] != tokens[0] {
			t.Errorf("caller %d: got a different token, want the shared one", i)
		}
	}
	if got, want := e.requests(), int64(1); got != want {
		t.Errorf("issuer requests: got %d, want %d", got, want)
	}
}

// TestPerProviderPath checks that /oauth2/{provider}/token reaches that
// provider, and that /oauth2/token needs a default.
func TestPerProviderPath(t *testing.T) {
	e := newEnv(t, envOptions{providers: []string{"alpha", "beta"}})
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {testClientID}, "client_secret": {testSecret}}
	for _, p := range []string{"alpha", "beta"} {
		a := postForm(t, e.srv.URL+"/oauth2/"+p+"/token", form, nil)
		if a.status != http.StatusOK {
			t.Fatalf("%s: status: got %d (%s), want 200", p, a.status, a.body)
		}
		if got, want := e.issuers[p].Requests(), int64(1); got != want {
			t.Errorf("%s: issuer requests: got %d, want %d", p, got, want)
		}
	}
	for _, tc := range []struct {
		path, wantDesc string
	}{
		{TokenPath, "/oauth2/{provider}/token"},
		{"/oauth2/gamma/token", "configured provider"},
	} {
		a := postForm(t, e.srv.URL+tc.path, form, nil)
		if a.status != http.StatusBadRequest || a.str("error") != "invalid_request" || !strings.Contains(a.str("error_description"), tc.wantDesc) {
			t.Errorf("%s: got %d %s, want 400 invalid_request naming %q", tc.path, a.status, a.body, tc.wantDesc)
		}
	}
	if got, want := e.requests(), int64(2); got != want {
		t.Errorf("issuer requests: got %d, want %d", got, want)
	}

	withDefault := newEnv(t, envOptions{providers: []string{"alpha", "beta"}, defaultProvider: "beta"})
	if a := postForm(t, withDefault.srv.URL+TokenPath, form, nil); a.status != http.StatusOK {
		t.Fatalf("default provider: status: got %d (%s), want 200", a.status, a.body)
	}
	if got, want := withDefault.issuers["beta"].Requests(), int64(1); got != want {
		t.Errorf("default provider: issuer requests: got %d, want %d", got, want)
	}
}

// TestWrongSecret checks that a caller with a wrong secret gets
// invalid_client, never the token cached for the right one.
func TestWrongSecret(t *testing.T) {
	for _, as := range authStyles {
		t.Run(as.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			ctx := oauth2Ctx(t)
			good := clientcredentials.Config{ClientID: testClientID, ClientSecret: testSecret, TokenURL: e.srv.URL + TokenPath, AuthStyle: as.style}
			tok, err := good.Token(ctx)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			bad := good
			bad.ClientSecret = "wrong-" + testSecret
			_, err = bad.Token(ctx)
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) {
				t.Fatalf("wrong secret: got error %v, want a *oauth2.RetrieveError", err)
			}
			if re.Response.StatusCode != http.StatusUnauthorized || re.ErrorCode != "invalid_client" {
				t.Errorf("wrong secret: got %d %q, want 401 invalid_client", re.Response.StatusCode, re.ErrorCode)
			}
			if strings.Contains(string(re.Body), tok.AccessToken) {
				t.Errorf("wrong secret: the answer contains the cached token")
			}
			if strings.Contains(string(re.Body), testSecret) {
				t.Errorf("wrong secret: the answer contains the secret")
			}
			challenge := re.Response.Header.Get("WWW-Authenticate")
			if wantChallenge := as.style == oauth2.AuthStyleInHeader; (challenge != "") != wantChallenge {
				t.Errorf("WWW-Authenticate: got %q, want present=%v", challenge, wantChallenge)
			}
			if got, want := e.requests(), int64(2); got != want {
				t.Errorf("issuer requests: got %d, want %d", got, want)
			}
		})
	}
}

// TestInvalidScope checks that the endpoint's invalid_scope reaches the
// caller as such.
func TestInvalidScope(t *testing.T) {
	e := newEnv(t, envOptions{})
	cc := clientcredentials.Config{ClientID: testClientID, ClientSecret: testSecret, TokenURL: e.srv.URL + TokenPath,
		Scopes: []string{"api/admin"}, AuthStyle: oauth2.AuthStyleInParams}
	_, err := cc.Token(oauth2Ctx(t))
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("got error %v, want a *oauth2.RetrieveError", err)
	}
	if re.Response.StatusCode != http.StatusBadRequest || re.ErrorCode != "invalid_scope" {
		t.Errorf("got %d %q, want 400 invalid_scope", re.Response.StatusCode, re.ErrorCode)
	}
	if re.Response.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control: got %q, want no-store", re.Response.Header.Get("Cache-Control"))
	}
}

// TestAudienceAndResource checks that audience and resource reach the
// issuer (they end up in the token's aud claim) and select another key.
func TestAudienceAndResource(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, extra := range []url.Values{
		{},
		{"audience": {"orders"}},
		{"resource": {"https://api.example.com/"}},
	} {
		form := url.Values{"grant_type": {"client_credentials"}}
		for k, v := range extra {
			form[k] = v
		}
		a := postForm(t, e.srv.URL+TokenPath, form, basic(testClientID, testSecret))
		if a.status != http.StatusOK {
			t.Fatalf("%v: status: got %d (%s), want 200", extra, a.status, a.body)
		}
		claims := jwtClaims(t, a.str("access_token"))
		want := extra.Get("audience") + extra.Get("resource")
		if got := claimAudience(claims); got != want {
			t.Errorf("%v: aud claim: got %q, want %q", extra, got, want)
		}
	}
	if got, want := e.requests(), int64(3); got != want {
		t.Errorf("issuer requests: got %d, want %d (one per key)", got, want)
	}
}

// jwtClaims decodes a JWT's payload without verifying it.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token: got %d parts, want a JWT", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("token payload: %v", err)
	}
	return m
}

// claimAudience renders the aud claim, a string or a list, as one string.
func claimAudience(m map[string]any) string {
	switch v := m["aud"].(type) {
	case string:
		return v
	case []any:
		var parts []string
		for _, p := range v {
			s, _ := p.(string)
			parts = append(parts, s)
		}
		return strings.Join(parts, " ")
	}
	return ""
}

// TestExpiresInIsRemainingLife checks that expires_in counts from the
// answer, not from the issue: with the handler's clock ten minutes ahead,
// a fresh one-hour token is reported with fifty minutes left.
func TestExpiresInIsRemainingLife(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.handler.now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	a := postForm(t, e.srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic(testClientID, testSecret))
	if a.status != http.StatusOK {
		t.Fatalf("status: got %d (%s), want 200", a.status, a.body)
	}
	got, _ := a.json["expires_in"].(float64)
	lo, hi := (testLifetime - 10*time.Minute - 10*time.Second).Seconds(), (testLifetime - 10*time.Minute).Seconds()
	if got < lo || got > hi {
		t.Errorf("expires_in: got %v, want between %v and %v", got, lo, hi)
	}
	checkNoStore(t, a)
}

// TestExpiresInExact checks expires_in against a token of known expiry.
func TestExpiresInExact(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		left time.Duration
		want float64
	}{
		{90*time.Second + 999*time.Millisecond, 90},
		{90 * time.Second, 90},
		{999 * time.Millisecond, 0},
	} {
		h, srv := serveStub(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
			return broker.Token{AccessToken: "tok", TokenType: "Bearer", ExpiresAt: now.Add(tc.left), KeyID: "k1"}, nil
		}}})
		h.now = func() time.Time { return now }
		a := postForm(t, srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic("id", "secret"))
		if got, _ := a.json["expires_in"].(float64); a.status != http.StatusOK || got != tc.want {
			t.Errorf("%v left: got %d expires_in %v, want 200 expires_in %v", tc.left, a.status, a.json["expires_in"], tc.want)
		}
		if _, ok := a.json["scope"]; ok {
			t.Errorf("%v left: scope: got %v, want omitted (none granted)", tc.left, a.json["scope"])
		}
	}
}

func TestExpiresIn(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want int64
	}{
		{time.Hour, 3600},
		{time.Hour - time.Nanosecond, 3599},
		{1500 * time.Millisecond, 1},
		{time.Nanosecond, 0},
		{0, 0},
		{-time.Minute, 0},
	} {
		if got := expiresIn(tc.in); got != tc.want {
			t.Errorf("expiresIn(%v): got %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestNoSecretInLogs checks the log lines of successful and failed
// requests: one Info line per request, with the key id, and never the
// secret, a token or the Authorization header.
func TestNoSecretInLogs(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := postForm(t, e.srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic(testClientID, testSecret))
	if a.status != http.StatusOK {
		t.Fatalf("status: got %d (%s), want 200", a.status, a.body)
	}
	tok := a.str("access_token")
	bad := postForm(t, e.srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic(testClientID, testSecret+"x"))
	if bad.status != http.StatusUnauthorized {
		t.Fatalf("wrong secret: status: got %d, want 401", bad.status)
	}
	misplaced := postForm(t, e.srv.URL+TokenPath+"?client_secret="+url.QueryEscape(testSecret), url.Values{"grant_type": {"client_credentials"}}, nil)
	if misplaced.status != http.StatusBadRequest {
		t.Fatalf("secret in URL: status: got %d, want 400", misplaced.status)
	}

	logs := e.logs.String()
	authz := basic(testClientID, testSecret).Get("Authorization")
	for _, leak := range []string{testSecret, url.QueryEscape(testSecret), tok, authz, strings.TrimPrefix(authz, "Basic ")} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs contain a secret, a token or credentials:\n%s", logs)
		}
	}
	for _, body := range []string{bad.body, misplaced.body} {
		if strings.Contains(body, testSecret) || strings.Contains(body, url.QueryEscape(testSecret)) || strings.Contains(body, tok) {
			t.Errorf("error answer contains the secret or the token: %s", body)
		}
	}
	var lines []string
	for l := range strings.SplitSeq(logs, "\n") {
		if strings.Contains(l, `msg="token request"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 3 {
		t.Fatalf("token request log lines: got %d, want 3:\n%s", len(lines), logs)
	}
	// A token sent is logged at debug (log.access: failures, the
	// default), refusals at info.
	for i, want := range []struct{ status, level string }{{"status=200", "level=DEBUG"}, {"status=401", "level=INFO"}, {"status=400", "level=INFO"}} {
		if !strings.Contains(lines[i], want.status) || !strings.Contains(lines[i], want.level) || !strings.Contains(lines[i], "time_ms=") {
			t.Errorf("log line %d: got %s, want %s with %s and time_ms", i, lines[i], want.level, want.status)
		}
	}
	for i := range 2 {
		if !strings.Contains(lines[i], "key_id=") {
			t.Errorf("log line %d: got %s, want a key_id", i, lines[i])
		}
	}
}

// TestAccessLogSuccessesHTTP: with LogSuccesses (log.access: all) a token
// sent is logged at info like a refusal; without it, at debug (see
// TestNoSecretInLogs).
func TestAccessLogSuccessesHTTP(t *testing.T) {
	e := newEnv(t, envOptions{logSuccesses: true})
	if a := postForm(t, e.srv.URL+TokenPath, url.Values{"grant_type": {"client_credentials"}}, basic(testClientID, testSecret)); a.status != http.StatusOK {
		t.Fatalf("status: got %d (%s), want 200", a.status, a.body)
	}
	var found bool
	for l := range strings.SplitSeq(e.logs.String(), "\n") {
		if strings.Contains(l, `msg="token request"`) && strings.Contains(l, "status=200") {
			found = true
			if !strings.Contains(l, "level=INFO") {
				t.Errorf("success logged as %s, want level=INFO", l)
			}
		}
	}
	if !found {
		t.Errorf("no line for the token sent:\n%s", e.logs.String())
	}
}
