package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

func TestNewValidation(t *testing.T) {
	good := testProvider("https://auth.example.com/oauth2/token")
	tests := []struct {
		name      string
		edit      func(*Provider, *Options)
		wantField string // "" means valid
	}{
		{"valid", func(*Provider, *Options) {}, ""},
		{"valid post", func(p *Provider, _ *Options) { p.AuthMethod = AuthPost }, ""},
		{"zero default lifetime", func(p *Provider, _ *Options) { p.DefaultLifetime = 0 }, "DefaultLifetime"},
		{"empty name", func(p *Provider, _ *Options) { p.Name = "" }, "Name"},
		{"empty url", func(p *Provider, _ *Options) { p.TokenURL = "" }, "TokenURL"},
		{"unparsable url", func(p *Provider, _ *Options) { p.TokenURL = "http://[::1" }, "TokenURL"},
		{"relative url", func(p *Provider, _ *Options) { p.TokenURL = "/oauth2/token" }, "TokenURL"},
		{"ftp url", func(p *Provider, _ *Options) { p.TokenURL = "ftp://host/token" }, "TokenURL"},
		{"url without host", func(p *Provider, _ *Options) { p.TokenURL = "https:///token" }, "TokenURL"},
		{"url with user", func(p *Provider, _ *Options) { p.TokenURL = "https://u:p@host/token" }, "TokenURL"},
		{"url with fragment", func(p *Provider, _ *Options) { p.TokenURL = "https://host/token#x" }, "TokenURL"},
		{"unknown auth", func(p *Provider, _ *Options) { p.AuthMethod = "private_key_jwt" }, "AuthMethod"},
		{"empty auth", func(p *Provider, _ *Options) { p.AuthMethod = "" }, "AuthMethod"},
		{"zero timeout", func(p *Provider, _ *Options) { p.Timeout = 0 }, "Timeout"},
		{"negative timeout", func(p *Provider, _ *Options) { p.Timeout = -time.Second }, "Timeout"},
		{"zero rate", func(p *Provider, _ *Options) { p.RateLimit = 0 }, "RateLimit"},
		{"NaN rate", func(p *Provider, _ *Options) { p.RateLimit = math.NaN() }, "RateLimit"},
		{"zero burst", func(p *Provider, _ *Options) { p.Burst = 0 }, "Burst"},
		{"zero pass-through share", func(p *Provider, _ *Options) { p.PassthroughShare = 0 }, "PassthroughShare"},
		{"pass-through share above 1", func(p *Provider, _ *Options) { p.PassthroughShare = 1.5 }, "PassthroughShare"},
		{"NaN caller share", func(p *Provider, _ *Options) { p.PassthroughCallerShare = math.NaN() }, "PassthroughCallerShare"},
		{"negative client share", func(p *Provider, _ *Options) { p.PassthroughClientShare = -0.1 }, "PassthroughClientShare"},
		{"whole budget to pass-through", func(p *Provider, _ *Options) {
			p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare = 1, 1, 1
		}, ""},
		{"negative default lifetime", func(p *Provider, _ *Options) { p.DefaultLifetime = -time.Second }, "DefaultLifetime"},
		{"negative attempts", func(_ *Provider, o *Options) { o.MaxAttempts = -1 }, "MaxAttempts"},
		{"negative base", func(_ *Provider, o *Options) { o.BaseBackoff = -1 }, "BaseBackoff"},
		{"max below base", func(_ *Provider, o *Options) {
			o.BaseBackoff = time.Second
			o.MaxBackoff = time.Millisecond
		}, "MaxBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, o := good, testOptions()
			tt.edit(&p, &o)
			c, err := New(p, o)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("New: got error %v, want nil", err)
				}
				if got := c.Provider(); got != p {
					t.Errorf("Provider(): got %+v, want %+v", got, p)
				}
				return
			}
			if err == nil {
				t.Fatalf("New: got nil error, want one naming %s", tt.wantField)
			}
			if !strings.Contains(err.Error(), tt.wantField+":") {
				t.Errorf("New: got error %q, want it to name %s", err, tt.wantField)
			}
		})
	}
}

// TestNewRefusesZeroValues: New has no defaults of its own (they live in
// the configuration); a zero value is refused with the field's name.
func TestNewRefusesZeroValues(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Provider, *Options)
	}{
		{"MaxAttempts", func(_ *Provider, o *Options) { o.MaxAttempts = 0 }},
		{"BaseBackoff", func(_ *Provider, o *Options) { o.BaseBackoff = 0 }},
		{"MaxBackoff", func(_ *Provider, o *Options) { o.MaxBackoff = 0 }},
		{"DefaultLifetime", func(p *Provider, _ *Options) { p.DefaultLifetime = 0 }},
	} {
		p, o := testProvider("http://localhost/token"), testOptions()
		tc.edit(&p, &o)
		if _, err := New(p, o); err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("zero %s: got error %v, want one naming %s", tc.field, err, tc.field)
		}
	}
}

func TestNewCopiesHTTPClient(t *testing.T) {
	own := &http.Client{}
	o := testOptions()
	o.HTTPClient = own
	c, err := New(testProvider("http://localhost/token"), o)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	if c.maxAttempts != o.MaxAttempts || c.baseBackoff != o.BaseBackoff || c.maxBackoff != o.MaxBackoff {
		t.Errorf("options: got attempts %d, base %v, max %v, want %d, %v, %v",
			c.maxAttempts, c.baseBackoff, c.maxBackoff, o.MaxAttempts, o.BaseBackoff, o.MaxBackoff)
	}
	if c.hc == own || own.CheckRedirect != nil || c.hc.CheckRedirect == nil {
		t.Error("HTTP client: got the caller's client or no redirect policy, want a private copy that refuses redirects")
	}
}

