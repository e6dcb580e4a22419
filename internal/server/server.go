// Package server is the gRPC layer of the token broker. It is thin: each
// RPC validates its request (naming the field and the rule it breaks),
// converts it to the broker's types, calls the Broker, and maps the
// broker's error to a status with one table (StatusFromError).
//
// WatchToken streams a key's tokens: the current one at once, then every
// replacement the broker pushes, until the caller goes away or the server
// shuts down. Each caller (by default, the peer's IP address) may hold a
// bounded number of concurrent watch streams and open them at a bounded
// rate.
//
// The server also sets the transport limits (64 KiB messages, 16 KiB of
// metadata per call, a cap on concurrent streams, keepalive enforcement, a
// maximum connection age so long-lived subscribers rebalance across
// replicas), recovers panics as codes.Internal, logs one line per call
// (method, code, duration, key id and, for failures on the broker's side,
// the broker's non-secret error text; never a payload, a secret or a
// token), serves the standard health service and, optionally, reflection.
//
// The AdminService (invalidation, listing, statistics) is served when
// Config.Admin is set: on the main server, or with Config.SeparateAdmin on
// a second server of its own (ServeAdmin) with the same interceptors, TLS,
// health and reflection. Authentication and policy plug in as hooks:
// Config.UnaryInterceptors and Config.StreamInterceptors run after logging
// and panic recovery on every call, health and reflection included, and
// Config.Authorize decides, per GetToken and WatchToken, whether the
// caller may have the selected token.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// MaxRecvMsgSize is the largest request message accepted, in bytes.
// Larger ones fail with codes.ResourceExhausted. It is a fixed limit, not
// a configuration key. The limits that have a key (server.*) have no
// default here: the configuration holds them, and New refuses a zero
// value.
const MaxRecvMsgSize = 64 << 10

// keepaliveTime is how long a connection may be idle before the server
// pings the client to check it is alive.
const keepaliveTime = 2 * time.Hour

// Broker is what the server needs from the domain.
type Broker interface {
	// GetToken returns a token for req, or an error that StatusFromError
	// maps to a status.
	GetToken(ctx context.Context, req broker.Request) (broker.Token, error)
	// Watch subscribes to the token of req.Selector (req.MinTTL is zero).
	// It returns once the first token is known, or with an error that
	// StatusFromError maps to a status. ctx bounds the wait for the first
	// token; the subscription lives until Close.
	Watch(ctx context.Context, req broker.Request) (Subscription, error)
}

// Subscription is a watch of one key's token, as returned by
// Broker.Watch.
type Subscription interface {
	// Initial returns the token the watch started with.
	Initial() broker.Token
	// Events delivers what happens to the token after Initial. The
	// channel is never closed; the server reads it until the stream ends.
	Events() <-chan broker.Event
	// Close ends the watch and releases its resources. The server calls
	// it exactly once, when the stream ends.
	Close()
}

