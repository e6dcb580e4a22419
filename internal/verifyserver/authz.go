package verifyserver

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// Context extensions of the ext_authz filter (per route, in Envoy's
// check_settings) that Check reads.
const (
	// ExtRequiredScopes holds the route's required scopes,
	// space-separated. It overrides Config.PathScopes.
	ExtRequiredScopes = "required_scopes"
	// ExtAudience holds an audience the token must carry.
	ExtAudience = "audience"
	// ExtProvider names the provider the token must come from.
	ExtProvider = "provider"
)

// authzService implements envoy.service.auth.v3.Authorization.
type authzService struct {
	authv3.UnimplementedAuthorizationServer
	s *Server
}

// Check authorizes one HTTP request Envoy holds: its bearer token must
// verify and carry the route's required scopes. On success the claims are
// forwarded as headers (Config.Headers).
//
// Every refusal is a denied HTTP response with an OK RPC status, including
// a caller (Envoy) the policy refuses (403) or that is over the rate limit
// (429): an RPC error means "could not check", which Envoy's
// failure_mode_allow may turn into a pass.
//
// Config.PathScopes are matched against the request path (its query left
// out) percent-decoded and cleaned (path.Clean: "//", "." and ".."
// resolved), on whole segments; a path that is not valid
// percent-encoding is denied with 400.
func (h authzService) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if r := h.s.admit(ctx); r != nil {
		return r.denied(), nil
	}
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	ext := req.GetAttributes().GetContextExtensions()
	token, ok := bearer(httpReq)
	if !ok {
		return denied(http.StatusUnauthorized, `Bearer realm="tokenbroker"`, "a bearer token is required"), nil
	}
	var scopes []string
	if v, ok := ext[ExtRequiredScopes]; ok {
		scopes = strings.Fields(v)
	} else if scopes, ok = h.s.pathScopes(httpReq.GetPath()); !ok {
		return deniedStatus(codes.InvalidArgument, http.StatusBadRequest, "", "the request path is not valid percent-encoding"), nil
	}
	c, err := h.s.cfg.Verifier.Verify(ctx, verifier.Request{
		Token:            token,
		RequiredScopes:   scopes,
		ExpectedAudience: ext[ExtAudience],
		Provider:         ext[ExtProvider],
	})
	var re *verifier.RefusedError
	switch {
	case err == nil:
		return h.s.allowed(c), nil
	case errors.As(err, &re) && re.Reason == verifier.ReasonInsufficientScope:
		return denied(http.StatusForbidden,
			`Bearer error="insufficient_scope", scope="`+headerSafe(strings.Join(scopes, " "))+`"`,
			"the token lacks a required scope"), nil
	case errors.As(err, &re):
		return denied(http.StatusUnauthorized,
			`Bearer error="invalid_token", error_description="`+re.Reason.String()+`"`,
			"the token is not valid: "+re.Reason.String()), nil
	}
	return nil, statusOf(err)
}

