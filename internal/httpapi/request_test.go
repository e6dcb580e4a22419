package httpapi

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestMalformedRequests checks the request rules (RFC 6749 sections
// 2.3.1, 3.2, 4.4.2; RFC 8707). None of these requests may reach the token
// endpoint, and no answer may echo the secret.
func TestMalformedRequests(t *testing.T) {
	e := newEnv(t, envOptions{maxBody: 1024})
	good := url.Values{"grant_type": {"client_credentials"}}
	with := func(kv ...string) url.Values {
		v := url.Values{}
		for k, vs := range good {
			v[k] = append([]string(nil), vs...)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			v[kv[i]] = append(v[kv[i]], kv[i+1])
		}
		return v
	}
	without := func(name string) url.Values {
		v := with()
		delete(v, name)
		return v
	}
	creds := basic(testClientID, testSecret)
	form := "application/x-www-form-urlencoded"
	rawBasic := func(s string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(s))}}
	}
	tests := []struct {
		name        string
		method      string // default POST
		path        string // default TokenPath
		contentType string // default form
		body        string // default the encoded values
		values      url.Values
		header      http.Header
		wantStatus  int
		wantCode    string
		wantDesc    string // a substring of error_description
		wantHeader  map[string]string
	}{
		{name: "GET", method: http.MethodGet, values: good, header: creds,
			wantStatus: 405, wantCode: "invalid_request", wantDesc: "POST", wantHeader: map[string]string{"Allow": "POST"}},
		{name: "PUT", method: http.MethodPut, values: good, header: creds,
			wantStatus: 405, wantCode: "invalid_request", wantDesc: "POST", wantHeader: map[string]string{"Allow": "POST"}},
		{name: "JSON body", contentType: "application/json", body: `{"grant_type":"client_credentials"}`, header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Content-Type"},
		{name: "no content type", contentType: "-", values: good, header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Content-Type"},
		{name: "body too large", values: with("scope", strings.Repeat("a", 2000)), header: creds,
			wantStatus: 413, wantCode: "invalid_request", wantDesc: "1024 bytes"},
		{name: "malformed form", body: "grant_type=client_credentials&scope=%zz", header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "request body"},
		{name: "duplicate scope", values: with("scope", "api/read", "scope", "api/write"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "scope: must not be repeated"},
		{name: "duplicate grant_type", values: with("grant_type", "client_credentials"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "grant_type: must not be repeated"},
		{name: "duplicate client_secret", values: with("client_id", testClientID, "client_secret", "a", "client_secret", "b"),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_secret: must not be repeated"},
		{name: "duplicate resource", values: with("resource", "https://a.example/", "resource", "https://b.example/"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "resource: must not be repeated"},
		{name: "grant_type missing", values: without("grant_type"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "grant_type: is required"},
		{name: "grant_type password", values: url.Values{"grant_type": {"password"}}, header: creds,
			wantStatus: 400, wantCode: "unsupported_grant_type", wantDesc: "client_credentials"},
		{name: "no client authentication", values: good,
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client authentication is required",
			wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="tokenbroker"`}},
		{name: "client_id without secret", values: with("client_id", testClientID),
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client_secret: is required",
			wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="tokenbroker"`}},
		{name: "secret without client_id", values: with("client_secret", testSecret),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_id: is required"},
		{name: "Basic and client_secret", values: with("client_secret", testSecret), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "not both"},
		{name: "Basic and another client_id", values: with("client_id", "someone-else"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_id: must match"},
		// "Authorization: Bearer" carries a caller identity (a
		// service-account token, Config.Authorize's), not client
		// credentials: without credentials in the body there are none.
		{name: "Bearer scheme", values: good, header: http.Header{"Authorization": {"Bearer abc"}},
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client authentication is required",
			wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="tokenbroker"`}},
		{name: "Basic not base64", values: good, header: http.Header{"Authorization": {"Basic !!!"}},
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Authorization: Basic credentials"},
		{name: "Basic without colon", values: good, header: rawBasic("app"),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Authorization: Basic credentials"},
		{name: "Basic not form-encoded", values: good, header: rawBasic("app:%zz"),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Authorization: Basic credentials"},
		{name: "Basic empty secret", values: good, header: rawBasic("app:"),
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client secret",
			wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="tokenbroker"`}},
		{name: "two Authorization headers", values: good, header: http.Header{"Authorization": {creds.Get("Authorization"), creds.Get("Authorization")}},
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "Authorization: must not be repeated"},
		{name: "client_id too long", values: with("client_id", strings.Repeat("a", 129), "client_secret", testSecret),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_id: must be at most 128 bytes"},
		{name: "client_id control character", values: with("client_id", "a\tb", "client_secret", testSecret),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_id: must be printable ASCII"},
		{name: "secret too long", values: with("client_id", testClientID, "client_secret", strings.Repeat("s", 513)),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_secret: must be at most 512 bytes"},
		{name: "secret with NUL", values: with("client_id", testClientID, "client_secret", "a\x00b"),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "client_secret: must be valid UTF-8"},
		{name: "scope with quote", values: with("scope", `api/read "x"`), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "scope: scope 2 must contain only"},
		{name: "scope too long", values: with("scope", strings.Repeat("s", 257)), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "scope: scope 1 must be at most 256 bytes"},
		{name: "too many scopes", values: with("scope", strings.TrimSpace(strings.Repeat("s ", 51))), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "scope: must have at most 50 entries"},
		{name: "audience control character", values: with("audience", "a\nb"), header: creds,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "audience: must be printable ASCII"},
		{name: "resource relative", values: with("resource", "/api"), header: creds,
			wantStatus: 400, wantCode: "invalid_target", wantDesc: "resource: must be an absolute URI"},
		{name: "resource with fragment", values: with("resource", "https://api.example/#x"), header: creds,
			wantStatus: 400, wantCode: "invalid_target", wantDesc: "resource: must be an absolute URI"},
		{name: "secret in the URL", path: TokenPath + "?client_id=app&client_secret=" + url.QueryEscape(testSecret), values: good,
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "not in the URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			path := tc.path
			if path == "" {
				path = TokenPath
			}
			h := http.Header{}
			switch tc.contentType {
			case "":
				h.Set("Content-Type", form)
			case "-":
			default:
				h.Set("Content-Type", tc.contentType)
			}
			for k, vs := range tc.header {
				h[k] = vs
			}
			body := tc.body
			if body == "" {
				body = tc.values.Encode()
			}
			a := do(t, method, e.srv.URL+path, h, body)
			if a.status != tc.wantStatus || a.str("error") != tc.wantCode {
				t.Fatalf("got %d %q (%s), want %d %q", a.status, a.str("error"), a.body, tc.wantStatus, tc.wantCode)
			}
			if desc := a.str("error_description"); !strings.Contains(desc, tc.wantDesc) {
				t.Errorf("error_description: got %q, want it to contain %q", desc, tc.wantDesc)
			}
			for k, want := range tc.wantHeader {
				if got := a.header.Get(k); got != want {
					t.Errorf("header %s: got %q, want %q", k, got, want)
				}
			}
			if _, ok := tc.wantHeader["WWW-Authenticate"]; !ok && a.header.Get("WWW-Authenticate") != "" {
				t.Errorf("header WWW-Authenticate: got %q, want none", a.header.Get("WWW-Authenticate"))
			}
			checkNoStore(t, a)
			if strings.Contains(a.body, testSecret) || strings.Contains(a.body, url.QueryEscape(testSecret)) {
				t.Errorf("answer echoes the secret: %s", a.body)
			}
		})
	}
	if got := e.requests(); got != 0 {
		t.Errorf("issuer requests: got %d, want 0 (every request is refused before the broker)", got)
	}
}

// TestLenientInput checks what RFC 6749 says to accept: parameters without
// a value count as omitted (section 3.1), unknown parameters are ignored
// (section 3.2), scopes may be separated by several spaces, and a
// client_id next to the Basic header may repeat its id.
func TestLenientInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		name   string
		values url.Values
		header http.Header
	}{
		{"empty parameters", url.Values{"grant_type": {"client_credentials"}, "scope": {""}, "audience": {""}, "resource": {""}}, basic(testClientID, testSecret)},
		{"unknown parameter", url.Values{"grant_type": {"client_credentials"}, "foo": {"1", "2"}}, basic(testClientID, testSecret)},
		{"double spaces", url.Values{"grant_type": {"client_credentials"}, "scope": {"  api/read   api/write "}}, basic(testClientID, testSecret)},
		{"client_id with Basic", url.Values{"grant_type": {"client_credentials"}, "client_id": {testClientID}}, basic(testClientID, testSecret)},
		{"charset parameter", url.Values{"grant_type": {"client_credentials"}, "client_id": {testClientID}, "client_secret": {testSecret}}, http.Header{"Content-Type": {"application/x-www-form-urlencoded; charset=UTF-8"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := postForm(t, e.srv.URL+TokenPath, tc.values, tc.header)
			if a.status != http.StatusOK || a.str("access_token") == "" {
				t.Fatalf("got %d %s, want 200 with a token", a.status, a.body)
			}
			if got, want := a.str("scope"), "api/read api/write"; got != want {
				t.Errorf("scope: got %q, want %q", got, want)
			}
		})
	}
	if got, want := e.requests(), int64(2); got != want {
		t.Errorf("issuer requests: got %d, want %d (one for no scope, one for both scopes)", got, want)
	}
}

// TestIsForm: the form media type is recognised in any case, with or
// without parameters; anything else is not.
func TestIsForm(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/x-www-form-urlencoded":                true,
		"Application/X-WWW-Form-Urlencoded":                true,
		"application/x-www-form-urlencoded; charset=UTF-8": true,
		"application/x-www-form-urlencoded;charset=utf-8":  true,
		"":                                   false,
		"application/json":                   false,
		"application/x-www-form-urlencodedx": false,
		"multipart/form-data":                false,
	} {
		if got := isForm(ct); got != want {
			t.Errorf("isForm(%q) = %v, want %v", ct, got, want)
		}
	}
}
