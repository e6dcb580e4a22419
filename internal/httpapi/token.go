package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Request limits: the broker's request rules (broker.CheckRequest), the
// same as the gRPC API's, so a request the one accepts the other accepts
// too.
const (
	// MaxClientIDBytes bounds a client id.
	MaxClientIDBytes = broker.MaxNameBytes
	// MaxSecretBytes bounds a client secret.
	MaxSecretBytes = broker.MaxSecretBytes
	// MaxScopes is the most scopes one request may name.
	MaxScopes = broker.MaxScopes
	// MaxScopeBytes bounds one scope.
	MaxScopeBytes = broker.MaxScopeBytes
	// MaxAudienceBytes bounds the audience and the resource.
	MaxAudienceBytes = broker.MaxAudienceBytes
)

// The token request's parameters (RFC 6749 section 4.4.2, RFC 8707).
const (
	paramGrantType    = "grant_type"
	paramScope        = "scope"
	paramClientID     = "client_id"
	paramClientSecret = "client_secret"
	paramAudience     = "audience"
	paramResource     = "resource"
)

// params are the parameters the endpoint reads; each may appear at most
// once (RFC 6749 section 3.2). Others are ignored (section 3.2 again).
var params = []string{paramGrantType, paramScope, paramClientID, paramClientSecret, paramAudience, paramResource}

// grantClientCredentials is the only grant type served.
const grantClientCredentials = "client_credentials"

// basicChallenge is the WWW-Authenticate value sent with invalid_client.
const basicChallenge = `Basic realm="tokenbroker"`

// OAuth 2.0 error codes (RFC 6749 section 5.2, RFC 8707 section 2) and the
// two this endpoint adds: access_denied (a policy denial) and
// temporarily_unavailable (throttled or unavailable upstream), both borrowed
// from RFC 6749 section 4.1.2.1, and server_error from the same list.
const (
	codeInvalidRequest         = "invalid_request"
	codeInvalidClient          = "invalid_client"
	codeInvalidScope           = "invalid_scope"
	codeInvalidTarget          = "invalid_target"
	codeUnauthorizedClient     = "unauthorized_client"
	codeUnsupportedGrantType   = "unsupported_grant_type"
	codeAccessDenied           = "access_denied"
	codeTemporarilyUnavailable = "temporarily_unavailable"
	codeServerError            = "server_error"
)

// oauthError is a token endpoint error answer (RFC 6749 section 5.2).
type oauthError struct {
	// status is the HTTP status.
	status int
	// code is the `error` member; desc the `error_description` one, a
	// fixed text or one built from field names and rules only.
	code, desc string
	// challenge adds WWW-Authenticate: Basic.
	challenge bool
	// retryAfter, when positive, is sent as Retry-After (whole seconds,
	// rounded up).
	retryAfter time.Duration
	// allow is sent as Allow with 405.
	allow string
	// cause is the error behind a server-side failure, for the log line.
	cause error
}

// badRequest returns a 400 invalid_request error.
func badRequest(format string, args ...any) *oauthError {
	return &oauthError{status: http.StatusBadRequest, code: codeInvalidRequest, desc: fmt.Sprintf(format, args...)}
}

// invalidClient returns a 401 invalid_client error with a Basic challenge.
func invalidClient(desc string) *oauthError {
	return &oauthError{status: http.StatusUnauthorized, code: codeInvalidClient, desc: desc, challenge: true}
}

// tokenResponse is a successful answer (RFC 6749 section 5.1).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
}

// errorResponse is the body of an error answer.
type errorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// parsed is a checked token request.
type parsed struct {
	req broker.Request
	// basic says whether the client authenticated with the Authorization
	// header.
	basic bool
}

