package devissuer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// testTimeout bounds every blocking operation in these tests.
const testTimeout = 10 * time.Second

// Clients whose ids and secrets hold the characters RFC 6749 §2.3.1's
// form-encoding exists for.
var (
	plainClient = Client{ID: "svc-a", Secret: "s3cret-a", Scopes: []string{"orders/read", "orders/write"}}
	oddClient   = Client{ID: "odd:id+with@chars and space", Secret: "p:a+s s@w%rd=&", Scopes: []string{"api/read", "api/admin"}}
	noScopes    = Client{ID: "bare", Secret: "bare-secret"}
)

func testConfig() Config {
	return Config{Clients: []Client{plainClient, oddClient, noScopes}}
}

// newTestServer starts an Issuer behind a real HTTP server.
func newTestServer(t *testing.T, cfg Config) (*Issuer, *httptest.Server) {
	t.Helper()
	iss, err := New(cfg)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	return iss, srv
}

var httpClient = &http.Client{Timeout: testTimeout}

// basicHeader encodes id and secret as client_secret_basic does.
func basicHeader(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// tokenReq describes one request to the token endpoint.
type tokenReq struct {
	method      string     // default POST
	contentType string     // default application/x-www-form-urlencoded
	form        url.Values // the body
	rawBody     string     // replaces form when set
	authz       []string   // Authorization header values
}

// response is a decoded answer of the token endpoint.
type response struct {
	status int
	header http.Header
	body   map[string]any
}

func (r response) str(name string) string {
	s, _ := r.body[name].(string)
	return s
}

func do(t *testing.T, baseURL string, tr tokenReq) response {
	t.Helper()
	method := cmp(tr.method, http.MethodPost)
	body := cmp(tr.rawBody, tr.form.Encode())
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, baseURL+TokenPath, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	req.Header.Set("Content-Type", cmp(tr.contentType, "application/x-www-form-urlencoded"))
	for _, a := range tr.authz {
		req.Header.Add("Authorization", a)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", TokenPath, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	out := response{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(raw, &out.body); err != nil {
		t.Fatalf("response body %q is not JSON: %v", raw, err)
	}
	return out
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// fetchJWKS gets the key set from the issuer's endpoint.
func fetchJWKS(t *testing.T, baseURL string) jose.JSONWebKeySet {
	t.Helper()
	resp, err := httpClient.Get(baseURL + JWKSPath)
	if err != nil {
		t.Fatalf("GET %s: %v", JWKSPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: got status %d, want 200", JWKSPath, resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatalf("decode JWKS: %v", err)
	}
	return set
}

// verify parses tok, checks its header and signature against set, and
// returns its claims.
func verify(t *testing.T, set jose.JSONWebKeySet, tok string) Claims {
	t.Helper()
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("ParseSigned: %v", err)
	}
	if n := len(parsed.Headers); n != 1 {
		t.Fatalf("token headers: got %d, want 1", n)
	}
	h := parsed.Headers[0]
	if got := h.ExtraHeaders[jose.HeaderType]; got != TokenType {
		t.Errorf("typ header: got %v, want %s", got, TokenType)
	}
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		t.Fatalf("JWKS keys with kid %q: got %d, want 1", h.KeyID, len(keys))
	}
	var c Claims
	if err := parsed.Claims(keys[0].Key, &c); err != nil {
		t.Fatalf("verify token signature with JWKS key: %v", err)
	}
	return c
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means success
	}{
		{"zero config", Config{}, ""},
		{"full config", Config{Lifetime: time.Hour, Clients: []Client{plainClient, oddClient}}, ""},
		{"negative lifetime", Config{Lifetime: -time.Second}, "Config.Lifetime"},
		{"sub-second lifetime", Config{Lifetime: 500 * time.Millisecond}, "Config.Lifetime"},
		{"empty id", Config{Clients: []Client{plainClient, {Secret: "x"}}}, "Config.Clients[1].ID: must not be empty"},
		{"empty secret", Config{Clients: []Client{{ID: "a"}}}, "Config.Clients[0].Secret: must not be empty"},
		{"duplicate id", Config{Clients: []Client{plainClient, noScopes, plainClient}}, "Config.Clients[2].ID"},
		{"empty scope", Config{Clients: []Client{{ID: "a", Secret: "secret-value-b", Scopes: []string{"x", ""}}}}, "Config.Clients[0].Scopes[1]"},
		{"scope with space", Config{Clients: []Client{{ID: "a", Secret: "secret-value-b", Scopes: []string{"x y"}}}}, "Config.Clients[0].Scopes[0]"},
		{"scope with quote", Config{Clients: []Client{{ID: "a", Secret: "secret-value-b", Scopes: []string{`x"`}}}}, "Config.Clients[0].Scopes[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil || iss == nil {
					t.Fatalf("New: got (%v, %v), want an Issuer and no error", iss, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: got error %v, want one containing %q", err, tt.wantErr)
			}
			for _, c := range tt.cfg.Clients {
				if c.Secret != "" && strings.Contains(err.Error(), c.Secret) {
					t.Errorf("New: error %q contains a client secret", err)
				}
			}
		})
	}
}