func TestFetchBasicAuth(t *testing.T) {
	tests := []struct {
		name, id, secret string
	}{
		{"plain", "client-1", "secret"},
		{"colon in id", "a:b", "p@ss word+/"},
		{"reserved characters", "id%20+&=", "%41:?#[]@!$'()*,;"},
		{"non-ASCII", "clïent", "pässwörd✓"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
			if _, err := fetch(t, c, Request{ClientID: tt.id, ClientSecret: secret.String(tt.secret)}); err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			reqs := ep.requests()
			if len(reqs) != 1 {
				t.Fatalf("requests: got %d, want 1", len(reqs))
			}
			r := reqs[0]
			if !r.basicOK {
				t.Fatalf("Authorization: got %q, want Basic credentials", r.authz)
			}
			// RFC 6749 section 2.3.1: each part is form-encoded before Basic.
			if r.basicUser != url.QueryEscape(tt.id) || r.basicPass != url.QueryEscape(tt.secret) {
				t.Errorf("Basic parts: got %q:%q, want %q:%q", r.basicUser, r.basicPass, url.QueryEscape(tt.id), url.QueryEscape(tt.secret))
			}
			gotID, err1 := url.QueryUnescape(r.basicUser)
			gotSecret, err2 := url.QueryUnescape(r.basicPass)
			if err1 != nil || err2 != nil || gotID != tt.id || gotSecret != tt.secret {
				t.Errorf("decoded credentials: got %q:%q (%v, %v), want %q:%q", gotID, gotSecret, err1, err2, tt.id, tt.secret)
			}
			if r.form.Has("client_id") || r.form.Has("client_secret") {
				t.Errorf("form: got %v, want no client_id or client_secret with client_secret_basic", r.form)
			}
			if r.method != http.MethodPost {
				t.Errorf("method: got %s, want POST", r.method)
			}
			if r.contentType != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type: got %q, want application/x-www-form-urlencoded", r.contentType)
			}
			if r.accept != "application/json" {
				t.Errorf("Accept: got %q, want application/json", r.accept)
			}
			if got := r.form.Get("grant_type"); got != "client_credentials" {
				t.Errorf("grant_type: got %q, want client_credentials", got)
			}
		})
	}
}

func TestFetchPostAuth(t *testing.T) {
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
	p := testProvider(ep.srv.URL)
	p.AuthMethod = AuthPost
	c, _ := newTestClient(t, p, Options{})
	r := Request{ClientID: "a:b", ClientSecret: secret.String("p@ss word+/&=")}
	if _, err := fetch(t, c, r); err != nil {
		t.Fatalf("Fetch: got error %v, want nil", err)
	}
	got := ep.requests()[0]
	if got.authz != "" {
		t.Errorf("Authorization: got %q, want none with client_secret_post", got.authz)
	}
	if got.form.Get("client_id") != "a:b" || got.form.Get("client_secret") != "p@ss word+/&=" {
		t.Errorf("form credentials: got %q / %q, want %q / %q",
			got.form.Get("client_id"), got.form.Get("client_secret"), "a:b", "p@ss word+/&=")
	}
	if got.form.Get("grant_type") != "client_credentials" {
		t.Errorf("grant_type: got %q, want client_credentials", got.form.Get("grant_type"))
	}
}