// serveToken serves the token endpoint for provider (the default one when
// empty) and logs one line.
func (h *handler) serveToken(w http.ResponseWriter, r *http.Request, provider string) {
	start := h.now()
	if provider == "" {
		provider = h.cfg.DefaultProvider
	}
	status, keyID, oerr := h.token(w, r, provider)
	// A token sent is logged at debug unless LogSuccesses (log.access),
	// as the gRPC access log does.
	level := slog.LevelInfo
	if oerr == nil && !h.cfg.LogSuccesses {
		level = slog.LevelDebug
	}
	if !h.cfg.Logger.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		// Milliseconds as a number, like the gRPC access log's grpc.time_ms.
		slog.Float64("time_ms", float64(h.now().Sub(start))/float64(time.Millisecond)),
	}
	if provider != "" {
		attrs = append(attrs, slog.String("provider", provider))
	}
	if keyID != "" {
		attrs = append(attrs, slog.String("key_id", keyID))
	}
	if oerr != nil {
		attrs = append(attrs, slog.String("error", oerr.code))
		if oerr.cause != nil {
			attrs = append(attrs, slog.String("cause", oerr.cause.Error()))
		}
	}
	h.cfg.Logger.LogAttrs(r.Context(), level, "token request", attrs...)
}

// token answers one token request. It returns the status sent, the key id
// when the request reached the broker's keys, and the error sent, if any.
func (h *handler) token(w http.ResponseWriter, r *http.Request, provider string) (int, string, *oauthError) {
	p, oerr := h.parse(w, r, provider)
	if oerr != nil {
		writeError(w, oerr)
		return oerr.status, "", oerr
	}
	if h.cfg.Authorize != nil {
		if err := h.authorize(r, p.req.Selector); err != nil {
			oerr := errorFor(err, p.basic)
			writeError(w, oerr)
			return oerr.status, "", oerr
		}
	}
	if h.cfg.Caller != nil {
		p.req.Caller = h.cfg.Caller(r)
	}
	tok, err := h.getToken(r, p.req)
	if err != nil {
		oerr := errorFor(err, p.basic)
		writeError(w, oerr)
		return oerr.status, broker.KeyIDOf(err), oerr
	}
	// The body of this token and expires_in, encoded once (encoded.go).
	body, ok := hitBody(tok, expiresIn(tok.ExpiresAt.Sub(h.now())))
	if !ok {
		oerr := errorFor(errors.New("encoding the token response"), p.basic)
		writeError(w, oerr)
		return oerr.status, tok.KeyID, oerr
	}
	writeBody(w, http.StatusOK, body)
	return http.StatusOK, tok.KeyID, nil
}

// errPanic stands for a panic in Authorize or the broker; its value is not
// described (it could hold anything).
var errPanic = errors.New("panic while serving a token request")

// authorize calls Config.Authorize, turning a panic into an error.
func (h *handler) authorize(r *http.Request, sel broker.Selector) (err error) {
	defer func() {
		if v := recover(); v != nil {
			h.logPanic(r)
			err = errPanic
		}
	}()
	return h.cfg.Authorize(r, sel)
}

// getToken calls the broker, turning a panic into an error.
func (h *handler) getToken(r *http.Request, req broker.Request) (tok broker.Token, err error) {
	defer func() {
		if v := recover(); v != nil {
			h.logPanic(r)
			tok, err = broker.Token{}, errPanic
		}
	}()
	return h.cfg.Broker.GetToken(r.Context(), req)
}

// logPanic logs a recovered panic with its stack. The panic's value is
// left out: it could hold a secret or a token.
func (h *handler) logPanic(r *http.Request) {
	h.cfg.Logger.LogAttrs(r.Context(), slog.LevelError, "panic while serving a token request",
		slog.String("path", r.URL.Path), slog.String("stack", string(debug.Stack())))
}

// expiresIn is the expires_in of a token with remaining life left: whole
// seconds, rounded down so the caller is never told the token lives longer
// than it does, and never negative.
func expiresIn(remaining time.Duration) int64 {
	if remaining <= 0 {
		return 0
	}
	return int64(remaining / time.Second)
}

