package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// DefaultRetryAfter is the Retry-After sent with 429 when the upstream
// error does not say how long to wait.
const DefaultRetryAfter = time.Second

// maxDescriptionBytes bounds an error_description taken from an
// access.ErrPermissionDenied error's own text.
const maxDescriptionBytes = 256

// errorRow is one row of the error table.
type errorRow struct {
	// kind is matched with errors.Is.
	kind error
	// status and code are the HTTP status and the OAuth error code.
	status int
	code   string
	// desc is the error_description: fixed text, never the error's.
	desc string
}

// errorTable maps broker and upstream errors to token endpoint answers:
// the first row whose kind matches (errors.Is) wins. It mirrors the gRPC
// server's table (internal/server/errors.go); every caller of this
// endpoint presented its own credentials, so the pass-through column of
// that table applies. errorFor handles the rows' refinements, context
// errors and unknown errors.
//
// Choices worth stating:
//   - a policy denial (access.ErrPermissionDenied) is 403 access_denied: RFC 6749 has
//     no token endpoint code for it, and the caller did authenticate;
//   - broker.ErrPassthroughDisabled is 400 unauthorized_client: the broker
//     does not serve tokens for caller-held credentials at all, so this
//     client may not use the grant here;
//   - upstream.ErrInvalidClient is 401 invalid_client, with
//     WWW-Authenticate when the client used the Authorization header
//     (RFC 6749 section 5.2);
//   - upstream.ErrThrottled is 429 temporarily_unavailable with
//     Retry-After (the endpoint's delay, else DefaultRetryAfter); when the
//     broker's own budget refused the request (a Local error: the
//     provider's budget, its pass-through share, or a caller's or client
//     id's part of that), the description says which;
//     upstream.ErrUnavailable and a timeout are 503
//     temporarily_unavailable, with Retry-After when the endpoint sent one;
//   - upstream.ErrRejected is 400 with the endpoint's own code when that is
//     invalid_request or invalid_target (the caller's parameters were
//     refused), else 502 server_error (the provider's setup refuses the
//     broker's request; retrying it unchanged will not help);
//   - broker.ErrTokenTooShort is 502 server_error: the provider issues
//     tokens with less life than the broker may serve.
var errorTable = []errorRow{
	{access.ErrUnauthenticated, http.StatusUnauthorized, codeInvalidClient, "caller authentication failed"},
	{access.ErrPermissionDenied, http.StatusForbidden, codeAccessDenied, "access denied"},
	{broker.ErrInvalidArgument, http.StatusBadRequest, codeInvalidRequest, "invalid request"},
	{broker.ErrUnknownProvider, http.StatusBadRequest, codeInvalidRequest, "provider: must name a configured provider"},
	{broker.ErrUnknownClient, http.StatusBadRequest, codeInvalidRequest, "unknown client"},
	{broker.ErrPassthroughDisabled, http.StatusBadRequest, codeUnauthorizedClient, "this broker does not serve tokens for client credentials presented by callers"},
	{broker.ErrTokenTooShort, http.StatusBadGateway, codeServerError, "the token endpoint issues tokens with less life than the broker may serve"},
	{upstream.ErrInvalidClient, http.StatusUnauthorized, codeInvalidClient, "client authentication failed at the token endpoint"},
	{upstream.ErrInvalidScope, http.StatusBadRequest, codeInvalidScope, "the token endpoint refused the requested scope"},
	{upstream.ErrUnauthorizedClient, http.StatusBadRequest, codeUnauthorizedClient, "the client may not use the client-credentials grant"},
	{upstream.ErrThrottled, http.StatusTooManyRequests, codeTemporarilyUnavailable, "the token endpoint is throttling requests; retry after the Retry-After delay"},
	{upstream.ErrUnavailable, http.StatusServiceUnavailable, codeTemporarilyUnavailable, "the token endpoint is unavailable"},
	{upstream.ErrRejected, http.StatusBadGateway, codeServerError, "the token endpoint rejected the request"},
}

// retryDelayer is implemented by upstream errors that know how long the
// caller should wait before trying again.
type retryDelayer interface {
	RetryDelay() time.Duration
}