func TestFetchParams(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Request)
		want url.Values
	}{
		{"none", func(*Request) {}, url.Values{"grant_type": {"client_credentials"}}},
		{"scopes", func(r *Request) { r.Scopes = []string{"api/read", "api/write"} }, url.Values{
			"grant_type": {"client_credentials"}, "scope": {"api/read api/write"},
		}},
		{"audience", func(r *Request) { r.Audience = "https://api.example.com" }, url.Values{
			"grant_type": {"client_credentials"}, "audience": {"https://api.example.com"},
		}},
		{"resource", func(r *Request) { r.Resource = "https://rs.example.com/x?y=1" }, url.Values{
			"grant_type": {"client_credentials"}, "resource": {"https://rs.example.com/x?y=1"},
		}},
		{"all", func(r *Request) {
			r.Scopes = []string{"a"}
			r.Audience = "aud"
			r.Resource = "urn:res"
		}, url.Values{
			"grant_type": {"client_credentials"}, "scope": {"a"}, "audience": {"aud"}, "resource": {"urn:res"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
			r := testRequest()
			tt.edit(&r)
			if _, err := fetch(t, c, r); err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if got := ep.requests()[0].form; fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("form: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFetchInvalidRequest(t *testing.T) {
	tests := []struct {
		name      string
		edit      func(*Request)
		wantField string
	}{
		{"empty client id", func(r *Request) { r.ClientID = "" }, "ClientID"},
		{"empty secret", func(r *Request) { r.ClientSecret = "" }, "ClientSecret"},
		{"empty scope", func(r *Request) { r.Scopes = []string{"a", ""} }, "Scopes[1]"},
		{"scope with space", func(r *Request) { r.Scopes = []string{"a b"} }, "Scopes[0]"},
		{"scope with quote", func(r *Request) { r.Scopes = []string{`a"`} }, "Scopes[0]"},
		{"scope too long", func(r *Request) { r.Scopes = []string{strings.Repeat("s", MaxScopeBytes+1)} }, "Scopes[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
			r := testRequest()
			tt.edit(&r)
			_, err := fetch(t, c, r)
			var ue *Error
			if !errors.As(err, &ue) || ue.Kind != ErrRejected || !ue.Local {
				t.Fatalf("Fetch: got %v, want a Local ErrRejected *Error", err)
			}
			if !strings.Contains(err.Error(), tt.wantField+":") {
				t.Errorf("error: got %q, want it to name %s", err, tt.wantField)
			}
			if n := ep.count(); n != 0 {
				t.Errorf("requests: got %d, want 0", n)
			}
		})
	}
}

func TestFetchLifetime(t *testing.T) {
	sentAt := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	jwtWithIat := makeJWT(t, sentAt.Add(-10*time.Second), sentAt.Add(50*time.Minute))
	jwtNoIat := makeJWT(t, time.Time{}, sentAt.Add(20*time.Minute))
	jwtNoExp := makeJWT(t, sentAt, time.Time{})
	tests := []struct {
		name        string
		body        map[string]any
		want        time.Duration
		wantWarning bool
	}{
		{"expires_in number", map[string]any{"access_token": "opaque", "token_type": "Bearer", "expires_in": 3600}, time.Hour, false},
		{"expires_in string", map[string]any{"access_token": "opaque", "token_type": "Bearer", "expires_in": "1800"}, 30 * time.Minute, false},
		{"expires_in wins over JWT", map[string]any{"access_token": jwtNoIat, "token_type": "Bearer", "expires_in": 60}, time.Minute, false},
		{"JWT exp and iat: the remaining life", map[string]any{"access_token": jwtWithIat, "token_type": "Bearer"}, 50 * time.Minute, false},
		{"JWT exp only", map[string]any{"access_token": jwtNoIat, "token_type": "Bearer"}, 20 * time.Minute, false},
		{"JWT without exp", map[string]any{"access_token": jwtNoExp, "token_type": "Bearer"}, 45 * time.Minute, true},
		{"opaque token, no expires_in", map[string]any{"access_token": "opaque-token-value", "token_type": "Bearer"}, 45 * time.Minute, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { writeJSON(w, http.StatusOK, tt.body) })
			logs := &testkit.LogBuffer{}
			p := testProvider(ep.srv.URL)
			p.DefaultLifetime = 45 * time.Minute
			c, _ := newTestClient(t, p, Options{Logger: testkit.TextLogger(logs)})
			c.now = func() time.Time { return sentAt }
			tok, err := fetch(t, c, testRequest())
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if !tok.IssuedAt.Equal(sentAt) {
				t.Errorf("IssuedAt: got %v, want %v", tok.IssuedAt, sentAt)
			}
			if got := tok.ExpiresAt.Sub(sentAt); got != tt.want {
				t.Errorf("lifetime: got %v, want %v", got, tt.want)
			}
			if got, want := tok.AccessToken.Reveal(), tt.body["access_token"]; got != want {
				t.Errorf("AccessToken: got %q, want %q", got, want)
			}
			if tok.TokenType != "Bearer" {
				t.Errorf("TokenType: got %q, want Bearer", tok.TokenType)
			}
			out := logs.String()
			if got := strings.Contains(out, "level=WARN"); got != tt.wantWarning {
				t.Errorf("warning logged: got %v, want %v (log: %q)", got, tt.wantWarning, out)
			}
			if tt.wantWarning && !strings.Contains(out, "provider=test") {
				t.Errorf("warning: got %q, want it to name the provider", out)
			}
			tokText := tt.body["access_token"].(string)
			if strings.Contains(out, tokText) || strings.Contains(out, "s3cr3t-value") {
				t.Errorf("log: got %q, want no token or secret in it", out)
			}
		})
	}
}

func TestFetchScopes(t *testing.T) {
	tests := []struct {
		name      string
		respScope any // nil: absent
		requested []string
		want      []string
	}{
		{"granted as reported", "a b  c", []string{"a"}, []string{"a", "b", "c"}},
		{"absent: requested", nil, []string{"x", "y"}, []string{"x", "y"}},
		{"empty string: requested", "", []string{"x"}, []string{"x"}},
		{"none either way", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"access_token": "t", "token_type": "Bearer", "expires_in": 60}
			if tt.respScope != nil {
				body["scope"] = tt.respScope
			}
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { writeJSON(w, http.StatusOK, body) })
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
			r := testRequest()
			r.Scopes = tt.requested
			tok, err := fetch(t, c, r)
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if !slices.Equal(tok.Scopes, tt.want) {
				t.Errorf("Scopes: got %q, want %q", tok.Scopes, tt.want)
			}
		})
	}
}