// Config configures a Server.
type Config struct {
	// Broker serves the requests. Required.
	Broker Broker
	// Logger receives one line per call and panic reports. Nil means
	// slog.Default().
	Logger *slog.Logger
	// LogSuccesses logs the line of a successful call (code OK) at info,
	// like a failure's; without it that line is logged at debug, so a
	// logger at info writes lines only for the calls that failed
	// (configuration log.access).
	LogSuccesses bool
	// The limits below have no default here: the configuration holds the
	// defaults (server.*), and New refuses a zero value except where zero
	// is said to be a value.

	// MaxConcurrentStreams limits concurrent streams per connection; at
	// least 1 (server.max_concurrent_streams).
	MaxConcurrentStreams uint32
	// KeepaliveMinTime is the keepalive enforcement policy's MinTime: the
	// shortest ping interval a client may use (pings without active
	// streams are permitted); clients pinging more often are
	// disconnected. At least 0; 0: no minimum
	// (server.keepalive_min_time).
	KeepaliveMinTime time.Duration
	// Reflection registers the gRPC reflection service.
	Reflection bool
	// ShutdownTimeout bounds how long Serve waits for calls in progress
	// once its context is done, before closing every connection; more
	// than 0 (server.shutdown_timeout). WatchToken streams do not count
	// against it: they are ended at once.
	ShutdownTimeout time.Duration
	// MaxConnectionAge is how long a connection may live before the
	// server asks the client to reconnect (GOAWAY), so that long-lived
	// subscribers spread over replicas added since; gRPC adds ±10%
	// jitter. More than 0 (server.max_connection_age).
	MaxConnectionAge time.Duration
	// MaxConnectionAgeGrace is how long calls may go on once a
	// connection reached MaxConnectionAge, before it is closed; more than
	// 0 (server.max_connection_age_grace). Watch streams never end by
	// themselves; they end with codes.Unavailable then, and the client
	// opens them again on a new connection.
	MaxConnectionAgeGrace time.Duration
	// MaxWatchesPerCaller is the most concurrent WatchToken streams one
	// caller identity may hold; more get codes.ResourceExhausted. At
	// least 1 (server.max_watches_per_caller).
	MaxWatchesPerCaller int
	// WatchOpensPerSecond is the sustained rate at which one caller
	// identity may open WatchToken streams (a token bucket); faster opens
	// get codes.ResourceExhausted. A finite number more than 0
	// (server.watch_opens_per_second).
	WatchOpensPerSecond float64
	// WatchOpenBurst is how many WatchToken streams one caller identity
	// may open at once above WatchOpensPerSecond; at least 1
	// (server.watch_open_burst).
	WatchOpenBurst int
	// Identity names the caller of a stream for the per-caller limits.
	// Nil means PeerIdentity.
	Identity IdentityFunc
	// MaxHeaderListSize bounds the metadata of one call (the HTTP/2
	// header list, as HTTP/2 counts it), in bytes; larger header lists
	// are refused by the transport before any interceptor runs, so
	// unauthenticated callers cannot make the server hold megabytes of
	// headers per call. At least 1 (server.max_header_list_size).
	MaxHeaderListSize uint32

	// Admin serves the AdminService. Nil means the AdminService is not
	// registered (its RPCs are codes.Unimplemented).
	Admin AdminBroker
	// SeparateAdmin serves the AdminService on a server of its own
	// (ServeAdmin) instead of the main one (Serve), where it is then
	// codes.Unimplemented. It requires Admin.
	SeparateAdmin bool
	// Authorize decides whether the caller (known from ctx, for example
	// through an authentication interceptor) may have the token of sel.
	// GetToken and WatchToken call it after validating the request and
	// before asking the broker. A non-nil error refuses the call; it is
	// mapped by StatusFromError, so an error for which
	// errors.Is(err, access.ErrPermissionDenied) holds gives
	// codes.PermissionDenied with the error's own message (which must name
	// only what the caller may know). Nil allows
	// every request. It must be safe for concurrent use.
	Authorize func(ctx context.Context, sel broker.Selector) error
	// UnaryInterceptors and StreamInterceptors (authentication) run, in
	// order, on every call of every service (health and reflection
	// included, on the main and the admin server alike), after the
	// logging and panic recovery interceptors: their rejections are
	// logged and their panics recovered.
	UnaryInterceptors []grpc.UnaryServerInterceptor
	// StreamInterceptors: see UnaryInterceptors.
	StreamInterceptors []grpc.StreamServerInterceptor
	// StatsHandlers are installed on every server (grpc.StatsHandler):
	// tracing's server spans. Nil means none.
	StatsHandlers []stats.Handler
	// TLS, when set, makes the servers speak TLS with this configuration
	// (it may request and verify client certificates, or supply them per
	// connection through GetConfigForClient or GetCertificate). Nil means
	// plaintext.
	TLS *tls.Config
}

// Server is the broker's gRPC server: the TokenBrokerService, the health
// service and, when configured, the AdminService and reflection; with
// Config.SeparateAdmin, also a second server for the AdminService.
type Server struct {
	main *grpcServer
	// admin is nil unless Config.SeparateAdmin.
	admin           *grpcServer
	logger          *slog.Logger
	shutdownTimeout time.Duration
	// stopping is cancelled when shutdown begins; WatchToken handlers
	// watch its Done channel and end their streams.
	stopping context.Context
	stop     context.CancelFunc
	// opts and reflection build the servers of NewListener.
	opts       []grpc.ServerOption
	reflection bool
	// extra are the servers of NewListener; watch is the
	// TokenBrokerService, whose caller limits AdmitWatch applies.
	extra []*grpcServer
	watch *handler
}