func TestTokenSuccess(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	set := fetchJWKS(t, srv.URL)

	tests := []struct {
		name      string
		client    Client
		basic     bool   // client_secret_basic, else client_secret_post
		scope     string // request parameter; "" omits it
		wantScope string
	}{
		{"basic, all scopes by omission", plainClient, true, "", "orders/read orders/write"},
		{"post, all scopes by omission", plainClient, false, "", "orders/read orders/write"},
		{"basic, one scope", plainClient, true, "orders/write", "orders/write"},
		{"post, both scopes reordered", plainClient, false, "orders/write orders/read", "orders/write orders/read"},
		{"repeated and double-spaced scopes", plainClient, true, "orders/read  orders/read", "orders/read"},
		{"basic, odd characters", oddClient, true, "api/admin", "api/admin"},
		{"post, odd characters", oddClient, false, "", "api/read api/admin"},
		{"client without scopes", noScopes, true, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := url.Values{"grant_type": {"client_credentials"}}
			if tt.scope != "" {
				form.Set("scope", tt.scope)
			}
			tr := tokenReq{form: form}
			if tt.basic {
				tr.authz = []string{basicHeader(tt.client.ID, tt.client.Secret)}
			} else {
				form.Set("client_id", tt.client.ID)
				form.Set("client_secret", tt.client.Secret)
			}
			before := time.Now().Unix()
			r := do(t, srv.URL, tr)
			if r.status != http.StatusOK {
				t.Fatalf("status: got %d (%v), want 200", r.status, r.body)
			}
			for name, want := range map[string]string{
				"Cache-Control": "no-store",
				"Pragma":        "no-cache",
				"Content-Type":  "application/json",
			} {
				if got := r.header.Get(name); got != want {
					t.Errorf("header %s: got %q, want %q", name, got, want)
				}
			}
			if got := r.str("token_type"); got != "Bearer" {
				t.Errorf("token_type: got %q, want Bearer", got)
			}
			if got, ok := r.body["expires_in"].(float64); !ok || got != DefaultLifetime.Seconds() {
				t.Errorf("expires_in: got %v, want %v", r.body["expires_in"], DefaultLifetime.Seconds())
			}
			if got := r.str("scope"); got != tt.wantScope {
				t.Errorf("scope: got %q, want %q", got, tt.wantScope)
			}

			c := verify(t, set, r.str("access_token"))
			if c.Issuer != srv.URL {
				t.Errorf("iss: got %q, want %q", c.Issuer, srv.URL)
			}
			if c.Subject != tt.client.ID || c.ClientID != tt.client.ID {
				t.Errorf("sub, client_id: got %q, %q, want %q for both", c.Subject, c.ClientID, tt.client.ID)
			}
			if c.Scope != tt.wantScope {
				t.Errorf("scope claim: got %q, want %q", c.Scope, tt.wantScope)
			}
			if c.TokenUse != "access" {
				t.Errorf("token_use: got %q, want access", c.TokenUse)
			}
			if c.IssuedAt == nil || c.Expiry == nil {
				t.Fatalf("iat, exp: got %v, %v, want both set", c.IssuedAt, c.Expiry)
			}
			if got := c.Expiry.Time().Sub(c.IssuedAt.Time()); got != DefaultLifetime {
				t.Errorf("exp - iat: got %s, want %s", got, DefaultLifetime)
			}
			if iat := int64(*c.IssuedAt); iat < before || iat > time.Now().Unix() {
				t.Errorf("iat: got %d, want within [%d, now]", iat, before)
			}
			if c.ID == "" {
				t.Errorf("jti: got empty, want a random id")
			}
			if len(c.Audience) != 0 {
				t.Errorf("aud: got %v, want none", c.Audience)
			}
			if err := c.ValidateWithLeeway(jwt.Expected{Issuer: srv.URL, Time: time.Now()}, 0); err != nil {
				t.Errorf("ValidateWithLeeway: got %v, want nil", err)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	iss, srv := newTestServer(t, testConfig())
	cc := url.Values{"grant_type": {"client_credentials"}}
	with := func(v url.Values, kv ...string) url.Values {
		out := url.Values{}
		for k, vs := range v {
			out[k] = slices.Clone(vs)
		}
		for n := 0; n+1 < len(kv); n += 2 {
			out.Add(kv[n], kv[n+1])
		}
		return out
	}
	basicOK := []string{basicHeader(plainClient.ID, plainClient.Secret)}
	post := with(cc, "client_id", plainClient.ID, "client_secret", plainClient.Secret)

	tests := []struct {
		name       string
		req        tokenReq
		wantStatus int
		wantError  string
		wantDesc   string // substring of error_description
	}{
		{"basic wrong secret", tokenReq{form: cc, authz: []string{basicHeader(plainClient.ID, "nope")}}, 401, "invalid_client", "authentication failed"},
		{"post wrong secret", tokenReq{form: with(cc, "client_id", plainClient.ID, "client_secret", "nope")}, 401, "invalid_client", "authentication failed"},
		{"unknown client", tokenReq{form: cc, authz: []string{basicHeader("nobody", "x")}}, 401, "invalid_client", "authentication failed"},
		{"secret of another client", tokenReq{form: cc, authz: []string{basicHeader(plainClient.ID, oddClient.Secret)}}, 401, "invalid_client", "authentication failed"},
		{"unescaped basic credentials", tokenReq{form: cc, authz: []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("odd:id+with@chars and space:"+oddClient.Secret))}}, 401, "invalid_client", ""},
		{"both basic and post", tokenReq{form: post, authz: basicOK}, 401, "invalid_client", "both"},
		{"basic and post secret only", tokenReq{form: with(cc, "client_secret", plainClient.Secret), authz: basicOK}, 401, "invalid_client", "both"},
		{"basic with other client_id", tokenReq{form: with(cc, "client_id", oddClient.ID), authz: basicOK}, 401, "invalid_client", "does not match"},
		{"neither", tokenReq{form: cc}, 401, "invalid_client", "no client authentication"},
		{"post without secret", tokenReq{form: with(cc, "client_id", plainClient.ID)}, 401, "invalid_client", "client_secret parameter is missing"},
		{"post without id", tokenReq{form: with(cc, "client_secret", plainClient.Secret)}, 401, "invalid_client", "client_id parameter is missing"},
		{"bearer scheme", tokenReq{form: cc, authz: []string{"Bearer abc"}}, 401, "invalid_client", "Basic scheme"},
		{"bad base64", tokenReq{form: cc, authz: []string{"Basic !!!"}}, 401, "invalid_client", "base64"},
		{"no colon", tokenReq{form: cc, authz: []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("abc"))}}, 401, "invalid_client", "':'"},
		{"bad escape", tokenReq{form: cc, authz: []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("a%zz:b"))}}, 401, "invalid_client", "form-encoded"},
		{"two authorization headers", tokenReq{form: cc, authz: []string{basicOK[0], basicOK[0]}}, 401, "invalid_client", "more than one"},
		{"missing grant_type", tokenReq{form: url.Values{}, authz: basicOK}, 400, "invalid_request", "grant_type parameter is missing"},
		{"bad grant_type", tokenReq{form: url.Values{"grant_type": {"password"}}, authz: basicOK}, 400, "unsupported_grant_type", "'password'"},
		{"grant_type with quotes", tokenReq{form: url.Values{"grant_type": {`a"b\c`}}, authz: basicOK}, 400, "unsupported_grant_type", "'a?b?c'"},
		{"repeated grant_type", tokenReq{form: with(cc, "grant_type", "client_credentials"), authz: basicOK}, 400, "invalid_request", "grant_type must not be repeated"},
		{"repeated client_id", tokenReq{form: with(post, "client_id", plainClient.ID)}, 400, "invalid_request", "client_id must not be repeated"},
		{"invalid scope", tokenReq{form: with(cc, "scope", "orders/read orders/delete admin"), authz: basicOK}, 400, "invalid_scope", "orders/delete admin"},
		{"scope of another client", tokenReq{form: with(cc, "scope", "api/read"), authz: basicOK}, 400, "invalid_scope", "api/read"},
		{"relative resource", tokenReq{form: with(cc, "resource", "/api"), authz: basicOK}, 400, "invalid_target", "absolute URI"},
		{"resource with fragment", tokenReq{form: with(cc, "resource", "https://api.example/#x"), authz: basicOK}, 400, "invalid_target", "fragment"},
		{"GET", tokenReq{method: http.MethodGet, authz: basicOK}, 405, "invalid_request", "POST"},
		{"JSON body", tokenReq{contentType: "application/json", rawBody: `{"grant_type":"client_credentials"}`, authz: basicOK}, 400, "invalid_request", "Content-Type"},
		{"malformed form", tokenReq{rawBody: "grant_type=%zz", authz: basicOK}, 400, "invalid_request", "not a valid"},
		{"body too large", tokenReq{rawBody: "grant_type=client_credentials&pad=" + strings.Repeat("a", MaxBodyBytes), authz: basicOK}, 413, "invalid_request", "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, srv.URL, tt.req)
			if r.status != tt.wantStatus {
				t.Errorf("status: got %d, want %d", r.status, tt.wantStatus)
			}
			if got := r.str("error"); got != tt.wantError {
				t.Errorf("error: got %q, want %q", got, tt.wantError)
			}
			desc := r.str("error_description")
			if !strings.Contains(desc, tt.wantDesc) {
				t.Errorf("error_description: got %q, want it to contain %q", desc, tt.wantDesc)
			}
			// RFC 6749 §5.2: error_description = *( %x20-21 / %x23-5B / %x5D-7E ).
			for _, b := range []byte(desc) {
				if b < 0x20 || b > 0x7e || b == '"' || b == '\\' {
					t.Errorf("error_description %q: got byte %#x, want only RFC 6749 section 5.2 characters", desc, b)
					break
				}
			}
			for _, s := range []string{plainClient.Secret, oddClient.Secret} {
				if strings.Contains(desc, s) {
					t.Errorf("error_description %q contains a client secret", desc)
				}
			}
			if _, ok := r.body["access_token"]; ok {
				t.Errorf("body: got an access_token in an error response")
			}
			wantChallenge := tt.wantStatus == http.StatusUnauthorized
			if got := r.header.Get("WWW-Authenticate"); (got != "") != wantChallenge || (wantChallenge && !strings.HasPrefix(got, "Basic ")) {
				t.Errorf("WWW-Authenticate: got %q, want a Basic challenge: %v", got, wantChallenge)
			}
			if got := r.header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if tt.wantStatus == http.StatusMethodNotAllowed {
				if got := r.header.Get("Allow"); got != http.MethodPost {
					t.Errorf("Allow: got %q, want POST", got)
				}
			}
		})
	}
	if got, want := iss.Requests(), int64(len(tests)); got != want {
		t.Errorf("Requests: got %d, want %d", got, want)
	}
}

