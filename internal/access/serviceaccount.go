package access

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// SourceK8s: the identity is a verified Kubernetes service-account token's
// ("k8s:NAMESPACE:SERVICEACCOUNT").
const SourceK8s = "k8s_token"

// ErrUnauthenticated is matched (errors.Is) by a *UnauthenticatedError: a
// caller's presented identity proof was refused.
var ErrUnauthenticated = errors.New("unauthenticated")

// UnauthenticatedError is a refused identity proof (a service-account
// token that failed verification). Reason says why and never holds the
// token; Unavailable is set when the proof could not be checked at all
// (the issuer's keys could not be fetched).
type UnauthenticatedError struct {
	// Reason is the message, for example "service-account token refused:
	// expired: token expired at 2025-01-01T00:00:00Z".
	Reason string
	// Unavailable says the token could not be checked, rather than was
	// refused.
	Unavailable bool
}

// Error implements error.
func (e *UnauthenticatedError) Error() string { return e.Reason }

// Unwrap returns ErrUnauthenticated.
func (e *UnauthenticatedError) Unwrap() error { return ErrUnauthenticated }

// GRPCStatus returns the error as an Unauthenticated status (Unavailable
// when the token could not be checked) with the same message.
func (e *UnauthenticatedError) GRPCStatus() *status.Status {
	if e.Unavailable {
		return status.New(codes.Unavailable, e.Reason)
	}
	return status.New(codes.Unauthenticated, e.Reason)
}

// LooksLikeJWT reports whether a bearer value has the shape of a compact
// JWS: three non-empty base64url segments separated by dots, the first
// starting with "eyJ" (the base64 of `{"`). Such a value goes to the
// service-account verifier; anything else is an API key. API keys are
// random strings (README: `openssl rand -base64 32`) and never have this
// shape (base64 of random bytes has no dots).
func LooksLikeJWT(s string) bool {
	if !strings.HasPrefix(s, "eyJ") || strings.Count(s, ".") != 2 {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if part == "" {
			return false
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// verifyServiceAccount checks a service-account token.
func (a *Authenticator) verifyServiceAccount(ctx context.Context, token string) (Identity, error) {
	name, err := a.serviceAccounts.Verify(ctx, token)
	if err != nil {
		if ctx.Err() != nil {
			return Identity{}, status.FromContextError(ctx.Err()).Err()
		}
		if errors.Is(err, verifier.ErrUnavailable) {
			return Identity{}, &UnauthenticatedError{Reason: "service-account token could not be verified: the issuer's keys are unavailable", Unavailable: true}
		}
		return Identity{}, &UnauthenticatedError{Reason: "service-account " + err.Error()}
	}
	return Identity{Name: name, Source: SourceK8s}, nil
}

// HTTPIdentity returns the identity of an HTTP caller: its verified client
// certificate's over HTTPS (an Authorization header is then ignored);
// else the service-account token in an "Authorization: Bearer" header;
// else the anonymous identity (callers of the token endpoint prove they
// hold the client credentials they present). A bearer value is refused
// with an *UnauthenticatedError when it does not verify, is not a JWT, or
// ServiceAccounts is not configured: a caller that tries to prove an
// identity is never served as anonymous instead.
func (a *Authenticator) HTTPIdentity(r *http.Request) (Identity, error) {
	id := TLSIdentity(r.TLS)
	if id.Source == SourceMTLS {
		return id, nil
	}
	token, ok := HTTPBearer(r)
	switch {
	case !ok:
		return id, nil
	case a.serviceAccounts == nil:
		return Identity{}, &UnauthenticatedError{Reason: "Authorization: Bearer carries a Kubernetes service-account token, which this broker does not accept (auth.kubernetes is off)"}
	case !LooksLikeJWT(token):
		return Identity{}, &UnauthenticatedError{Reason: "Authorization: Bearer must carry a Kubernetes service-account token (a JWT)"}
	}
	return a.verifyServiceAccount(r.Context(), token)
}

// HTTPBearer returns the value of a single "Authorization: Bearer <value>"
// header. ok is false without one (a Basic header carries client
// credentials, not an identity).
func HTTPBearer(r *http.Request) (string, bool) {
	vals := r.Header.Values("Authorization")
	if len(vals) != 1 {
		return "", false
	}
	scheme, rest, found := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	rest = strings.TrimSpace(rest)
	return rest, rest != ""
}