// check returns an error naming the first bad limit of c, its rule and
// its configuration key.
func (c *Config) check() error {
	bad := func(field string, v any, rule, key string) error {
		return fmt.Errorf("server: Config.%s is %v, want %s (configuration server.%s)", field, v, rule, key)
	}
	switch r := c.WatchOpensPerSecond; {
	case c.MaxConcurrentStreams < 1:
		return bad("MaxConcurrentStreams", c.MaxConcurrentStreams, "at least 1", "max_concurrent_streams")
	case c.KeepaliveMinTime < 0:
		return bad("KeepaliveMinTime", c.KeepaliveMinTime, "at least 0 (0: no minimum)", "keepalive_min_time")
	case c.ShutdownTimeout <= 0:
		return bad("ShutdownTimeout", c.ShutdownTimeout, "more than 0", "shutdown_timeout")
	case c.MaxConnectionAge <= 0:
		return bad("MaxConnectionAge", c.MaxConnectionAge, "more than 0", "max_connection_age")
	case c.MaxConnectionAgeGrace <= 0:
		return bad("MaxConnectionAgeGrace", c.MaxConnectionAgeGrace, "more than 0", "max_connection_age_grace")
	case c.MaxWatchesPerCaller < 1:
		return bad("MaxWatchesPerCaller", c.MaxWatchesPerCaller, "at least 1", "max_watches_per_caller")
	case !(r > 0 && !math.IsInf(r, 1)):
		return bad("WatchOpensPerSecond", r, "a finite number more than 0", "watch_opens_per_second")
	case c.WatchOpenBurst < 1:
		return bad("WatchOpenBurst", c.WatchOpenBurst, "at least 1", "watch_open_burst")
	case c.MaxHeaderListSize < 1:
		return bad("MaxHeaderListSize", c.MaxHeaderListSize, "at least 1", "max_header_list_size")
	}
	return nil
}