// parse checks a token request for provider against every rule and turns
// it into a broker request.
func (h *handler) parse(w http.ResponseWriter, r *http.Request, provider string) (parsed, *oauthError) {
	if r.Method != http.MethodPost {
		e := &oauthError{status: http.StatusMethodNotAllowed, code: codeInvalidRequest,
			desc: "method not allowed: the token endpoint takes POST", allow: http.MethodPost}
		return parsed{}, e
	}
	switch {
	case provider == "" && len(h.cfg.Providers) == 0:
		return parsed{}, badRequest("no provider is configured")
	case provider == "":
		return parsed{}, badRequest("several providers are configured: use /oauth2/{provider}/token to name one")
	case !h.providers[provider]:
		return parsed{}, badRequest("provider: the path must name a configured provider")
	}
	if r.URL.RawQuery != "" {
		q, _ := url.ParseQuery(r.URL.RawQuery)
		for _, name := range params {
			if _, ok := q[name]; ok {
				return parsed{}, badRequest("%s: parameters must be sent in the request body, not in the URL (RFC 6749 section 3.2)", name)
			}
		}
	}
	if !isForm(r.Header.Get("Content-Type")) {
		return parsed{}, badRequest("Content-Type: must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return parsed{}, &oauthError{status: http.StatusRequestEntityTooLarge, code: codeInvalidRequest,
				desc: "request body: must be at most " + strconv.FormatInt(h.cfg.MaxBodyBytes, 10) + " bytes"}
		}
		return parsed{}, badRequest("request body: could not be read")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return parsed{}, badRequest("request body: must be a valid application/x-www-form-urlencoded form")
	}
	for _, name := range params {
		if len(form[name]) > 1 {
			return parsed{}, badRequest("%s: must not be repeated (RFC 6749 section 3.2)", name)
		}
	}
	// A parameter sent without a value is treated as omitted (RFC 6749
	// section 3.1); form.Get gives "" for both.

	id, sec, basic, oerr := clientAuth(r, form)
	if oerr != nil {
		return parsed{}, oerr
	}
	switch gt := form.Get(paramGrantType); gt {
	case grantClientCredentials:
	case "":
		return parsed{}, badRequest("%s: is required and must be %s", paramGrantType, grantClientCredentials)
	default:
		return parsed{}, &oauthError{status: http.StatusBadRequest, code: codeUnsupportedGrantType,
			desc: paramGrantType + ": only " + grantClientCredentials + " is supported"}
	}
	req := broker.Request{Selector: broker.Selector{
		Credentials: &broker.Credentials{Provider: provider, ClientID: id, ClientSecret: secret.String(sec)},
		Scopes:      splitScopes(form.Get(paramScope)),
		Audience:    form.Get(paramAudience),
		Resource:    form.Get(paramResource),
	}}
	// The request rules are the broker's; this edge only names the
	// parameter a broken rule comes from (see fieldDescription).
	if fe := broker.CheckRequest(req); fe != nil {
		return parsed{}, fieldError(fe)
	}
	return parsed{req: req, basic: basic}, nil
}

// clientAuth returns the client's credentials (RFC 6749 section 2.3.1):
// from an Authorization: Basic header (form-encoded id and secret) or from
// the client_id and client_secret parameters, never both. basic says which
// was used. A missing id or secret is an invalid_client error.
func clientAuth(r *http.Request, form url.Values) (id, sec string, basic bool, oerr *oauthError) {
	formID, formSecret := form.Get(paramClientID), form.Get(paramClientSecret)
	authz := r.Header.Values("Authorization")
	if _, ok := access.HTTPBearer(r); ok {
		// "Authorization: Bearer" carries the caller's identity (a
		// Kubernetes service-account token, checked by Config.Authorize),
		// not client credentials: those are then in the body.
		authz = nil
	}
	switch {
	case len(authz) > 1:
		return "", "", false, badRequest("Authorization: must not be repeated")
	case len(authz) == 1:
		id, sec, oerr = parseBasic(authz[0])
		if oerr != nil {
			return "", "", true, oerr
		}
		switch {
		case formSecret != "":
			return "", "", true, badRequest("client authentication: use the Authorization header or the client_id and client_secret parameters, not both")
		case formID != "" && formID != id:
			return "", "", true, badRequest("%s: must match the client id in the Authorization header", paramClientID)
		case id == "" || sec == "":
			return "", "", true, invalidClient("Authorization: Basic credentials must carry a client id and a client secret")
		}
		return id, sec, true, nil
	case formID == "" && formSecret == "":
		return "", "", false, invalidClient("client authentication is required: send an Authorization: Basic header (client_secret_basic) or client_id and client_secret parameters (client_secret_post)")
	case formID == "":
		return "", "", false, badRequest("%s: is required with %s", paramClientID, paramClientSecret)
	case formSecret == "":
		return "", "", false, invalidClient(paramClientSecret + ": is required (only confidential clients are served)")
	}
	return formID, formSecret, false, nil
}