// bearer returns the token of the Authorization header, if it is a Bearer
// one. Envoy sends header names in lower case, in headers or, with
// encode_raw_headers, in header_map.
func bearer(r *authv3.AttributeContext_HttpRequest) (string, bool) {
	v, ok := r.GetHeaders()["authorization"]
	if !ok {
		for _, hv := range r.GetHeaderMap().GetHeaders() {
			if strings.EqualFold(hv.GetKey(), "authorization") {
				v, ok = hv.GetValue(), true
				if len(hv.GetRawValue()) > 0 {
					v = string(hv.GetRawValue())
				}
				break
			}
		}
	}
	if !ok {
		return "", false
	}
	scheme, token, found := strings.Cut(strings.TrimSpace(v), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// pathScopes returns the scopes of the longest configured prefix of the
// request path p, or false if p cannot be decoded. p, its query left out,
// is percent-decoded and cleaned, so that "//admin", "/%61dmin" and
// "/x/../admin" are all "/admin"; a prefix matches whole segments: "/admin"
// (or "/admin/") matches "/admin" and "/admin/x", not "/administrator".
func (s *Server) pathScopes(p string) ([]string, bool) {
	if len(s.cfg.PathScopes) == 0 {
		return nil, true
	}
	p, _, _ = strings.Cut(p, "?")
	p, err := url.PathUnescape(p)
	if err != nil {
		return nil, false
	}
	p = path.Clean("/" + p)
	best := -1
	var scopes []string
	for _, ps := range s.cfg.PathScopes {
		prefix := strings.TrimRight(ps.Prefix, "/")
		match := prefix == "" || p == prefix || strings.HasPrefix(p, prefix+"/")
		if match && len(prefix) > best {
			best, scopes = len(prefix), ps.Scopes
		}
	}
	return scopes, true
}

// allowed is the OK answer: the configured claim headers set, and those
// it leaves unset removed so that a client cannot forge them.
func (s *Server) allowed(c *verifier.Claims) *authv3.CheckResponse {
	hs := s.cfg.Headers
	var set []*corev3.HeaderValueOption
	var remove []string
	for _, f := range []struct{ name, value string }{
		{hs.Subject, c.Subject},
		{hs.ClientID, c.ClientID},
		{hs.Scopes, strings.Join(c.Scopes, " ")},
		{hs.Provider, c.Provider},
		{hs.Issuer, c.Issuer},
		{hs.Audience, strings.Join(c.Audience, " ")},
	} {
		switch {
		case f.name == "":
		case f.value == "" || headerSafe(f.value) != f.value:
			remove = append(remove, f.name)
		default:
			set = append(set, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: f.name, Value: f.value},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:         set,
			HeadersToRemove: remove,
		}},
	}
}

// denied is a refusal of the token with an HTTP status (401 or 403), a
// WWW-Authenticate challenge and a short body.
func denied(code int, challenge, body string) *authv3.CheckResponse {
	grpcCode := codes.Unauthenticated
	if code == http.StatusForbidden {
		grpcCode = codes.PermissionDenied
	}
	return deniedStatus(grpcCode, code, challenge, body)
}

// deniedStatus is a denied CheckResponse: the non-OK grpcCode in its
// status (Envoy denies on it; the RPC itself succeeds), the HTTP status
// code, a WWW-Authenticate challenge unless "", and body.
func deniedStatus(grpcCode codes.Code, code int, challenge, body string) *authv3.CheckResponse {
	d := &authv3.DeniedHttpResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)},
		Body:   body,
	}
	if challenge != "" {
		d.Headers = append(d.Headers, header("www-authenticate", challenge))
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(grpcCode), Message: body},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: d},
	}
}

// denied is the refusal of a caller (Envoy) as a denied CheckResponse: 403
// for the policy, 429 with Retry-After (whole seconds, rounded up) for the
// rate limit. The reason goes in the status, which Envoy logs; the HTTP
// client sees a generic body.
func (r *refusal) denied() *authv3.CheckResponse {
	if r.code != codes.ResourceExhausted {
		resp := deniedStatus(codes.PermissionDenied, http.StatusForbidden, "", "this proxy may not verify tokens")
		resp.Status.Message = r.msg
		return resp
	}
	resp := deniedStatus(codes.ResourceExhausted, http.StatusTooManyRequests, "", "too many requests")
	resp.Status.Message = r.msg
	if r.retryAfter > 0 {
		secs := int64((r.retryAfter + time.Second - 1) / time.Second)
		d := resp.GetDeniedResponse()
		d.Headers = append(d.Headers, header("retry-after", strconv.FormatInt(secs, 10)))
	}
	return resp
}

// header is a header that replaces any of its name.
func header(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// headerSafe returns s without the characters that may not appear in a
// header value or a quoted string: controls, '"' and '\'.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}