// New returns a Server for cfg. It fails when cfg.Broker is nil or a
// limit is out of its range; a zero limit is an error like any other bad
// value (the configuration holds the defaults). The error names the
// field, the rule and the configuration key.
func New(cfg Config) (*Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("server: Broker is required")
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.SeparateAdmin && cfg.Admin == nil {
		return nil, errors.New("server: SeparateAdmin requires Admin")
	}
	for i, in := range cfg.UnaryInterceptors {
		if in == nil {
			return nil, fmt.Errorf("server: UnaryInterceptors[%d] is nil", i)
		}
	}
	for i, in := range cfg.StreamInterceptors {
		if in == nil {
			return nil, fmt.Errorf("server: StreamInterceptors[%d] is nil", i)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.KeepaliveMinTime == 0 {
		// No minimum. grpc-go reads a zero MinTime as its own default
		// (5 minutes), so the smallest positive one stands for none.
		cfg.KeepaliveMinTime = time.Nanosecond
	}
	if cfg.Identity == nil {
		cfg.Identity = PeerIdentity
	}

	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(panicHandler(cfg.Logger))}
	// Logging is outside recovery, so a recovered panic is logged with the
	// code the caller sees; the extra interceptors are inside both, and the
	// deadline interceptor inside them all, so that every one of them sees
	// a call cancelled at its deadline as DeadlineExceeded.
	// The UTF-8 interceptors come first (see utf8.go).
	marks := &utf8Marks{}
	unary := append([]grpc.UnaryServerInterceptor{
		unaryUTF8Mark(marks),
		unaryCallLog(cfg.Logger, cfg.LogSuccesses),
		recovery.UnaryServerInterceptor(recoverOpts...),
	}, cfg.UnaryInterceptors...)
	unary = append(unary, unaryDeadline, unaryUTF8Reject)
	stream := append([]grpc.StreamServerInterceptor{
		streamUTF8(marks),
		streamCallLog(cfg.Logger, cfg.LogSuccesses),
		recovery.StreamServerInterceptor(recoverOpts...),
	}, cfg.StreamInterceptors...)
	stream = append(stream, streamDeadline)
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newUTF8Codec(marks)),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxHeaderListSize(cfg.MaxHeaderListSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  keepaliveTime,
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.MaxConnectionAgeGrace,
		}),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// A pool of long-lived handler goroutines rather than one new
		// goroutine per call: a new goroutine's small stack grew (and was
		// copied) on every call through the interceptor chain, about a
		// tenth of a cache hit's CPU (README, Performance). When every
		// worker is busy (long WatchToken streams hold theirs), gRPC
		// starts a goroutine for the call as before.
		grpc.NumStreamWorkers(streamWorkers()),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	for _, h := range cfg.StatsHandlers {
		opts = append(opts, grpc.StatsHandler(h))
	}

	stopping, stop := context.WithCancel(context.Background())
	mainSrv := newGRPCServer("main", opts)
	watch := &handler{
		broker:    cfg.Broker,
		logger:    cfg.Logger,
		identity:  cfg.Identity,
		authorize: cfg.Authorize,
		limits:    newCallerLimits(cfg.MaxWatchesPerCaller, cfg.WatchOpensPerSecond, cfg.WatchOpenBurst),
		prepared:  newPreparedEvents(),
		encoded:   newEncodedResponses(),
		stopping:  stopping,
	}
	mainSrv.register(&tokenBrokerServiceDesc, watch)
	var admin *grpcServer
	if cfg.Admin != nil {
		target := mainSrv
		if cfg.SeparateAdmin {
			admin = newGRPCServer("admin", opts)
			target = admin
		}
		target.register(&tokenbrokerv1.AdminService_ServiceDesc, &adminHandler{admin: cfg.Admin})
	}
	for _, g := range []*grpcServer{mainSrv, admin} {
		if g == nil {
			continue
		}
		healthpb.RegisterHealthServer(g.grpc, g.health)
		if cfg.Reflection {
			reflection.Register(g.grpc)
		}
	}
	return &Server{
		main:            mainSrv,
		admin:           admin,
		logger:          cfg.Logger,
		shutdownTimeout: cfg.ShutdownTimeout,
		stopping:        stopping,
		stop:            stop,
		opts:            opts,
		reflection:      cfg.Reflection,
		watch:           watch,
	}, nil
}

// streamWorkers is the number of handler goroutines a server keeps: 32
// per processor, at least 128. A call that finds no worker idle runs on a
// new goroutine whose stack grows through the interceptor chain; with 16
// workers, 64 concurrent callers spent about a tenth of the process's CPU
// growing stacks (README, Performance). An idle worker costs its stack
// (8 KiB to start), so 128 of them cost about 1 MiB.
func streamWorkers() uint32 { return uint32(max(128, 32*runtime.GOMAXPROCS(0))) }

// grpcServer is one *grpc.Server with its health service.
type grpcServer struct {
	// name tells the main and the admin server apart in logs.
	name   string
	grpc   *grpc.Server
	health *health.Server
}

// newGRPCServer returns a server with opts whose health service reports
// SERVING for "" and, as they are registered, for each service.
func newGRPCServer(name string, opts []grpc.ServerOption) *grpcServer {
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return &grpcServer{name: name, grpc: grpc.NewServer(opts...), health: hs}
}