// errorFor maps an error from Authorize or the broker to the answer sent.
// basic says whether the client authenticated with the Authorization
// header. The description is the table's fixed text, a *broker.FieldError's
// field and rule, or for access.ErrPermissionDenied the denial's own sanitised text;
// never the text of another error. Server-side failures keep err as the
// cause, for the log line.
func errorFor(err error, basic bool) *oauthError {
	for _, row := range errorTable {
		if !errors.Is(err, row.kind) {
			continue
		}
		e := &oauthError{status: row.status, code: row.code, desc: row.desc}
		switch row.kind {
		case access.ErrPermissionDenied, access.ErrUnauthenticated:
			var ue *access.UnauthenticatedError
			if errors.As(err, &ue) && ue.Unavailable {
				e.status, e.code = http.StatusServiceUnavailable, codeTemporarilyUnavailable
			}
			if own := sanitize(err.Error()); own != "" {
				e.desc = own
			}
		case broker.ErrInvalidArgument, broker.ErrUnknownProvider, broker.ErrUnknownClient:
			var fe *broker.FieldError
			if errors.As(err, &fe) {
				e.desc = fieldDescription(fe)
			}
		case upstream.ErrInvalidClient:
			e.challenge = basic
		case upstream.ErrThrottled:
			e.retryAfter = DefaultRetryAfter
			if d := retryDelay(err); d > 0 {
				e.retryAfter = d
			}
			var ue *upstream.Error
			if errors.As(err, &ue) && ue.Local {
				// The broker's own budget refused the request (its text is
				// ours, never the endpoint's): say so rather than blame
				// the endpoint.
				e.desc = sanitize("request limit reached: " + ue.Description + "; retry after the Retry-After delay")
			}
		case upstream.ErrUnavailable:
			e.retryAfter = retryDelay(err)
			e.cause = err
		case upstream.ErrRejected:
			var ue *upstream.Error
			if errors.As(err, &ue) && (ue.Code == codeInvalidRequest || ue.Code == codeInvalidTarget) {
				e.status, e.code = http.StatusBadRequest, ue.Code
				e.desc += " (" + ue.Code + ")"
			} else {
				e.cause = err
			}
		case broker.ErrTokenTooShort:
			e.cause = err
		}
		return e
	}
	var fe *broker.FieldError
	if errors.As(err, &fe) {
		// A field error of an unexpected kind is still a request error.
		return &oauthError{status: http.StatusBadRequest, code: codeInvalidRequest, desc: fieldDescription(fe)}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &oauthError{status: http.StatusServiceUnavailable, code: codeTemporarilyUnavailable,
			desc: "timed out waiting for the token endpoint", cause: err}
	case errors.Is(err, context.Canceled):
		return &oauthError{status: http.StatusServiceUnavailable, code: codeTemporarilyUnavailable,
			desc: "the request was cancelled", cause: err}
	}
	return &oauthError{status: http.StatusInternalServerError, code: codeServerError, desc: "internal error", cause: err}
}

// retryDelay returns the delay an upstream error asks for, or 0.
func retryDelay(err error) time.Duration {
	var rd retryDelayer
	if errors.As(err, &rd) {
		return max(rd.RetryDelay(), 0)
	}
	return 0
}

// param is the token request parameter a field of a broker.Request comes
// from, and the OAuth error code of a broken rule of that field.
type param struct {
	name, code string
}

// paramOf maps the broker's field paths (broker.Field*) to the token
// request's parameters: the one table of names of this edge. The provider
// is named by the path (/oauth2/{provider}/token).
var paramOf = map[string]param{
	broker.FieldProvider:     {"provider", codeInvalidRequest},
	broker.FieldClientID:     {paramClientID, codeInvalidRequest},
	broker.FieldClientSecret: {paramClientSecret, codeInvalidRequest},
	broker.FieldScopes:       {paramScope, codeInvalidRequest},
	broker.FieldAudience:     {paramAudience, codeInvalidRequest},
	broker.FieldResource:     {paramResource, codeInvalidTarget},
}

// fieldError is the answer to a request that breaks a broker request rule
// (broker.CheckRequest): 400 with the code of the field's parameter
// (invalid_target for the resource, else invalid_request).
func fieldError(fe *broker.FieldError) *oauthError {
	code := codeInvalidRequest
	if p, ok := paramOf[fe.Field]; ok {
		code = p.code
	}
	return &oauthError{status: http.StatusBadRequest, code: code, desc: fieldDescription(fe)}
}

// fieldDescription renders a broker field error with the name of the HTTP
// parameter the field comes from (see paramOf). Scope i of the list is
// "scope i+1" of the scope parameter ("selector.scopes[2]" → "scope: scope
// 3 …"). A field the table does not know keeps its path without the
// "selector." and "client_credentials." prefixes.
func fieldDescription(fe *broker.FieldError) string {
	if i, ok := broker.ScopeIndex(broker.FieldScopes, fe.Field); ok {
		return sanitize(paramScope + ": scope " + strconv.Itoa(i+1) + " " + fe.Rule)
	}
	name, ok := paramOf[fe.Field]
	if !ok {
		field := strings.TrimPrefix(fe.Field, "selector.")
		name.name = strings.TrimPrefix(field, "client_credentials.")
	}
	return sanitize(name.name + ": " + fe.Rule)
}

// sanitize keeps printable ASCII and at most maxDescriptionBytes of s.
func sanitize(s string) string {
	b := make([]byte, 0, min(len(s), maxDescriptionBytes))
	for i := 0; i < len(s) && len(b) < maxDescriptionBytes; i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e {
			b = append(b, c)
		}
	}
	return string(b)
}