// parseBasic decodes an Authorization header of the Basic scheme whose
// user and password are the form-encoded client id and secret (RFC 6749
// section 2.3.1).
func parseBasic(header string) (id, sec string, oerr *oauthError) {
	scheme, creds, _ := strings.Cut(strings.TrimSpace(header), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", "", invalidClient("Authorization: only the Basic scheme is supported (client_secret_basic)")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(creds))
	if err != nil {
		return "", "", malformedBasic()
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", malformedBasic()
	}
	if id, err = url.QueryUnescape(user); err != nil {
		return "", "", malformedBasic()
	}
	if sec, err = url.QueryUnescape(pass); err != nil {
		return "", "", malformedBasic()
	}
	return id, sec, nil
}

// malformedBasic is the error of an Authorization: Basic header that does
// not decode. It is built only when needed: formatting it on every request
// was a tenth of a cache hit's handler time.
func malformedBasic() *oauthError {
	return badRequest("Authorization: Basic credentials must be the base64 of the form-encoded client id, ':' and the form-encoded client secret (RFC 6749 section 2.3.1)")
}

// splitScopes splits the space-separated scope parameter (RFC 6749
// section 3.3). Empty items (double spaces) are skipped.
func splitScopes(param string) []string {
	var scopes []string
	for s := range strings.SplitSeq(param, " ") {
		if s != "" {
			scopes = append(scopes, s)
		}
	}
	return scopes
}

// formType is the media type of a token request's body.
const formType = "application/x-www-form-urlencoded"

// isForm reports whether a Content-Type header names formType, with or
// without parameters (such as a charset), in any case. The plain type,
// what clients send, is matched without parsing.
func isForm(contentType string) bool {
	if strings.EqualFold(contentType, formType) {
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == formType
}

// The headers every token endpoint answer carries, in canonical form and
// each value a slice of its own length (so an Add by anyone allocates
// rather than writes into it): set as they are, with no canonicalisation
// or allocation per answer.
var (
	headerJSON    = []string{"application/json;charset=UTF-8"}
	headerNoStore = []string{"no-store"}
	headerNoCache = []string{"no-cache"}
	headerNoSniff = []string{"nosniff"}
)

// setNoStore sets the headers every token endpoint answer carries.
func setNoStore(h http.Header) {
	h["Content-Type"] = headerJSON
	h["Cache-Control"] = headerNoStore
	h["Pragma"] = headerNoCache
	h["X-Content-Type-Options"] = headerNoSniff
}

// writeError sends e.
func writeError(w http.ResponseWriter, e *oauthError) {
	h := w.Header()
	if e.challenge {
		h.Set("WWW-Authenticate", basicChallenge)
	}
	if e.allow != "" {
		h.Set("Allow", e.allow)
	}
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(e.retryAfter), 10))
	}
	writeJSON(w, e.status, errorResponse{Error: e.code, Description: e.desc})
}

// retryAfterSeconds rounds d up to whole seconds, at least one.
func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

// writeJSON sends v as the JSON body of a status answer, with the
// no-store headers.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only strings and integers are marshalled; this cannot happen.
		body = []byte(`{"error":"server_error"}`)
		status = http.StatusInternalServerError
	}
	writeBody(w, status, body)
}

// writeBody sends body, JSON, as the answer with status.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	setNoStore(w.Header())
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
