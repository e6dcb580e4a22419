// Package server is the gRPC layer of the token broker. It is thin: each
// RPC validates its request (naming the field and the rule it breaks),
// converts it to the broker's types, calls the Broker, and maps the
// broker's error to a status with one table (StatusFromError).
//
// The server also sets the transport limits (64 KiB messages, a cap on
// concurrent streams, keepalive enforcement), recovers panics as
// codes.Internal, logs one line per call (method, code, duration and key
// id; never a payload, a secret, a token or an error text), serves the
// standard health service and, optionally, reflection.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Defaults for the zero values of Config.
const (
	// DefaultMaxConcurrentStreams is the per-connection stream limit.
	DefaultMaxConcurrentStreams = 1000
	// DefaultKeepaliveMinTime is the shortest client keepalive ping
	// interval tolerated; clients pinging more often are disconnected.
	DefaultKeepaliveMinTime = 30 * time.Second
	// DefaultShutdownTimeout bounds the graceful part of a shutdown.
	DefaultShutdownTimeout = 10 * time.Second
	// MaxRecvMsgSize is the largest request message accepted, in bytes.
	// Larger ones fail with codes.ResourceExhausted.
	MaxRecvMsgSize = 64 << 10
)

// keepaliveTime is how long a connection may be idle before the server
// pings the client to check it is alive.
const keepaliveTime = 2 * time.Hour

// Broker is what the server needs from the domain.
type Broker interface {
	// GetToken returns a token for req, or an error that StatusFromError
	// maps to a status.
	GetToken(ctx context.Context, req broker.Request) (broker.Token, error)
}

// Config configures a Server.
type Config struct {
	// Broker serves the requests. Required.
	Broker Broker
	// Logger receives one line per call and panic reports. Nil means
	// slog.Default().
	Logger *slog.Logger
	// MaxConcurrentStreams limits concurrent streams per connection.
	// Zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// KeepaliveMinTime is the keepalive enforcement policy's MinTime: the
	// shortest ping interval a client may use (pings without active
	// streams are permitted). Zero means DefaultKeepaliveMinTime.
	KeepaliveMinTime time.Duration
	// Reflection registers the gRPC reflection service.
	Reflection bool
	// ShutdownTimeout bounds how long Serve waits for calls in progress
	// once its context is done, before closing every connection. Zero
	// means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
}

// Server is the broker's gRPC server: the TokenBrokerService, the health
// service and, when configured, reflection.
type Server struct {
	grpc            *grpc.Server
	health          *health.Server
	logger          *slog.Logger
	shutdownTimeout time.Duration
}

// New returns a Server for cfg. It fails when cfg.Broker is nil or a
// duration is negative; the error names the field.
func New(cfg Config) (*Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("server: Broker is required")
	}
	if cfg.KeepaliveMinTime < 0 {
		return nil, errors.New("server: KeepaliveMinTime must not be negative")
	}
	if cfg.ShutdownTimeout < 0 {
		return nil, errors.New("server: ShutdownTimeout must not be negative")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.KeepaliveMinTime == 0 {
		cfg.KeepaliveMinTime = DefaultKeepaliveMinTime
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}

	logger := callLogger(cfg.Logger)
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(panicHandler(cfg.Logger))}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime}),
		// Logging is outside recovery, so a recovered panic is logged
		// with the code the caller sees.
		grpc.ChainUnaryInterceptor(
			logging.UnaryServerInterceptor(logger, logOpts...),
			recovery.UnaryServerInterceptor(recoverOpts...),
		),
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(logger, logOpts...),
			recovery.StreamServerInterceptor(recoverOpts...),
		),
	)

	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, &handler{broker: cfg.Broker})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	if cfg.Reflection {
		reflection.Register(gs)
	}
	return &Server{grpc: gs, health: hs, logger: cfg.Logger, shutdownTimeout: cfg.ShutdownTimeout}, nil
}

// GRPCServer returns the underlying *grpc.Server, for tests that serve it
// on their own listener (bufconn).
func (s *Server) GRPCServer() *grpc.Server { return s.grpc }