func TestFetchErrorResponses(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string // sent as is; JSON when it starts with '{'
		header     http.Header
		wantKind   error
		wantCode   string
		wantDesc   string
		wantMsg    string // exact Error() when set
		wantRetry  bool
		wantAfter  time.Duration
		wantStatus int
	}{
		{
			name: "401 invalid_client", status: 401,
			body:     `{"error":"invalid_client","error_description":"Client authentication failed"}`,
			wantKind: ErrInvalidClient, wantCode: "invalid_client", wantDesc: "Client authentication failed",
			wantMsg: `provider "test": invalid_client (401): Client authentication failed`,
		},
		{
			name: "400 invalid_client", status: 400, body: `{"error":"invalid_client"}`,
			wantKind: ErrInvalidClient, wantCode: "invalid_client",
			wantMsg: `provider "test": invalid_client (400)`,
		},
		{
			name: "400 invalid_scope", status: 400,
			body:     `{"error":"invalid_scope","error_description":"Invalid scope requested"}`,
			wantKind: ErrInvalidScope, wantCode: "invalid_scope", wantDesc: "Invalid scope requested",
		},
		{
			name: "400 unauthorized_client", status: 400, body: `{"error":"unauthorized_client"}`,
			wantKind: ErrUnauthorizedClient, wantCode: "unauthorized_client",
		},
		{
			name: "403 unauthorized_client", status: 403, body: `{"error":"unauthorized_client"}`,
			wantKind: ErrUnauthorizedClient, wantCode: "unauthorized_client",
		},
		{
			name: "400 invalid_request", status: 400, body: `{"error":"invalid_request","error_description":"bad"}`,
			wantKind: ErrRejected, wantCode: "invalid_request", wantDesc: "bad",
		},
		{
			name: "400 unsupported_grant_type", status: 400, body: `{"error":"unsupported_grant_type"}`,
			wantKind: ErrRejected, wantCode: "unsupported_grant_type",
		},
		{
			name: "401 without body", status: 401, body: "",
			wantKind: ErrInvalidClient, wantDesc: "Unauthorized",
		},
		{
			name: "404 html", status: 404, body: "<html>not here</html>",
			wantKind: ErrRejected, wantDesc: "Not Found",
			wantMsg: `provider "test": rejected (404): Not Found`,
		},
		{
			name: "400 Cognito TooManyRequestsException", status: 400,
			body: `{"__type":"TooManyRequestsException","message":"Rate exceeded"}`,
			// AWS's message is not relayed: only error and error_description are.
			wantKind: ErrThrottled, wantCode: "TooManyRequestsException", wantRetry: true, wantAfter: time.Millisecond,
		},
		{
			name: "400 AWS fields besides an OAuth error", status: 400,
			body:     `{"error":"invalid_request","__type":"SomeType","message":"echoed text"}`,
			wantKind: ErrRejected, wantCode: "invalid_request",
			wantMsg: `provider "test": invalid_request (400)`,
		},
		{
			name: "400 qualified __type", status: 400,
			body:     `{"__type":"com.amazonaws.cognito#TooManyRequestsException"}`,
			wantKind: ErrThrottled, wantCode: "TooManyRequestsException", wantRetry: true, wantAfter: time.Millisecond,
		},
		{
			name: "400 error TooManyRequestsException", status: 400, body: `{"error":"TooManyRequestsException"}`,
			wantKind: ErrThrottled, wantCode: "TooManyRequestsException", wantRetry: true, wantAfter: time.Millisecond,
		},
		{
			name: "429 with Retry-After", status: 429, body: "", header: http.Header{"Retry-After": {"3"}},
			wantKind: ErrThrottled, wantDesc: "Too Many Requests", wantRetry: true, wantAfter: 3 * time.Second,
			wantMsg: `provider "test": throttled (429): Too Many Requests; retry after 3s`,
		},
		{
			name: "500 html", status: 500, body: "<html><body>Internal error</body></html>",
			wantKind: ErrUnavailable, wantDesc: "Internal Server Error", wantRetry: true,
		},
		{
			name: "503 with Retry-After", status: 503, body: "", header: http.Header{"Retry-After": {"1"}},
			wantKind: ErrUnavailable, wantDesc: "Service Unavailable", wantRetry: true, wantAfter: time.Second,
		},
		{
			name: "408", status: 408, body: "",
			wantKind: ErrUnavailable, wantDesc: "Request Timeout", wantRetry: true,
		},
		{
			name: "200 malformed", status: 200, body: `{"access_token":`,
			wantKind: ErrUnavailable, wantDesc: "malformed response", wantRetry: true,
		},
		{
			name: "200 missing access_token", status: 200, body: `{"token_type":"Bearer","expires_in":60}`,
			wantKind: ErrUnavailable, wantDesc: "malformed response: missing access_token", wantRetry: true,
		},
		{
			name: "200 missing token_type", status: 200, body: `{"access_token":"tok","expires_in":60}`,
			wantKind: ErrUnavailable, wantDesc: "malformed response: missing token_type", wantRetry: true,
		},
		{
			name: "200 html", status: 200, body: `<html>login page</html>`,
			wantKind: ErrUnavailable, wantDesc: "malformed response", wantRetry: true,
		},
		{
			name: "redirect is not followed", status: 302, body: "", header: http.Header{"Location": {"/elsewhere"}},
			wantKind: ErrRejected, wantDesc: "unexpected redirect",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				for k, v := range tt.header {
					w.Header()[k] = v
				}
				if strings.HasPrefix(tt.body, "{") {
					w.Header().Set("Content-Type", "application/json")
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			})
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{MaxAttempts: 1})
			_, err := fetch(t, c, testRequest())
			var ue *Error
			if !errors.As(err, &ue) {
				t.Fatalf("Fetch: got %v (%T), want *Error", err, err)
			}
			if !errors.Is(err, tt.wantKind) {
				t.Errorf("kind: got %v, want %v", ue.Kind, tt.wantKind)
			}
			if ue.Status != tt.status {
				t.Errorf("Status: got %d, want %d", ue.Status, tt.status)
			}
			if ue.Code != tt.wantCode {
				t.Errorf("Code: got %q, want %q", ue.Code, tt.wantCode)
			}
			if ue.Description != tt.wantDesc {
				t.Errorf("Description: got %q, want %q", ue.Description, tt.wantDesc)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Errorf("Error(): got %q, want %q", err.Error(), tt.wantMsg)
			}
			if ue.Retryable() != tt.wantRetry {
				t.Errorf("Retryable(): got %v, want %v", ue.Retryable(), tt.wantRetry)
			}
			if ue.RetryAfter != tt.wantAfter {
				t.Errorf("RetryAfter: got %v, want %v", ue.RetryAfter, tt.wantAfter)
			}
			if ue.Provider != "test" || ue.Local {
				t.Errorf("Provider, Local: got %q, %v, want \"test\", false", ue.Provider, ue.Local)
			}
			if n := ep.count(); n != 1 {
				t.Errorf("requests: got %d, want 1", n)
			}
		})
	}
}

