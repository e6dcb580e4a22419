package access

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Method prefixes the interceptors treat specially.
const (
	// AdminServicePrefix starts every AdminService method name.
	AdminServicePrefix = "/tokenbroker.v1.AdminService/"
	healthPrefix       = "/grpc.health.v1.Health/"
	reflectionV1       = "/grpc.reflection.v1.ServerReflection/"
	reflectionV1Alpha  = "/grpc.reflection.v1alpha.ServerReflection/"
)

// Messages of the statuses the interceptors return.
const (
	msgAuthRequired  = "authentication required: present a client certificate or an API key"
	msgInvalidKey    = "invalid API key"
	msgCertNoSAN     = "client certificate has no URI or DNS subject alternative name"
	msgAdminDenied   = "admin access denied"
	msgNoIdentity    = "caller identity unknown"
	msgReservedIdent = `"anonymous" is reserved for unauthenticated callers`
	msgKeyKind       = `is the key's name without its kind: callers presenting the key are "apikey:" and this name`
	msgAnonymousOff  = `"anonymous" names unauthenticated callers, who are refused unless auth.allow_unauthenticated is on`
)

// Config configures an Authenticator.
type Config struct {
	// APIKeys are the accepted bearer keys. Identities must be non-empty,
	// must not start with "apikey:" (callers presenting a key are known as
	// "apikey:" and its Identity) and digests distinct.
	APIKeys []APIKey
	// AllowUnauthenticated lets callers without a certificate or key in as
	// Identity{Name: "anonymous", Source: "anonymous"}. A presented but
	// invalid key is still refused. Without it, neither AdminIdentities nor
	// Policy may name "anonymous".
	AllowUnauthenticated bool
	// AdminIdentities may call the AdminService: typed names, prefix
	// patterns, "*" (every authenticated identity) or "anonymous", as in
	// policy rules (Rule.Identity).
	AdminIdentities []string
	// AdminOpen makes every caller that passes authentication an admin
	// (for -dev). It overrides AdminIdentities.
	AdminOpen bool
	// Policy authorizes token requests (Authenticator.Authorize). Nil allows
	// everything.
	Policy *Policy
	// ServiceAccounts, when set, verifies bearer values shaped like a JWT
	// (LooksLikeJWT) as Kubernetes service-account tokens; other bearer
	// values are API keys. Nil: every bearer value is an API key.
	ServiceAccounts TokenVerifier
}

// TokenVerifier verifies a caller's bearer token and returns its typed
// identity name. Its errors never hold the token; an error matching
// verifier.ErrUnavailable is a failure to check, others are refusals. It
// must be safe for concurrent use.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (string, error)
}

// Authenticator resolves callers' identities and guards the AdminService.
// It is immutable and safe for concurrent use.
type Authenticator struct {
	keys                 keyTable // Identity holds the typed name
	allowUnauthenticated bool
	admins               []ident.Pattern
	adminOpen            bool
	policy               *Policy
	serviceAccounts      TokenVerifier
}

// New checks cfg and returns an Authenticator. An error is a *ConfigError
// naming the entry, such as "api_keys[1].identity" or
// "admin_identities[0]".
func New(cfg Config) (*Authenticator, error) {
	keys := make(keyTable, 0, len(cfg.APIKeys))
	for i, k := range cfg.APIKeys {
		field := indexed("api_keys", i)
		switch {
		case k.Identity == "":
			return nil, &ConfigError{Field: field + ".identity", Rule: "must not be empty"}
		case strings.TrimSpace(k.Identity) != k.Identity:
			return nil, &ConfigError{Field: field + ".identity", Rule: "must not have leading or trailing spaces"}
		case k.Identity == AnonymousName:
			return nil, &ConfigError{Field: field + ".identity", Rule: msgReservedIdent}
		case strings.HasPrefix(k.Identity, ident.APIKeyPrefix):
			return nil, &ConfigError{Field: field + ".identity", Rule: msgKeyKind}
		case k.SHA256 == [32]byte{}:
			return nil, &ConfigError{Field: field + ".sha256", Rule: "must be set"}
		}
		for j := range i {
			if cfg.APIKeys[j].SHA256 == k.SHA256 {
				return nil, &ConfigError{Field: field + ".sha256", Rule: "must differ from " + indexed("api_keys", j) + ".sha256"}
			}
		}
		keys = append(keys, APIKey{Identity: ident.APIKey(k.Identity), SHA256: k.SHA256})
	}
	admins, err := parsePatterns("admin_identities", cfg.AdminIdentities)
	if err != nil {
		return nil, err
	}
	if !cfg.AllowUnauthenticated {
		for i, p := range admins {
			if p.IsAnonymous() {
				return nil, &ConfigError{Field: indexed("admin_identities", i), Rule: msgAnonymousOff}
			}
		}
		if i := cfg.Policy.anonymousRule(); i >= 0 {
			return nil, &ConfigError{Field: indexed("rules", i) + ".identity", Rule: msgAnonymousOff}
		}
	}
	return &Authenticator{
		keys:                 keys,
		allowUnauthenticated: cfg.AllowUnauthenticated,
		admins:               admins,
		adminOpen:            cfg.AdminOpen,
		policy:               cfg.Policy,
		serviceAccounts:      cfg.ServiceAccounts,
	}, nil
}