// Serve serves on l until ctx is done, then shuts down: the health service
// turns NOT_SERVING, calls in progress get ShutdownTimeout to finish
// (GracefulStop), and after that every connection is closed (Stop). It
// returns nil after such a shutdown, or the error that ended serving early
// (the listener failed). l is closed either way. Call Serve once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(l) }()

	select {
	case err := <-served:
		// The listener failed (or someone stopped the *grpc.Server).
		s.health.Shutdown()
		s.grpc.Stop()
		if err == nil {
			return nil
		}
		return fmt.Errorf("server: serve: %w", err)
	case <-ctx.Done():
	}

	s.logger.Info("grpc server shutting down", "timeout", s.shutdownTimeout)
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.shutdownTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.logger.Warn("grpc graceful stop timed out; closing connections", "timeout", s.shutdownTimeout)
		s.grpc.Stop()
		<-stopped
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: serve: %w", err)
	}
	return nil
}

// handler implements the TokenBrokerService.
type handler struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	broker Broker
}

// GetToken validates the request, asks the broker for the token and maps
// the result.
func (h *handler) GetToken(ctx context.Context, in *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	req, err := toBrokerRequest(in)
	if err != nil {
		return nil, StatusFromError(err, false).Err()
	}
	tok, err := h.broker.GetToken(ctx, req)
	if err != nil {
		return nil, StatusFromError(err, req.Selector.Credentials != nil).Err()
	}
	// AddFields, not InjectFields: the logging interceptor reads the fields
	// from its own context after the handler returns, so they must be added
	// to the field set it put there rather than to a derived context.
	logging.AddFields(ctx, logging.Fields{logKeyID, tok.KeyID})
	return &tokenbrokerv1.GetTokenResponse{Token: toProtoToken(tok)}, nil
}

// toProtoToken converts a broker token to its API form. Zero times are
// left unset.
func toProtoToken(t broker.Token) *tokenbrokerv1.Token {
	out := &tokenbrokerv1.Token{
		AccessToken: t.AccessToken.Reveal(),
		TokenType:   t.TokenType,
		IssuedAt:    timestamp(t.IssuedAt),
		ExpiresAt:   timestamp(t.ExpiresAt),
		RefreshAt:   timestamp(t.RefreshAt),
		KeyId:       t.KeyID,
	}
	if len(t.Scopes) > 0 {
		out.Scopes = append([]string(nil), t.Scopes...)
	}
	return out
}

// timestamp converts t, or returns nil for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Log field names.
const (
	logKeyID = "key_id"
	// logDuration is the key logging.DefaultDurationToFields uses.
	logDuration = "grpc.time_ms"
)

// loggedFields are the only call fields written to the log. Everything
// else the logging interceptor offers is dropped: in particular
// "grpc.error", since an upstream error description is text chosen by the
// token endpoint and might echo a pass-through secret.
var loggedFields = map[string]bool{
	logging.ServiceFieldKey: true,
	logging.MethodFieldKey:  true,
	"grpc.code":             true,
	logDuration:             true,
	logKeyID:                true,
}

// callLogger adapts l to the logging interceptor, keeping only
// loggedFields.
func callLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, level logging.Level, msg string, fields ...any) {
		kept := make([]any, 0, 2*len(loggedFields))
		for i := 0; i+1 < len(fields); i += 2 {
			if k, ok := fields[i].(string); ok && loggedFields[k] {
				kept = append(kept, k, fields[i+1])
			}
		}
		l.Log(ctx, slog.Level(level), msg, kept...)
	})
}

// panicHandler returns the recovery handler: it logs the panic value's
// type (not the value, which might hold anything) and the stack, and gives
// the caller a bare codes.Internal.
func panicHandler(l *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		method, _ := grpc.Method(ctx)
		l.ErrorContext(ctx, "panic in grpc handler",
			"grpc.full_method", method,
			"panic_type", fmt.Sprintf("%T", p),
			"stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	}
}
