// Package sds serves the broker's tokens to Envoy sidecars over the Secret
// Discovery Service (envoy.service.secret.v3.SecretDiscoveryService,
// StreamSecrets and FetchSecrets), so that Envoy's generic credential
// injector adds the Authorization header with no client code and the whole
// mesh makes one upstream request per key per refresh window.
//
// A secret is a token. Its name maps to a broker-held client and scopes
// (and audience or resource): a configured name (Config.Secrets) or, when
// Config.AllowParsedNames is set, a name of the form
// "oauth2:CLIENT:SCOPE+SCOPE" (ParseName). The secret Envoy receives is a
// generic_secret whose inline value is the ready header value
// (Config.HeaderFormat, "Bearer %s" by default).
//
// Each subscribed name is backed by a broker watch (the machinery of
// WatchToken): the current token is sent as soon as the name is requested
// (so a sidecar that reconnects has it at once), and a new version is
// pushed whenever the broker replaces the token: at the refresh point,
// after an invalidation, on recovery from an outage. The version is the
// token's issue time in Unix nanoseconds, the same on every stream and
// every replica that holds the same token. A response is encoded once per
// secret name and version and the same bytes go to every stream (see
// prepared.go), so its nonce is derived from the name and the version: on
// one stream, it tells apart every response that differs. A request that
// answers a pending response's nonce is its ACK or, with error_detail, its
// NACK (logged and counted; Envoy keeps its
// previous secret, and the next token is pushed as usual); requests with a
// stale nonce only update the subscription. When no valid token can be held
// (an outage outlasting the token), nothing is pushed: Envoy keeps what it
// has, and the recovery's token is pushed when the endpoint is back.
//
// Who may have which secret is the caller policy (Config.Authorize, the
// same hook as GetToken) applied to the identity the server's
// authentication interceptors put in the context (access.Identity: an mTLS
// certificate's SPIFFE ID or DNS name, or an API key). A name that is
// unknown, malformed, or not granted is refused with one status,
// codes.PermissionDenied MsgRefused, so a caller cannot learn which names
// exist.
//
// Why not go-control-plane's server (pkg/server/v3) and snapshot cache:
// the snapshot cache files resources by node id, which the client declares
// and nothing authenticates, and its Cache interface never sees the
// stream's authenticated identity, so per-caller authorization of each
// requested name would have to be bolted on beside it; and a snapshot per
// node would hold a second copy of every token outside the token cache,
// which is the one home of tokens' bytes and bounded by cache.max_cost.
// The stream loop here is small: the generated service interface and
// types of go-control-plane/envoy (no hand-copied protos), one broker
// watcher per subscribed name (a one-slot latest-wins mailbox, so a slow
// sidecar never delays the others), and the xDS version and nonce rules.
//
// No token appears in a log line, a metric or an error: the secret's value
// is only in the DiscoveryResponse.
package sds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/sds/sdsname"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// TypeURL is the type of every resource the server sends: Envoy's Secret.
const TypeURL = resourcev3.SecretType

// Limits of a request.
const (
	// MaxNames is the most resource names one request may carry.
	MaxNames = 64
)

// MsgRefused is the message of the one status, codes.PermissionDenied,
// that refuses a name that is unknown, malformed or not granted to the
// caller.
const MsgRefused = "secret unknown or not granted to this caller"

// Observer receives the server's counts, by secret name. *metrics.Metrics
// implements it (capping the names' label values).
type Observer interface {
	// Subscribed reports a stream subscribing to name (delta 1) or ending
	// its subscription (delta -1).
	Subscribed(name string, delta int)
	// Pushed reports a response carrying name's secret.
	Pushed(name string)
	// Acked reports a sidecar accepting name's secret.
	Acked(name string)
	// Nacked reports a sidecar rejecting name's secret.
	Nacked(name string)
}

// noObserver counts nothing.
type noObserver struct{}

func (noObserver) Subscribed(string, int) {}
func (noObserver) Pushed(string)          {}
func (noObserver) Acked(string)           {}
func (noObserver) Nacked(string)          {}