func TestBasicAllowsMatchingClientIDParam(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	r := do(t, srv.URL, tokenReq{
		form:  url.Values{"grant_type": {"client_credentials"}, "client_id": {oddClient.ID}},
		authz: []string{basicHeader(oddClient.ID, oddClient.Secret)},
	})
	if r.status != http.StatusOK {
		t.Fatalf("status: got %d (%v), want 200", r.status, r.body)
	}
}

func TestTokensDiffer(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	set := fetchJWKS(t, srv.URL)
	tr := tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}}
	a, b := do(t, srv.URL, tr), do(t, srv.URL, tr)
	ta, tb := a.str("access_token"), b.str("access_token")
	if ta == "" || ta == tb {
		t.Fatalf("two access tokens: got %q and %q, want two different tokens", ta, tb)
	}
	if ja, jb := verify(t, set, ta).ID, verify(t, set, tb).ID; ja == jb {
		t.Errorf("jti: got %q twice, want different ids", ja)
	}
}

func TestAudience(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	set := fetchJWKS(t, srv.URL)
	tests := []struct {
		name string
		form url.Values
		want []string
	}{
		{"audience", url.Values{"audience": {"orders-api"}}, []string{"orders-api"}},
		{"resource", url.Values{"resource": {"https://orders.example/"}}, []string{"https://orders.example/"}},
		{"several, repeats dropped", url.Values{"audience": {"a", "b", "a"}, "resource": {"https://r.example/", "https://r.example/"}}, []string{"a", "b", "https://r.example/"}},
		{"empty values ignored", url.Values{"audience": {""}, "resource": {""}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.form.Set("grant_type", "client_credentials")
			r := do(t, srv.URL, tokenReq{form: tt.form, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}})
			if r.status != http.StatusOK {
				t.Fatalf("status: got %d (%v), want 200", r.status, r.body)
			}
			c := verify(t, set, r.str("access_token"))
			if !slices.Equal([]string(c.Audience), tt.want) {
				t.Errorf("aud: got %q, want %q", c.Audience, tt.want)
			}
		})
	}
}

