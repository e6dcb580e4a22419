// Package verifyserver is the gRPC face of the verifier: the
// TokenVerifierService (VerifyToken) and Envoy's external authorization
// service (envoy.service.auth.v3.Authorization/Check), served on the
// broker's gRPC listener.
//
// Both are thin: validate the request, ask the policy whether the caller
// may verify tokens, apply the optional per-caller rate limit, call the
// verifier, and map its answer. A refused token is an answer: VerifyToken
// returns it as a Refusal, Check as a denied HTTP response (401 with
// WWW-Authenticate: Bearer error="invalid_token", or 403 with
// error="insufficient_scope", RFC 6750). Check answers a caller the
// policy refuses with 403 and one over the rate limit with 429 (and
// Retry-After), never with an RPC error: Envoy would take that for a
// broken authorization service and, with failure_mode_allow, let the
// request through unverified. Only a token that could not be checked (the
// provider's keys were never fetched, its introspection endpoint failed)
// is an RPC error, UNAVAILABLE, so that Envoy applies its
// failure_mode_allow setting. No token ever appears in a response, a log
// line or an error.
package verifyserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// Limits of a VerifyToken request.
const (
	// MaxRequiredScopes is the most required scopes one request may name.
	MaxRequiredScopes = 50
	// MaxFieldLength bounds each scope, the audience, the client id and
	// the provider, in bytes.
	MaxFieldLength = 1024
	// maxLimiters bounds the per-caller limiters kept; beyond it they are
	// forgotten (and start again full).
	maxLimiters = 10000
)

// Verifier is what the server needs of the verifier.
type Verifier interface {
	// Verify checks a token (see verifier.Verifier.Verify).
	Verify(ctx context.Context, req verifier.Request) (*verifier.Claims, error)
	// MaxTokenSize is the longest token accepted, in bytes.
	MaxTokenSize() int
}

// Headers names the request headers ext_authz sets, on success, for the
// service behind Envoy; "" leaves one out, and the zero Headers forwards
// no claims (internal/config holds the default names). Headers of these names that the
// client sent are removed, so the service can trust them.
type Headers struct {
	// Subject carries "sub".
	Subject string
	// ClientID carries the client id.
	ClientID string
	// Scopes carries the scopes, space-separated.
	Scopes string
	// Provider carries the provider's configured name.
	Provider string
	// Issuer carries "iss".
	Issuer string
	// Audience carries the audiences, space-separated.
	Audience string
}

// PathScopes are the scopes a request path needs, for ext_authz requests
// whose route sets no "required_scopes" context extension.
type PathScopes struct {
	// Prefix is a path prefix, such as "/orders"; the longest match wins.
	// It matches whole path segments of the normalised request path (see
	// Check): "/orders" and "/orders/" both match "/orders" and
	// "/orders/42", not "/orders-archive".
	Prefix string
	// Scopes must all be among the token's scopes.
	Scopes []string
}

// Config configures a Server.
type Config struct {
	// Verifier checks tokens. Required.
	Verifier Verifier
	// Authorize decides whether the caller (its identity in ctx) may
	// verify tokens; an error refuses the call: VerifyToken with
	// PERMISSION_DENIED and the error's message, Check with HTTP 403 (the
	// message in the CheckResponse's status, not in the body). Nil allows
	// every caller.
	Authorize func(ctx context.Context) error
	// Caller names the caller for the rate limit. Nil: one bucket for all.
	Caller func(ctx context.Context) string
	// RateLimit is the sustained verifications per second one caller may
	// ask for; 0 means no limit. RateBurst is the bucket size (at least 1
	// when RateLimit is set).
	RateLimit float64
	// RateBurst: see RateLimit.
	RateBurst int
	// Headers are the claim headers ext_authz forwards; "" leaves one
	// out.
	Headers Headers
	// PathScopes are per-path-prefix required scopes for ext_authz.
	PathScopes []PathScopes
}

// Server serves VerifyToken and Check.
type Server struct {
	cfg Config

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("verifyserver: Verifier is required")
	}
	if cfg.RateLimit < 0 || cfg.RateBurst < 0 {
		return nil, errors.New("verifyserver: RateLimit and RateBurst must not be negative")
	}
	if cfg.RateLimit > 0 && cfg.RateBurst == 0 {
		cfg.RateBurst = 1
	}
	for i, p := range cfg.PathScopes {
		if !strings.HasPrefix(p.Prefix, "/") {
			return nil, fmt.Errorf("verifyserver: PathScopes[%d].Prefix: must start with '/', got %q", i, p.Prefix)
		}
	}
	return &Server{cfg: cfg, limiters: map[string]*rate.Limiter{}}, nil
}

// Register registers TokenVerifierService and envoy.service.auth.v3
// Authorization on g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	tokenbrokerv1.RegisterTokenVerifierServiceServer(g, verifyService{s: s})
	authv3.RegisterAuthorizationServer(g, authzService{s: s})
}

// refusal is why admit turned a caller away: PermissionDenied (the
// policy) or ResourceExhausted (the rate limit, with the wait until the
// caller's next verification, if known).
type refusal struct {
	code       codes.Code
	msg        string
	retryAfter time.Duration
}

// err is the refusal as the RPC error VerifyToken returns.
func (r *refusal) err() error { return status.Error(r.code, r.msg) }