func TestFetchOversizedBody(t *testing.T) {
	pad := strings.Repeat("x", maxBodySize)
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		writeJSON(w, http.StatusOK, map[string]any{"access_token": "t", "token_type": "Bearer", "expires_in": 60, "pad": pad})
	})
	c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{MaxAttempts: 1})
	_, err := fetch(t, c, testRequest())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: got %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "malformed response") || strings.Contains(err.Error(), "xxxx") {
		t.Errorf("error: got %q, want a malformed-response error without the body", err)
	}
}

func TestFetchRetries(t *testing.T) {
	tests := []struct {
		name     string
		first    func(w http.ResponseWriter)
		wantWait func(t *testing.T, ds []time.Duration)
	}{
		{
			name: "TooManyRequestsException then success",
			first: func(w http.ResponseWriter) {
				writeJSON(w, http.StatusBadRequest, map[string]string{"__type": "TooManyRequestsException", "message": "Rate exceeded"})
			},
			wantWait: func(t *testing.T, ds []time.Duration) {
				if len(ds) != 1 || ds[0] < 0 || ds[0] > time.Millisecond {
					t.Errorf("waits: got %v, want one in [0, 1ms] (full jitter)", ds)
				}
			},
		},
		{
			name: "429 Retry-After seconds then success",
			first: func(w http.ResponseWriter) {
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(http.StatusTooManyRequests)
			},
			wantWait: func(t *testing.T, ds []time.Duration) {
				if !slices.Equal(ds, []time.Duration{7 * time.Second}) {
					t.Errorf("waits: got %v, want [7s] (Retry-After)", ds)
				}
			},
		},
		{
			name:  "503 then success",
			first: func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) },
			wantWait: func(t *testing.T, ds []time.Duration) {
				if len(ds) != 1 || ds[0] > time.Millisecond {
					t.Errorf("waits: got %v, want one in [0, 1ms]", ds)
				}
			},
		},
		{
			name:  "500 html then success",
			first: func(w http.ResponseWriter) { http.Error(w, "<h1>oops</h1>", http.StatusInternalServerError) },
			wantWait: func(t *testing.T, ds []time.Duration) {
				if len(ds) != 1 {
					t.Errorf("waits: got %v, want one", ds)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, n int) {
				if n == 1 {
					tt.first(w)
					return
				}
				okToken(w)
			})
			c, w := newTestClient(t, testProvider(ep.srv.URL), Options{})
			tok, err := fetch(t, c, testRequest())
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if tok.AccessToken.Reveal() != "tok-123" {
				t.Errorf("token: got %q, want tok-123", tok.AccessToken.Reveal())
			}
			if n := ep.count(); n != 2 || tok.Requests != 2 {
				t.Errorf("requests: got %d (token says %d), want 2", n, tok.Requests)
			}
			tt.wantWait(t, w.all())
		})
	}
}

func TestFetchRetryAfterHTTPDate(t *testing.T) {
	// The fake clock stands still at a whole second not after the real
	// clock, so the 10s test deadline leaves room for the 5s wait.
	now := time.Now().Truncate(time.Second)
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		if n == 1 {
			w.Header().Set("Retry-After", now.Add(5*time.Second).Format(http.TimeFormat))
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		okToken(w)
	})
	c, w := newTestClient(t, testProvider(ep.srv.URL), Options{})
	c.now = func() time.Time { return now }
	if _, err := fetch(t, c, testRequest()); err != nil {
		t.Fatalf("Fetch: got error %v, want nil", err)
	}
	if got := w.all(); !slices.Equal(got, []time.Duration{5 * time.Second}) {
		t.Errorf("waits: got %v, want [5s]", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{" 120 ", 2 * time.Minute, true},
		{"86400", maxRetryAfter, true},
		{"99999999999999999999999", maxRetryAfter, true},
		{"1.5", 0, false},
		{"-3", 0, false},
		{"soon", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(24 * time.Hour).Format(http.TimeFormat), maxRetryAfter, true},
		{now.Add(30 * time.Second).Format(time.RFC850), 30 * time.Second, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q): got %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestFetchGivesUpAfterMaxAttempts(t *testing.T) {
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusBadGateway) })
	c, w := newTestClient(t, testProvider(ep.srv.URL), Options{MaxAttempts: 4, BaseBackoff: time.Second, MaxBackoff: 3 * time.Second})
	var ceilings []int64
	c.jitter = func(n int64) int64 { ceilings = append(ceilings, n); return n - 1 }
	_, err := fetch(t, c, testRequest())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: got %v, want ErrUnavailable", err)
	}
	var ue *Error
	if n := ep.count(); n != 4 || !errors.As(err, &ue) || ue.Requests != 4 {
		t.Errorf("requests: got %d (error says %+v), want 4", n, ue)
	}
	wantCeilings := []int64{int64(time.Second) + 1, int64(2*time.Second) + 1, int64(3*time.Second) + 1}
	if !slices.Equal(ceilings, wantCeilings) {
		t.Errorf("jitter bounds: got %v, want %v", ceilings, wantCeilings)
	}
	if got, want := w.all(), []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits: got %v, want %v", got, want)
	}
}