func TestRequestsCountsEveryOutcome(t *testing.T) {
	iss, srv := newTestServer(t, testConfig())
	if got := iss.Requests(); got != 0 {
		t.Fatalf("Requests before any: got %d, want 0", got)
	}
	ok := tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}}
	bad := tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, "wrong")}}
	get := tokenReq{method: http.MethodGet}
	for n, tr := range []tokenReq{ok, bad, get, ok} {
		do(t, srv.URL, tr)
		if got, want := iss.Requests(), int64(n+1); got != want {
			t.Fatalf("Requests after %d requests: got %d, want %d", n+1, got, want)
		}
	}
	fetchJWKS(t, srv.URL) // not a token request
	if got := iss.Requests(); got != 4 {
		t.Errorf("Requests after a JWKS fetch: got %d, want 4", got)
	}

	// Concurrent requests are all counted.
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { do(t, srv.URL, ok) })
	}
	wg.Wait()
	if got := iss.Requests(); got != 24 {
		t.Errorf("Requests after 20 more concurrent: got %d, want 24", got)
	}
}

func TestLifetime(t *testing.T) {
	tests := []struct {
		name        string
		config      time.Duration
		set         time.Duration // passed to SetLifetime unless skip
		skip        bool
		wantSeconds int64
	}{
		{"default", 0, 0, true, 300},
		{"configured", time.Hour, 0, true, 3600},
		{"configured fraction truncated", 90*time.Second + 900*time.Millisecond, 0, true, 90},
		{"set", 0, 42 * time.Second, false, 42},
		{"set fraction truncated", 0, 2700 * time.Millisecond, false, 2},
		{"set below a second", 0, time.Millisecond, false, 1},
		{"set zero restores default", time.Hour, 0, false, 300},
		{"set negative restores default", time.Hour, -time.Minute, false, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Lifetime = tt.config
			iss, srv := newTestServer(t, cfg)
			if !tt.skip {
				iss.SetLifetime(tt.set)
			}
			set := fetchJWKS(t, srv.URL)
			r := do(t, srv.URL, tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}})
			if r.status != http.StatusOK {
				t.Fatalf("status: got %d (%v), want 200", r.status, r.body)
			}
			if got, _ := r.body["expires_in"].(float64); int64(got) != tt.wantSeconds {
				t.Errorf("expires_in: got %v, want %d", r.body["expires_in"], tt.wantSeconds)
			}
			c := verify(t, set, r.str("access_token"))
			if got := int64(*c.Expiry) - int64(*c.IssuedAt); got != tt.wantSeconds {
				t.Errorf("exp - iat: got %d, want %d", got, tt.wantSeconds)
			}
		})
	}
}