// register registers impl for desc and marks the service SERVING.
func (g *grpcServer) register(desc *grpc.ServiceDesc, impl any) {
	g.grpc.RegisterService(desc, impl)
	g.health.SetServingStatus(desc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// RegisterService implements grpc.ServiceRegistrar: register, so that a
// service registered from outside the package is listed by health too.
func (g *grpcServer) RegisterService(desc *grpc.ServiceDesc, impl any) { g.register(desc, impl) }

// Registrar returns the main server as a grpc.ServiceRegistrar: a service
// registered through it (before Serve) gets the main server's
// interceptors and is listed by its health service.
func (s *Server) Registrar() grpc.ServiceRegistrar { return s.main }

// Listener is a further gRPC server of the Server, for a service served on
// a listener of its own (the SDS server's sds.listen): built with the main
// server's options (interceptors, codec, TLS, transport limits), with
// health and, when configured, reflection. Register its services before
// Serve.
type Listener struct {
	s *Server
	g *grpcServer
}

// NewListener returns a Listener named name (in logs). Call it before
// serving; Close releases it with the rest.
func (s *Server) NewListener(name string) *Listener {
	g := newGRPCServer(name, s.opts)
	healthpb.RegisterHealthServer(g.grpc, g.health)
	if s.reflection {
		reflection.Register(g.grpc)
	}
	s.extra = append(s.extra, g)
	return &Listener{s: s, g: g}
}

// RegisterService implements grpc.ServiceRegistrar: the service is served
// and listed by the Listener's health service.
func (l *Listener) RegisterService(desc *grpc.ServiceDesc, impl any) { l.g.register(desc, impl) }

// GRPCServer returns the underlying *grpc.Server (for metrics that
// initialize per registered method).
func (l *Listener) GRPCServer() *grpc.Server { return l.g.grpc }

// Serve serves on lis until ctx is done, then shuts down like ServeAdmin,
// calling beforeStop (which ends the service's long-lived streams) before
// the graceful stop. It returns nil after such a shutdown, or the error
// that ended serving early. lis is closed either way. Call it once.
func (l *Listener) Serve(ctx context.Context, lis net.Listener, beforeStop func()) error {
	return l.s.serve(ctx, l.g, lis, beforeStop)
}

// AdmitWatch admits one more long-lived subscription of ctx's caller under
// WatchToken's per-caller limits (Config.MaxWatchesPerCaller,
// WatchOpensPerSecond, WatchOpenBurst; the caller named by
// Config.Identity), sharing the caller's budget with its WatchToken
// streams. On admission the caller must call release exactly once (more
// calls do nothing) when the subscription ends; otherwise err is the
// codes.ResourceExhausted status, with RetryInfo and QuotaFailure, that
// refuses it.
func (s *Server) AdmitWatch(ctx context.Context) (release func(), err error) {
	release, rejected := s.watch.limits.acquire(s.watch.callerID(ctx))
	if rejected != nil {
		return nil, rejected.Err()
	}
	return release, nil
}

// GRPCServer returns the underlying *grpc.Server, for tests that serve it
// on their own listener (bufconn).
// It is the main server; see ServeAdmin for the admin one.
func (s *Server) GRPCServer() *grpc.Server { return s.main.grpc }

// Serving reports whether the main listener's health service says
// SERVING: true until shutdown begins.
func (s *Server) Serving() bool {
	resp, err := s.main.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// Close releases a Server, or the part of it (with SeparateAdmin, the main
// or the admin server), that will not be served: it stops the gRPC
// server's pooled handler goroutines. Serve and ServeAdmin release their
// own server when they return; Close after them does nothing more. It is
// safe to call more than once.
func (s *Server) Close() {
	s.stop()
	for _, g := range append([]*grpcServer{s.main, s.admin}, s.extra...) {
		if g != nil {
			g.grpc.Stop()
		}
	}
}

// Serve serves on l until ctx is done, then shuts down: the health service
// turns NOT_SERVING, every WatchToken stream ends at once with
// codes.Unavailable "server shutting down", other calls in progress get
// ShutdownTimeout to finish (GracefulStop), and after that every
// connection is closed (Stop). It returns nil after such a shutdown, or
// the error that ended serving early (the listener failed). l is closed
// either way. Call Serve once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	// Watch streams never end by themselves: end them first, or
	// GracefulStop would wait for them until the deadline.
	return s.serve(ctx, s.main, l, s.stop)
}

// ServeAdmin serves the AdminService, health and (when configured)
// reflection on l, with the main server's interceptors and TLS, until ctx
// is done; then it shuts down like Serve (health NOT_SERVING, calls in
// progress get ShutdownTimeout, then every connection is closed). It
// returns nil after such a shutdown, or the error that ended serving
// early. It fails at once unless Config.SeparateAdmin was set. l is closed
// either way. Call ServeAdmin once; it runs independently of Serve.
func (s *Server) ServeAdmin(ctx context.Context, l net.Listener) error {
	if s.admin == nil {
		_ = l.Close()
		return errors.New("server: ServeAdmin: Config.SeparateAdmin is not set")
	}
	return s.serve(ctx, s.admin, l, func() {})
}

// serve runs g on l until ctx is done or serving fails, then shuts g down:
// health NOT_SERVING, beforeStop, GracefulStop bounded by
// s.shutdownTimeout, Stop.
func (s *Server) serve(ctx context.Context, g *grpcServer, l net.Listener, beforeStop func()) error {
	served := make(chan error, 1)
	go func() { served <- g.grpc.Serve(l) }()

	select {
	case err := <-served:
		// The listener failed (or someone stopped the *grpc.Server).
		g.health.Shutdown()
		beforeStop()
		g.grpc.Stop()
		if err == nil {
			return nil
		}
		return fmt.Errorf("server: serve %s: %w", g.name, err)
	case <-ctx.Done():
	}

	s.logger.Info("grpc server shutting down", "server", g.name, "timeout", s.shutdownTimeout.String())
	g.health.Shutdown()
	beforeStop()
	stopped := make(chan struct{})
	go func() {
		g.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.shutdownTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.logger.Warn("grpc graceful stop timed out; closing connections", "server", g.name, "timeout", s.shutdownTimeout.String())
		g.grpc.Stop()
		<-stopped
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: serve %s: %w", g.name, err)
	}
	return nil
}

// handler implements the TokenBrokerService.
type handler struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	broker    Broker
	logger    *slog.Logger
	identity  IdentityFunc
	authorize func(ctx context.Context, sel broker.Selector) error
	limits    *callerLimits
	// prepared shares the encoding of a token event among the watchers
	// of its key.
	prepared *preparedEvents
	// encoded shares the encoding of a GetToken response among the
	// callers that get the same token.
	encoded *encodedResponses
	// stopping is cancelled when the server shuts down; its Done channel
	// ends every WatchToken stream.
	stopping context.Context
}

// GetToken validates the request, checks that the caller may have the
// token (Config.Authorize), asks the broker for it and maps the result.
// The server answers GetToken through getTokenEncoded (encoded.go); this
// form returns the message itself.
func (h *handler) GetToken(ctx context.Context, in *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	tok, err := h.getToken(ctx, in)
	if err != nil {
		return nil, err
	}
	return &tokenbrokerv1.GetTokenResponse{Token: toProtoToken(tok)}, nil
}

// getTokenEncoded is GetToken answering with the response's encoding,
// shared by the calls that get the same token (encoded.go).
func (h *handler) getTokenEncoded(ctx context.Context, in *tokenbrokerv1.GetTokenRequest) (any, error) {
	tok, err := h.getToken(ctx, in)
	if err != nil {
		return nil, err
	}
	m, err := h.encoded.get(tok)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// getToken is GetToken up to the token the caller gets, or the status
// error that refuses the call.
func (h *handler) getToken(ctx context.Context, in *tokenbrokerv1.GetTokenRequest) (broker.Token, error) {
	req, err := toBrokerRequest(in)
	if err != nil {
		return broker.Token{}, StatusFromError(err, false).Err()
	}
	req.Caller = callerName(ctx)
	if err := h.authorized(ctx, req.Selector); err != nil {
		return broker.Token{}, err
	}
	tok, err := h.broker.GetToken(ctx, req)
	if err != nil {
		if id := broker.KeyIDOf(err); id != "" {
			setLogKeyID(ctx, id)
		}
		setLogCause(ctx, err)
		return broker.Token{}, StatusFromError(err, req.Selector.Credentials != nil).Err()
	}
	setLogKeyID(ctx, tok.KeyID)
	return tok, nil
}

// authorized runs the Authorize hook for sel and returns nil, or the
// status error that refuses the call.
func (h *handler) authorized(ctx context.Context, sel broker.Selector) error {
	if h.authorize == nil {
		return nil
	}
	if err := h.authorize(ctx, sel); err != nil {
		return StatusFromError(err, sel.Credentials != nil).Err()
	}
	return nil
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

		CertThumbprint: t.CertThumbprint,
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