func TestFetchNonRetryableIsNotRetried(t *testing.T) {
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_scope"})
	})
	c, w := newTestClient(t, testProvider(ep.srv.URL), Options{})
	_, err := fetch(t, c, testRequest())
	if !errors.Is(err, ErrInvalidScope) {
		t.Fatalf("Fetch: got %v, want ErrInvalidScope", err)
	}
	if n := ep.count(); n != 1 {
		t.Errorf("requests: got %d, want 1", n)
	}
	if len(w.all()) != 0 {
		t.Errorf("waits: got %v, want none", w.all())
	}
}

func TestFetchStopsAtDeadline(t *testing.T) {
	t.Run("backoff", func(t *testing.T) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusServiceUnavailable) })
		c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{MaxAttempts: 10, BaseBackoff: time.Second, MaxBackoff: 4 * time.Second})
		clock := &fakeClock{now: time.Now()}
		c.now, c.wait = clock.Now, clock.wait
		c.jitter = func(n int64) int64 { return n - 1 } // always the ceiling
		ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(10*time.Second))
		defer cancel()
		_, err := c.Fetch(ctx, testRequest())
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Fetch: got %v, want ErrUnavailable", err)
		}
		// Waits 1s, 2s, 4s (7s in all); a fourth of 4s would end after the
		// 10s deadline, so there are four requests.
		if n := ep.count(); n != 4 {
			t.Errorf("requests: got %d, want 4", n)
		}
		if got, want := clock.ds, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}; !slices.Equal(got, want) {
			t.Errorf("waits: got %v, want %v", got, want)
		}
	})
	t.Run("Retry-After beyond deadline", func(t *testing.T) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
			w.Header().Set("Retry-After", "30")
			writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "slow_down"})
		})
		c, w := newTestClient(t, testProvider(ep.srv.URL), Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Fetch(ctx, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || ue.Kind != ErrThrottled {
			t.Fatalf("Fetch: got %v, want ErrThrottled", err)
		}
		if ue.RetryAfter != 30*time.Second {
			t.Errorf("RetryAfter: got %v, want 30s", ue.RetryAfter)
		}
		if n := ep.count(); n != 1 {
			t.Errorf("requests: got %d, want 1", n)
		}
		if len(w.all()) != 0 {
			t.Errorf("waits: got %v, want none", w.all())
		}
	})
	t.Run("throttled backoff beyond deadline", func(t *testing.T) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"__type": "TooManyRequestsException"})
		})
		c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{BaseBackoff: time.Minute, MaxBackoff: time.Minute})
		c.jitter = func(n int64) int64 { return n - 1 }
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Fetch(ctx, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || ue.Kind != ErrThrottled || ue.RetryAfter != time.Minute {
			t.Fatalf("Fetch: got %v, want ErrThrottled with RetryAfter 1m", err)
		}
	})
}

func TestFetchContextDone(t *testing.T) {
	t.Run("before the first attempt", func(t *testing.T) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
		c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.Fetch(ctx, testRequest())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch: got %v, want context.Canceled", err)
		}
		if n := ep.count(); n != 0 {
			t.Errorf("requests: got %d, want 0", n)
		}
	})
	t.Run("while waiting to retry", func(t *testing.T) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusServiceUnavailable) })
		c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		c.wait = func(ctx context.Context, _ time.Duration) error {
			cancel()
			<-ctx.Done()
			return ctx.Err()
		}
		_, err := c.Fetch(ctx, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || ue.Kind != ErrUnavailable || ue.Status != http.StatusServiceUnavailable {
			t.Fatalf("Fetch: got %v, want the last upstream error (503)", err)
		}
	})
}

func TestFetchAttemptTimeout(t *testing.T) {
	release := make(chan struct{})
	ep := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-r.Context().Done():
		case <-release:
		case <-time.After(testTimeout):
		}
	})
	defer close(release)
	p := testProvider(ep.srv.URL)
	p.Timeout = 20 * time.Millisecond
	c, _ := newTestClient(t, p, Options{MaxAttempts: 2})
	_, err := fetch(t, c, testRequest())
	var ue *Error
	if !errors.As(err, &ue) || ue.Kind != ErrUnavailable || ue.Status != 0 {
		t.Fatalf("Fetch: got %v, want ErrUnavailable without status", err)
	}
	if !strings.Contains(ue.Description, "timed out") {
		t.Errorf("Description: got %q, want a timeout", ue.Description)
	}
	if n := ep.count(); n != 2 {
		t.Errorf("requests: got %d, want 2", n)
	}
}