func TestAddClient(t *testing.T) {
	var logs testkit.LogBuffer
	cfg := testConfig()
	cfg.Logger = testkit.TextLogger(&logs)
	iss, srv := newTestServer(t, cfg)
	form := url.Values{"grant_type": {"client_credentials"}}
	status := func(c Client) int {
		return do(t, srv.URL, tokenReq{form: form, authz: []string{basicHeader(c.ID, c.Secret)}}).status
	}

	added := Client{ID: "late", Secret: "late-secret", Scopes: []string{"x"}}
	if got := status(added); got != http.StatusUnauthorized {
		t.Fatalf("before AddClient: got status %d, want 401", got)
	}
	iss.AddClient(added)
	if got := status(added); got != http.StatusOK {
		t.Fatalf("after AddClient: got status %d, want 200", got)
	}

	// Replacing a client rotates its secret.
	rotated := Client{ID: "late", Secret: "rotated-secret", Scopes: []string{"x"}}
	iss.AddClient(rotated)
	if got := status(added); got != http.StatusUnauthorized {
		t.Errorf("old secret after rotation: got status %d, want 401", got)
	}
	if got := status(rotated); got != http.StatusOK {
		t.Errorf("new secret after rotation: got status %d, want 200", got)
	}

	// An invalid client is refused, and logged without its secret.
	invalid := Client{ID: "broken", Secret: "broken-secret", Scopes: []string{"bad scope"}}
	iss.AddClient(invalid)
	if got := status(invalid); got != http.StatusUnauthorized {
		t.Errorf("invalid client: got status %d, want 401", got)
	}
	if out := logs.String(); !strings.Contains(out, "Client.Scopes[0]") || strings.Contains(out, invalid.Secret) {
		t.Errorf("logs: got %q, want a line naming Client.Scopes[0] and no secret", out)
	}

	// The caller's slice is copied.
	scopes := []string{"y"}
	iss.AddClient(Client{ID: "copy", Secret: "copy-secret", Scopes: scopes})
	scopes[0] = "z"
	r := do(t, srv.URL, tokenReq{form: form, authz: []string{basicHeader("copy", "copy-secret")}})
	if got := r.str("scope"); got != "y" {
		t.Errorf("scope after caller changed its slice: got %q, want y", got)
	}

	// AddClient races with token requests (run with -race).
	var wg sync.WaitGroup
	for n := range 10 {
		c := Client{ID: "c" + string(rune('a'+n)), Secret: "s", Scopes: []string{"x"}}
		wg.Go(func() { iss.AddClient(c) })
		wg.Go(func() { status(plainClient) })
	}
	wg.Wait()
	for n := range 10 {
		if got := status(Client{ID: "c" + string(rune('a'+n)), Secret: "s"}); got != http.StatusOK {
			t.Errorf("client added concurrently: got status %d, want 200", got)
		}
	}
}