// Config configures a Server.
type Config struct {
	// Broker serves the tokens (the server's own interface: GetToken and
	// Watch). Required.
	Broker server.Broker
	// Secrets maps the configured secret names to the tokens they stand
	// for. Each selector names a broker-held client.
	Secrets map[string]broker.Selector
	// AllowParsedNames also accepts names of the form
	// "oauth2:CLIENT:SCOPE+SCOPE" (ParseName) that are not in Secrets.
	AllowParsedNames bool
	// HeaderFormat is the secret's value with "%s" standing for the
	// token: exactly one "%s" and no other '%'. Empty means
	// sdsname.DefaultHeaderFormat.
	HeaderFormat string
	// Authorize decides whether the caller of ctx may have the token of
	// sel; an error for which errors.Is(err, access.ErrPermissionDenied)
	// refuses the name (MsgRefused). Nil allows every caller.
	Authorize func(ctx context.Context, sel broker.Selector) error
	// Admit admits one more subscription (a name on a stream) of the
	// caller of ctx, or returns the status that refuses it
	// (codes.ResourceExhausted): the per-caller limits of WatchToken
	// (server.Server.AdmitWatch), so that a caller's SDS subscriptions and
	// WatchToken streams share one budget. release is called exactly once
	// when the subscription ends. Nil admits everything.
	Admit func(ctx context.Context) (release func(), err error)
	// Logger receives NACKs and tokens that cannot be held. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Observer receives the counts. Nil counts nothing.
	Observer Observer
}

// Server implements envoy.service.secret.v3.SecretDiscoveryService.
// DeltaSecrets (the incremental protocol) is codes.Unimplemented; Envoy's
// default for an sds_config with a gRPC api_config_source is the
// state-of-the-world protocol (GRPC), which StreamSecrets serves.
type Server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer

	broker    server.Broker
	secrets   map[string]broker.Selector
	parsed    bool
	prefix    string // of the header value, before the token
	suffix    string // after it
	authorize func(ctx context.Context, sel broker.Selector) error
	admit     func(ctx context.Context) (release func(), err error)
	logger    *slog.Logger
	obs       Observer
	// prepared shares the encoding of a secret's response among its
	// streams.
	prepared *preparedResponses
	stopping context.Context
	stop     context.CancelFunc
}