// admit applies the policy and the per-caller rate limit; nil admits.
func (s *Server) admit(ctx context.Context) *refusal {
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(ctx); err != nil {
			return &refusal{code: codes.PermissionDenied, msg: err.Error()}
		}
	}
	if s.cfg.RateLimit <= 0 {
		return nil
	}
	caller := ""
	if s.cfg.Caller != nil {
		caller = s.cfg.Caller(ctx)
	}
	s.mu.Lock()
	l := s.limiters[caller]
	if l == nil {
		if len(s.limiters) >= maxLimiters {
			clear(s.limiters)
		}
		l = rate.NewLimiter(rate.Limit(s.cfg.RateLimit), s.cfg.RateBurst)
		s.limiters[caller] = l
	}
	s.mu.Unlock()
	// A reservation that would have to wait is cancelled (its token given
	// back); its delay is when the caller may try again.
	if r := l.Reserve(); !r.OK() || r.Delay() > 0 {
		wait := time.Duration(0)
		if r.OK() {
			wait = r.Delay()
			r.Cancel()
		}
		return &refusal{
			code:       codes.ResourceExhausted,
			msg:        fmt.Sprintf("verification rate limit of %g per second exceeded for this caller", s.cfg.RateLimit),
			retryAfter: wait,
		}
	}
	return nil
}

// verifyService implements TokenVerifierService.
type verifyService struct {
	tokenbrokerv1.UnsafeTokenVerifierServiceServer
	s *Server
}

// VerifyToken implements TokenVerifierService.
func (h verifyService) VerifyToken(ctx context.Context, req *tokenbrokerv1.VerifyTokenRequest) (*tokenbrokerv1.VerifyTokenResponse, error) {
	if err := validate(req); err != nil {
		return nil, err
	}
	if r := h.s.admit(ctx); r != nil {
		return nil, r.err()
	}
	c, err := h.s.cfg.Verifier.Verify(ctx, verifier.Request{
		Token:            req.GetToken(),
		RequiredScopes:   req.GetRequiredScopes(),
		ExpectedAudience: req.GetExpectedAudience(),
		ExpectedClientID: req.GetExpectedClientId(),
		Provider:         req.GetProvider(),
	})
	var re *verifier.RefusedError
	switch {
	case err == nil:
		return &tokenbrokerv1.VerifyTokenResponse{Result: &tokenbrokerv1.VerifyTokenResponse_Claims{Claims: toProto(c)}}, nil
	case errors.As(err, &re):
		return &tokenbrokerv1.VerifyTokenResponse{Result: &tokenbrokerv1.VerifyTokenResponse_Refusal{Refusal: &tokenbrokerv1.Refusal{
			Reason:  tokenbrokerv1.RefusalReason(re.Reason),
			Message: re.Message,
		}}}, nil
	}
	return nil, statusOf(err)
}

// statusOf maps an error of Verify that is not a refusal.
func statusOf(err error) error {
	switch {
	case errors.Is(err, verifier.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, "internal error verifying the token")
}

// validate checks a VerifyTokenRequest; errors name the field and rule.
func validate(req *tokenbrokerv1.VerifyTokenRequest) error {
	if req.GetToken() == "" {
		return status.Error(codes.InvalidArgument, "token: must be set")
	}
	if n := len(req.GetRequiredScopes()); n > MaxRequiredScopes {
		return status.Errorf(codes.InvalidArgument, "required_scopes: at most %d, got %d", MaxRequiredScopes, n)
	}
	for i, sc := range req.GetRequiredScopes() {
		if msg := checkScope(sc); msg != "" {
			return status.Errorf(codes.InvalidArgument, "required_scopes[%d]: %s", i, msg)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"expected_audience", req.GetExpectedAudience()},
		{"expected_client_id", req.GetExpectedClientId()},
		{"provider", req.GetProvider()},
	} {
		if len(f.v) > MaxFieldLength {
			return status.Errorf(codes.InvalidArgument, "%s: at most %d bytes, got %d", f.name, MaxFieldLength, len(f.v))
		}
	}
	return nil
}

// checkScope returns what is wrong with a required scope, "" if nothing:
// an RFC 6749 scope-token of at most MaxFieldLength bytes.
func checkScope(sc string) string {
	if sc == "" || len(sc) > MaxFieldLength {
		return fmt.Sprintf("must be 1-%d bytes", MaxFieldLength)
	}
	for i := 0; i < len(sc); i++ {
		if b := sc[i]; b < 0x21 || b > 0x7e || b == '"' || b == '\\' {
			return `must be printable ASCII without spaces, '"' or '\'`
		}
	}
	return ""
}

// toProto converts verified claims.
func toProto(c *verifier.Claims) *tokenbrokerv1.VerifiedClaims {
	out := &tokenbrokerv1.VerifiedClaims{
		Provider:  c.Provider,
		Issuer:    c.Issuer,
		Subject:   c.Subject,
		ClientId:  c.ClientID,
		Scopes:    c.Scopes,
		Audience:  c.Audience,
		TokenUse:  c.TokenUse,
		TokenId:   c.TokenID,
		ExpiresAt: timestamppb.New(c.Expiry),
	}
	if !c.IssuedAt.IsZero() {
		out.IssuedAt = timestamppb.New(c.IssuedAt)
	}
	return out
}