func TestLogsHoldNoSecrets(t *testing.T) {
	var logs testkit.LogBuffer
	cfg := testConfig()
	cfg.Logger = testkit.JSONLogger(&logs)
	_, srv := newTestServer(t, cfg)
	cc := url.Values{"grant_type": {"client_credentials"}}
	var tokens []string
	for _, tr := range []tokenReq{
		{form: cc, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}},
		{form: url.Values{"grant_type": {"client_credentials"}, "client_id": {oddClient.ID}, "client_secret": {oddClient.Secret}}},
		{form: cc, authz: []string{basicHeader(plainClient.ID, "wrong-secret-value")}},
		{form: cc, authz: []string{basicHeader("typed-secret-as-id", "x")}},
		{form: url.Values{"grant_type": {"password"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}},
	} {
		r := do(t, srv.URL, tr)
		if tok := r.str("access_token"); tok != "" {
			tokens = append(tokens, tok)
		}
	}
	out := logs.String()
	if !strings.Contains(out, "token issued") || !strings.Contains(out, "token request rejected") {
		t.Fatalf("logs: got %q, want issue and rejection lines", out)
	}
	if len(tokens) != 2 {
		t.Fatalf("tokens issued: got %d, want 2", len(tokens))
	}
	for _, s := range append([]string{plainClient.Secret, oddClient.Secret, "wrong-secret-value", "typed-secret-as-id"}, tokens...) {
		if strings.Contains(out, s) {
			t.Errorf("logs contain the secret or token %q:\n%s", s, out)
		}
	}
}