// New checks cfg and returns a Server. The error names the field.
func New(cfg Config) (*Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("sds: Broker is required")
	}
	format := cfg.HeaderFormat
	if format == "" {
		format = sdsname.DefaultHeaderFormat
	}
	prefix, suffix, err := sdsname.SplitHeaderFormat(format)
	if err != nil {
		return nil, fmt.Errorf("sds: HeaderFormat: %w", err)
	}
	for name, sel := range cfg.Secrets {
		if err := sdsname.CheckName(name); err != nil {
			return nil, fmt.Errorf("sds: Secrets[%q]: %w", name, err)
		}
		if sel.Client == "" || sel.Credentials != nil {
			return nil, fmt.Errorf("sds: Secrets[%q]: must name a broker-held client", name)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	stopping, stop := context.WithCancel(context.Background())
	return &Server{
		broker:    cfg.Broker,
		secrets:   cfg.Secrets,
		parsed:    cfg.AllowParsedNames,
		prefix:    prefix,
		suffix:    suffix,
		authorize: cfg.Authorize,
		admit:     cfg.Admit,
		logger:    cfg.Logger,
		obs:       cfg.Observer,
		prepared:  newPreparedResponses(),
		stopping:  stopping,
		stop:      stop,
	}, nil
}

// Register registers the service on r (a *grpc.Server, before it serves).
func (s *Server) Register(r grpc.ServiceRegistrar) {
	secretv3.RegisterSecretDiscoveryServiceServer(r, s)
}

// Shutdown ends every stream at once with codes.Unavailable
// server.MsgShuttingDown (as a shutdown ends WatchToken streams), and
// refuses new ones. Call it when shutdown begins, before the gRPC server's
// graceful stop, which would otherwise wait for the streams. It is safe to
// call more than once.
func (s *Server) Shutdown() { s.stop() }

// shuttingDown is the status of a stream ended by Shutdown.
func shuttingDown() error {
	return status.Error(codes.Unavailable, server.MsgShuttingDown)
}

// refused is the status of a name the caller may not have, whatever the
// reason; field locates the name in the request.
func refused(field string) error {
	return status.Error(codes.PermissionDenied, field+": "+MsgRefused)
}

// errShuttingDown is the cancellation cause of a wait ended by Shutdown.
var errShuttingDown = errors.New(server.MsgShuttingDown)

// checkType returns an error unless typeURL is TypeURL or empty.
func checkType(typeURL string) error {
	if typeURL != "" && typeURL != TypeURL {
		return status.Errorf(codes.InvalidArgument, "type_url: must be %q", TypeURL)
	}
	return nil
}

// checkNames returns an InvalidArgument status unless names respects the
// request limits.
func checkNames(names []string) error {
	if len(names) > MaxNames {
		return status.Errorf(codes.InvalidArgument, "resource_names: at most %d names per request", MaxNames)
	}
	return nil
}

// selector returns the token selector of name as the caller asked for it,
// or the refusal: a name that is unknown or malformed is refused exactly
// like one the policy does not grant. field locates the name.
func (s *Server) selector(ctx context.Context, field, name string) (broker.Selector, error) {
	if sdsname.CheckName(name) != nil {
		return broker.Selector{}, refused(field)
	}
	sel, ok := s.secrets[name]
	if !ok && s.parsed {
		sel, ok = ParseName(name)
	}
	if !ok {
		return broker.Selector{}, refused(field)
	}
	if s.authorize != nil {
		if err := s.authorize(ctx, sel); err != nil {
			if errors.Is(err, access.ErrPermissionDenied) {
				return broker.Selector{}, refused(field)
			}
			return broker.Selector{}, server.StatusFromError(err, false).Err()
		}
	}
	return sel, nil
}

// brokerError maps an error of the broker for name's token to a status.
// Errors that say the name's client or scopes are wrong (which a parsed
// name can cause) are the refusal, so they reveal nothing either.
func brokerError(field string, err error) error {
	var fe *broker.FieldError
	if errors.Is(err, broker.ErrUnknownClient) || errors.Is(err, broker.ErrInvalidArgument) || errors.As(err, &fe) {
		return refused(field)
	}
	return server.StatusFromError(err, false).Err()
}

// callerName is the caller's identity for the broker's per-caller limits.
func callerName(ctx context.Context) string {
	if id, ok := access.FromContext(ctx); ok {
		return id.Name
	}
	return ""
}

// FetchSecrets answers one request with the current secret of every name
// it carries (no subscription). The version is the versions of the
// secrets, in order, joined by ",".
func (s *Server) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if err := checkType(req.GetTypeUrl()); err != nil {
		return nil, err
	}
	names := req.GetResourceNames()
	if err := checkNames(names); err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, status.Error(codes.InvalidArgument, "resource_names: must name at least one secret")
	}
	if s.stopping.Err() != nil {
		return nil, shuttingDown()
	}
	sels := make([]broker.Selector, len(names))
	for i, name := range names {
		sel, err := s.selector(ctx, fmt.Sprintf("resource_names[%d]", i), name)
		if err != nil {
			return nil, err
		}
		sels[i] = sel
	}
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: TypeURL}
	versions := make([]string, len(names))
	for i, name := range names {
		tok, err := s.broker.GetToken(ctx, broker.Request{Selector: sels[i], Caller: callerName(ctx)})
		if err != nil {
			return nil, brokerError(fmt.Sprintf("resource_names[%d]", i), err)
		}
		res, err := s.resource(name, tok)
		if err != nil {
			return nil, err
		}
		resp.Resources = append(resp.Resources, res)
		versions[i] = version(tok)
	}
	resp.VersionInfo = strings.Join(versions, ",")
	for _, name := range names {
		s.obs.Pushed(name)
	}
	return resp, nil
}
