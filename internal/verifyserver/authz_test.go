package verifyserver

import (
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// checkReq is an ext_authz request for path with an authorization header
// (none when "") and context extensions.
func checkReq(authorization, path string, ext map[string]string) *authv3.CheckRequest {
	headers := map[string]string{":path": path, "x-token-scopes": "forged/admin"}
	if authorization != "" {
		headers["authorization"] = authorization
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: path, Headers: headers}},
		ContextExtensions: ext,
	}}
}

// headerOf returns the value of header name among hs.
func headerOf(hs []*corev3.HeaderValueOption, name string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// TestCheckEndToEnd drives ext_authz Check over gRPC with dev issuer tokens.
func TestCheckEndToEnd(t *testing.T) {
	e := newEnv(t, Config{
		PathScopes: []PathScopes{{Prefix: "/orders/", Scopes: []string{"orders/read"}}, {Prefix: "/orders/admin/", Scopes: []string{"orders/admin"}}},
		Headers:    Headers{Subject: "x-sub", ClientID: "x-client", Scopes: "x-token-scopes", Provider: "x-provider", Audience: "x-aud"},
	})
	read := e.token(t, "orders/read")

	// Allowed: claims forwarded, forged and empty claim headers removed.
	resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer "+read, "/orders/42?x=1", nil))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	ok := resp.GetOkResponse()
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK || ok == nil {
		t.Fatalf("Check = %v, want OK", resp)
	}
	for name, want := range map[string]string{"x-sub": clientID, "x-client": clientID, "x-token-scopes": "orders/read", "x-provider": "dev"} {
		if got := headerOf(ok.GetHeaders(), name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if !slices.Contains(ok.GetHeadersToRemove(), "x-aud") {
		t.Errorf("headers to remove = %q, want x-aud (the token has no audience)", ok.GetHeadersToRemove())
	}
	for _, h := range ok.GetHeaders() {
		if strings.Contains(h.GetHeader().GetValue(), read) {
			t.Errorf("header %s carries the token", h.GetHeader().GetKey())
		}
	}

	for _, c := range []struct {
		name, auth, path string
		ext              map[string]string
		status           int
		challenge        string
	}{
		{"no token", "", "/orders/1", nil, http.StatusUnauthorized, `Bearer realm="tokenbroker"`},
		{"basic auth", "Basic eDp5", "/orders/1", nil, http.StatusUnauthorized, `Bearer realm="tokenbroker"`},
		{"bad token", "Bearer not-a-jwt", "/orders/1", nil, http.StatusUnauthorized, `Bearer error="invalid_token", error_description="malformed"`},
		{"tampered", "Bearer " + read[:len(read)-4] + "AAAA", "/orders/1", nil, http.StatusUnauthorized, `Bearer error="invalid_token", error_description="bad_signature"`},
		{"path scope missing", "Bearer " + read, "/orders/admin/x", nil, http.StatusForbidden, `Bearer error="insufficient_scope", scope="orders/admin"`},
		{"route scope missing", "Bearer " + read, "/other", map[string]string{ExtRequiredScopes: "orders/write"}, http.StatusForbidden, `Bearer error="insufficient_scope", scope="orders/write"`},
		{"route audience missing", "Bearer " + read, "/other", map[string]string{ExtAudience: "billing"}, http.StatusUnauthorized, `Bearer error="invalid_token", error_description="wrong_audience"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := e.authz.Check(rpcCtx(t), checkReq(c.auth, c.path, c.ext))
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			d := resp.GetDeniedResponse()
			if d == nil || int(d.GetStatus().GetCode()) != c.status {
				t.Fatalf("Check = %v, want denied with HTTP %d", resp, c.status)
			}
			if got := headerOf(d.GetHeaders(), "www-authenticate"); got != c.challenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, c.challenge)
			}
			if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
				t.Errorf("status = OK, want a denial code")
			}
			if c.auth != "" && strings.Contains(d.GetBody()+resp.GetStatus().GetMessage(), strings.TrimPrefix(c.auth, "Bearer ")) {
				t.Error("denial carries the token")
			}
		})
	}

	// The route's context extension overrides the path's scopes.
	resp, err = e.authz.Check(rpcCtx(t), checkReq("Bearer "+read, "/orders/admin/x", map[string]string{ExtRequiredScopes: "orders/read"}))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check with route scopes = %v, %v; want OK", resp, err)
	}
	// Keys that were never fetched: an RPC error (Envoy's failure mode
	// decides).
	_, err = e.authz.Check(rpcCtx(t), checkReq("Bearer "+forge(t, "http://127.0.0.1:1/down"), "/", nil))
	if codesOf(err) != codes.Unavailable {
		t.Fatalf("Check with unfetchable keys = %v, want Unavailable", err)
	}
}

// codesOf returns the status code of err.
func codesOf(err error) codes.Code { return status.Code(err) }

// TestPathScopesNormalised: path_scopes match the percent-decoded, cleaned
// request path on whole segments, so that encoded, doubled-slash and
// dot-segment forms of a protected path need its scopes; a path that is
// not valid percent-encoding is denied with 400.
func TestPathScopesNormalised(t *testing.T) {
	e := newEnv(t, Config{PathScopes: []PathScopes{
		{Prefix: "/", Scopes: []string{"orders/read"}},
		{Prefix: "/admin", Scopes: []string{"orders/admin"}},
		{Prefix: "/orders/", Scopes: []string{"orders/write"}},
	}})
	read := e.token(t, "orders/read")
	for _, c := range []struct {
		path   string
		status int // 0: allowed
	}{
		{"/public", 0},
		{"/administrator", 0},
		{"/admin-x/y", 0},
		{"/admin", http.StatusForbidden},
		{"/admin/", http.StatusForbidden},
		{"/admin/users?x=/public", http.StatusForbidden},
		{"//admin", http.StatusForbidden},
		{"/%61dmin", http.StatusForbidden},
		{"/%2561dmin", 0}, // decoded once: "/%61dmin", not "/admin"
		{"/x/../admin", http.StatusForbidden},
		{"/x/%2e%2e/admin", http.StatusForbidden},
		{"/public%2F..%2Fadmin", http.StatusForbidden},
		{"/./admin/./x", http.StatusForbidden},
		{"/../admin", http.StatusForbidden},
		{"admin", http.StatusForbidden},
		{"/orders", http.StatusForbidden},
		{"/orders/42", http.StatusForbidden},
		{"/orders//42", http.StatusForbidden},
		{"/ordersx", 0},
		{"/admin%zz", http.StatusBadRequest},
		{"/%", http.StatusBadRequest},
	} {
		t.Run(c.path, func(t *testing.T) {
			resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer "+read, c.path, nil))
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if c.status == 0 {
				if resp.GetOkResponse() == nil {
					t.Fatalf("Check = %v, want OK", resp)
				}
				return
			}
			if d := resp.GetDeniedResponse(); d == nil || int(d.GetStatus().GetCode()) != c.status {
				t.Fatalf("Check = %v, want denied with HTTP %d", resp, c.status)
			}
		})
	}
	// A route's required_scopes override the path, which is then not read.
	resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer "+read, "/%zz", map[string]string{ExtRequiredScopes: "orders/read"}))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check with route scopes = %v, %v; want OK", resp, err)
	}
}

// TestNoClaimHeaders: Headers all "" forwards no claim headers (the
// defaults are internal/config's, not applied to an empty Headers).
func TestNoClaimHeaders(t *testing.T) {
	e := newEnv(t, Config{})
	resp, err := e.authz.Check(rpcCtx(t), checkReq("Bearer "+e.token(t, "orders/read"), "/", nil))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check = %v, %v; want OK", resp, err)
	}
	if ok := resp.GetOkResponse(); len(ok.GetHeaders()) != 0 || len(ok.GetHeadersToRemove()) != 0 {
		t.Errorf("Check sets %v and removes %q, want no claim headers", ok.GetHeaders(), ok.GetHeadersToRemove())
	}
}