func TestJWKS(t *testing.T) {
	iss, srv := newTestServer(t, testConfig())
	set := fetchJWKS(t, srv.URL)
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS keys: got %d, want 1", len(set.Keys))
	}
	k := set.Keys[0]
	if k.KeyID != iss.KeyID() || k.KeyID == "" {
		t.Errorf("kid: got %q, want %q", k.KeyID, iss.KeyID())
	}
	if k.Algorithm != string(jose.ES256) || k.Use != "sig" {
		t.Errorf("alg, use: got %q, %q, want ES256, sig", k.Algorithm, k.Use)
	}
	if !k.IsPublic() || !k.Valid() {
		t.Errorf("key: got public=%v valid=%v, want a valid public key", k.IsPublic(), k.Valid())
	}
	if !iss.PublicKey().Equal(k.Key) {
		t.Errorf("JWKS key: got %v, want PublicKey()", k.Key)
	}

	resp, err := httpClient.Post(srv.URL+JWKSPath, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", JWKSPath, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: got status %d, want 405", JWKSPath, resp.StatusCode)
	}
}

func TestMetadata(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	resp, err := httpClient.Get(srv.URL + MetadataPath)
	if err != nil {
		t.Fatalf("GET %s: %v", MetadataPath, err)
	}
	defer resp.Body.Close()
	var m metadata
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("decode metadata: %v", err)
	}
	if m.Issuer != srv.URL || m.TokenEndpoint != srv.URL+TokenPath || m.JWKSURI != srv.URL+JWKSPath {
		t.Errorf("metadata: got issuer %q, token_endpoint %q, jwks_uri %q; want them under %q", m.Issuer, m.TokenEndpoint, m.JWKSURI, srv.URL)
	}
	if !slices.Equal(m.GrantTypesSupported, []string{"client_credentials"}) {
		t.Errorf("grant_types_supported: got %q, want [client_credentials]", m.GrantTypesSupported)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	iss, err := New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- iss.Serve(ctx, l) }()

	base := "http://" + l.Addr().String()
	r := do(t, base, tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}})
	if r.status != http.StatusOK {
		t.Fatalf("token through Serve: got status %d (%v), want 200", r.status, r.body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel: got %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Serve: still running %s after cancel, want it to return", testTimeout)
	}
	if c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout); err == nil {
		c.Close()
		t.Errorf("dial after Serve returned: got a connection, want the listener closed")
	}
}

// TestServeIgnoresUnusedConnections: a connection a client opened but
// never sent a request on (an HTTP client's spare) does not hold the
// shutdown: Serve returns nil, not a shutdown timeout after the grace.
func TestServeIgnoresUnusedConnections(t *testing.T) {
	iss, err := New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- iss.Serve(ctx, l) }()
	spare, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer spare.Close()
	// A request on another connection proves the server has accepted
	// connections (the spare one included) before the shutdown.
	r := do(t, "http://"+l.Addr().String(), tokenReq{form: url.Values{"grant_type": {"client_credentials"}}, authz: []string{basicHeader(plainClient.ID, plainClient.Secret)}})
	if r.status != http.StatusOK {
		t.Fatalf("token through Serve: got status %d, want 200", r.status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve with an unused connection open: got %v, want nil", err)
	}
}

func TestServeListenerFailure(t *testing.T) {
	iss, err := New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	l.Close()
	done := make(chan error, 1)
	go func() { done <- iss.Serve(t.Context(), l) }()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve on a closed listener: got %v, want an accept error", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Serve on a closed listener: still running after %s, want an error", testTimeout)
	}
}