func TestFetchConnectionRefused(t *testing.T) {
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
	u := ep.srv.URL
	ep.srv.Close()
	c, _ := newTestClient(t, testProvider(u), Options{MaxAttempts: 2})
	_, err := fetch(t, c, testRequest())
	var ue *Error
	if !errors.As(err, &ue) || ue.Kind != ErrUnavailable || ue.Status != 0 {
		t.Fatalf("Fetch: got %v, want ErrUnavailable without status", err)
	}
	if !strings.HasPrefix(ue.Description, "request failed") {
		t.Errorf("Description: got %q, want it to start with \"request failed\"", ue.Description)
	}
}

func TestFetchBudget(t *testing.T) {
	newBudgetClient := func(t *testing.T) (*endpoint, *Client, *waits) {
		ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) { okToken(w) })
		p := testProvider(ep.srv.URL)
		p.RateLimit = 0.001 // one request per 1000 s
		p.Burst = 1
		c, w := newTestClient(t, p, Options{})
		if _, err := fetch(t, c, testRequest()); err != nil {
			t.Fatalf("first Fetch: got error %v, want nil", err)
		}
		return ep, c, w
	}
	t.Run("exhausted before the deadline", func(t *testing.T) {
		ep, c, w := newBudgetClient(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Fetch(ctx, testRequest())
		var ue *Error
		if !errors.As(err, &ue) || !errors.Is(err, ErrThrottled) || !ue.Local {
			t.Fatalf("Fetch: got %v, want a Local ErrThrottled *Error", err)
		}
		if ue.RetryAfter <= 0 {
			t.Errorf("RetryAfter: got %v, want > 0", ue.RetryAfter)
		}
		if ue.Description != "request budget exhausted" {
			t.Errorf("Description: got %q, want \"request budget exhausted\"", ue.Description)
		}
		if n := ep.count(); n != 1 {
			t.Errorf("requests: got %d, want 1 (none for the throttled Fetch)", n)
		}
		if len(w.all()) != 0 {
			t.Errorf("waits: got %v, want none", w.all())
		}
		// The cancelled reservation gave its token back: a third Fetch is
		// told the same wait, not twice it.
		_, err2 := c.Fetch(ctx, testRequest())
		var ue2 *Error
		if !errors.As(err2, &ue2) || ue2.RetryAfter > ue.RetryAfter {
			t.Errorf("third Fetch: got %v, want RetryAfter <= %v", err2, ue.RetryAfter)
		}
	})
	t.Run("waits when the deadline allows", func(t *testing.T) {
		ep, c, w := newBudgetClient(t)
		if _, err := fetch(t, c, Request{ClientID: "x", ClientSecret: "y"}); err == nil || !errors.Is(err, ErrThrottled) {
			t.Fatalf("Fetch with 10s deadline: got %v, want ErrThrottled", err)
		}
		ctx, cancel := context.WithCancel(context.Background()) // no deadline
		defer cancel()
		if _, err := c.Fetch(ctx, testRequest()); err != nil {
			t.Fatalf("Fetch without deadline: got error %v, want nil", err)
		}
		ds := w.all()
		if len(ds) != 1 || ds[0] <= 900*time.Second || ds[0] > 1000*time.Second {
			t.Errorf("waits: got %v, want one of about 1000s", ds)
		}
		if n := ep.count(); n != 2 {
			t.Errorf("requests: got %d, want 2", n)
		}
	})
}

func TestErrorsNeverLeak(t *testing.T) {
	const (
		sec      = "Sup3r-S3cret/+="
		tokenStr = "eyJleaked-access-token"
		marker   = "RAW-BODY-MARKER"
	)
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{"secret in error_description", 400, `{"error":"invalid_client","error_description":"bad secret ` + sec + ` for client"}`},
		{"encoded secret in error_description", 401, `{"error":"invalid_client","error_description":"got ` + url.QueryEscape(sec) + `"}`},
		{"secret in error code", 400, `{"error":"` + sec + `"}`},
		{"secret in message", 400, `{"__type":"X","message":"` + sec + `"}`},
		{"html 500 body", 500, `<html><body>` + marker + ` ` + sec + ` ` + tokenStr + `</body></html>`},
		{"token in malformed 200", 200, `{"access_token":"` + tokenStr + `","expires_in":60, "x":"` + marker + `"}`},
		{"token with bad expires_in", 200, `{"access_token":"` + tokenStr + `","token_type":"Bearer","expires_in":"` + marker + `"}`},
		{"garbage 200", 200, marker + sec},
		{"control characters", 400, `{"error":"invalid_request","error_description":"a\u0000b\u001b[31m` + sec + `\n` + marker + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			})
			logs := &testkit.LogBuffer{}
			p := testProvider(ep.srv.URL)
			c, _ := newTestClient(t, p, Options{MaxAttempts: 2, Logger: testkit.TextLogger(logs)})
			_, err := fetch(t, c, Request{ClientID: "client-1", ClientSecret: secret.String(sec)})
			if err == nil {
				t.Fatal("Fetch: got nil error, want one")
			}
			for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), logs.String()} {
				for _, bad := range []string{sec, url.QueryEscape(sec), tokenStr, "<html>"} {
					if strings.Contains(text, bad) {
						t.Errorf("got %q, want no %q in it", text, bad)
					}
				}
				if tt.status != 400 && strings.Contains(text, marker) {
					t.Errorf("got %q, want no raw body in it", text)
				}
			}
			var ue *Error
			if errors.As(err, &ue) {
				for _, r := range ue.Description + ue.Code {
					if r < 0x20 || r > 0x7e {
						t.Errorf("Description/Code: got %q, want printable ASCII only", ue.Description+ue.Code)
						break
					}
				}
			}
		})
	}
}