// Authenticate returns the identity of the call in ctx. In order: a
// verified client certificate's identity (any authorization metadata is
// then ignored); else the identity of the bearer value: a verified
// service-account token's (when it looks like a JWT and ServiceAccounts
// is configured) or a valid API key's; else, when allowed, the anonymous
// identity. Failures are Unauthenticated statuses (Unavailable when the
// service-account keys could not be fetched) whose messages never contain
// the presented key or token.
func (a *Authenticator) Authenticate(ctx context.Context) (Identity, error) {
	id, cert := peerCertIdentity(ctx)
	if cert == certOK {
		return id, nil
	}
	key, present, err := bearerKey(ctx)
	if err != nil {
		return Identity{}, status.Error(codes.Unauthenticated, err.Error())
	}
	if present {
		if a.serviceAccounts != nil && LooksLikeJWT(key) {
			id, err := a.verifyServiceAccount(ctx, key)
			if err != nil {
				return Identity{}, err
			}
			return id, nil
		}
		name, ok := a.keys.lookup(key)
		if !ok {
			return Identity{}, status.Error(codes.Unauthenticated, msgInvalidKey)
		}
		return Identity{Name: name, Source: SourceAPIKey}, nil
	}
	if cert == certNoSAN {
		return Identity{}, status.Error(codes.Unauthenticated, msgCertNoSAN)
	}
	if a.allowUnauthenticated {
		return Identity{Name: AnonymousName, Source: SourceAnonymous}, nil
	}
	return Identity{}, status.Error(codes.Unauthenticated, msgAuthRequired)
}

// IsAdmin reports whether id may call the AdminService.
func (a *Authenticator) IsAdmin(id Identity) bool {
	if id.Name == "" {
		return false
	}
	return a.adminOpen || matchAny(a.admins, id.Name)
}

// Authorize applies the configured policy to the identity in ctx (see
// Policy.Authorize). Without a policy it allows everything; with one, a
// context without an identity is refused. Errors match ErrPermissionDenied.
func (a *Authenticator) Authorize(ctx context.Context, sel broker.Selector) error {
	if a.policy.Empty() {
		return nil
	}
	id, ok := FromContext(ctx)
	if !ok {
		return denied(msgNoIdentity)
	}
	return a.policy.Authorize(id, sel)
}

// AuthorizeVerify applies the configured policy's verify grant to the
// identity in ctx (see Policy.AuthorizeVerify). Without a policy it allows
// everything; with one, a context without an identity is refused.
func (a *Authenticator) AuthorizeVerify(ctx context.Context) error {
	if a.policy.Empty() {
		return nil
	}
	id, ok := FromContext(ctx)
	if !ok {
		return denied(msgNoIdentity)
	}
	return a.policy.AuthorizeVerify(id)
}

// Policy returns the configured policy (nil when none).
func (a *Authenticator) Policy() *Policy { return a.policy }

// isOpen reports whether method is served without authentication.
func isOpen(method string) bool {
	return strings.HasPrefix(method, healthPrefix) ||
		strings.HasPrefix(method, reflectionV1) ||
		strings.HasPrefix(method, reflectionV1Alpha)
}

// check authenticates a call to method and returns ctx with its identity.
func (a *Authenticator) check(ctx context.Context, method string) (context.Context, error) {
	if isOpen(method) {
		return ctx, nil
	}
	id, err := a.Authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(method, AdminServicePrefix) && !a.IsAdmin(id) {
		return nil, status.Error(codes.PermissionDenied, msgAdminDenied)
	}
	return NewContext(ctx, id), nil
}

// UnaryServerInterceptor authenticates every unary call except health and
// reflection, requires an admin identity for the AdminService, and passes
// the handler a context holding the Identity (FromContext).
func (a *Authenticator) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.check(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams.
func (a *Authenticator) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.check(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
	}
}

// identityStream is a ServerStream whose context carries the identity.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context returns the stream's context with the caller's identity.
func (s *identityStream) Context() context.Context { return s.ctx }