func TestDescriptionTruncated(t *testing.T) {
	long := strings.Repeat("é", 50) + strings.Repeat("y", 500)
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": long})
	})
	c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
	_, err := fetch(t, c, testRequest())
	var ue *Error
	if !errors.As(err, &ue) {
		t.Fatalf("Fetch: got %v, want *Error", err)
	}
	if len(ue.Description) > maxDescriptionLen {
		t.Errorf("Description length: got %d, want <= %d", len(ue.Description), maxDescriptionLen)
	}
	if want := strings.Repeat("?", 50) + "yyy"; !strings.HasPrefix(ue.Description, want) {
		t.Errorf("Description: got %q, want prefix %q", ue.Description, want)
	}
}

func TestFetchConcurrent(t *testing.T) {
	// Three of the first nine requests fail (n counts from 1): fewer than
	// MaxAttempts (4), so however the fetches interleave, none can see only
	// failures. (Failing every third request for ever let one fetch draw
	// four failures in a row now and then.)
	ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		if n%3 == 0 && n <= 9 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		okToken(w)
	})
	c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{})
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := fetch(t, c, testRequest())
			errs <- err
		}()
	}
	for range 20 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("Fetch: got error %v, want nil", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("Fetch: timed out")
		}
	}
}

// TestErrorBodyNeverLeaksSecretForms: an error body that echoes the secret
// in any form (issue 10, point 7) reaches neither the error's text nor the
// log; fields other than error and error_description are never quoted.
func TestErrorBodyNeverLeaksSecretForms(t *testing.T) {
	const marker = "OTHER-FIELD-MARKER"
	for _, tt := range scrubForms() {
		t.Run(tt.name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]string{
				"error":             "invalid_client",
				"error_description": "client secret " + tt.form + " is wrong",
				"message":           marker + tt.form,
				"detail":            marker,
			})
			ep := newEndpoint(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write(body)
			})
			logs := &testkit.LogBuffer{}
			c, _ := newTestClient(t, testProvider(ep.srv.URL), Options{Logger: testkit.TextLogger(logs)})
			_, err := fetch(t, c, Request{ClientID: "client-1", ClientSecret: secret.String(scrubSecret)})
			if !errors.Is(err, ErrInvalidClient) {
				t.Fatalf("Fetch: got %v, want invalid_client", err)
			}
			for _, text := range []string{err.Error(), logs.String()} {
				rest := text
				if tt.keep != "" {
					rest = strings.ReplaceAll(rest, tt.keep, "")
				}
				if leak := longestShared(rest, tt.form); len(leak) >= scrubRun {
					t.Errorf("got %q, which holds %q of the secret's form", text, leak)
				}
				if strings.Contains(text, marker) {
					t.Errorf("got %q, want no field but error and error_description quoted", text)
				}
			}
			if msg := err.Error(); !strings.Contains(msg, secret.Redacted) || !strings.Contains(msg, "client secret ") || !strings.HasSuffix(msg, " is wrong") {
				t.Errorf("Error(): got %q, want the scrubbed error_description", msg)
			}
		})
	}
}

// TestMalformedAnswerNeverQuoted (issue 10, point 7): what Go's HTTP client
// quotes of an answer it cannot parse (status line, header lines,
// Content-Length) stays out of the error and the log.
func TestMalformedAnswerNeverQuoted(t *testing.T) {
	const marker = "RAW-ANSWER-MARKER"
	for _, tt := range []struct{ name, answer string }{
		{"status line", "garbage " + marker + "\r\n\r\n"},
		{"status code", "HTTP/1.1 2x0 " + marker + "\r\n\r\n"},
		{"header line", "HTTP/1.1 400 Bad Request\r\nbad header " + marker + "\r\n\r\n"},
		{"content length", "HTTP/1.1 400 Bad Request\r\nContent-Length: " + marker + "\r\n\r\n"},
		{"transfer encoding", "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: " + marker + "\r\n\r\n"},
	} {
		answer := tt.answer
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					buf := make([]byte, 4096)
					_, _ = conn.Read(buf)
					_, _ = conn.Write([]byte(answer))
					_ = conn.Close()
				}
			}()
			logs := &testkit.LogBuffer{}
			c, _ := newTestClient(t, testProvider("http://"+l.Addr().String()+"/token"), Options{MaxAttempts: 2, Logger: testkit.TextLogger(logs)})
			_, err = fetch(t, c, testRequest())
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Fetch: got %v, want ErrUnavailable", err)
			}
			for _, text := range []string{err.Error(), logs.String()} {
				if strings.Contains(text, marker) {
					t.Errorf("got %q, want nothing of the answer quoted", text)
				}
			}
			if !strings.Contains(err.Error(), "request failed") {
				t.Errorf("Error(): got %q, want it to say the request failed", err)
			}
		})
	}
}
