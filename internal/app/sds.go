package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/sds"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// sdsService is the SDS server and, when sds.listen names an address of
// its own, the gRPC server it is served on there (nil on the main one).
type sdsService struct {
	sds  *sds.Server
	grpc *grpc.Server
}

// newSDS builds the SDS server of cfg (sds.enabled) and registers it on
// the main gRPC server main, or on a gRPC server of its own when
// sds.listen is set: same TLS, authentication, metrics and transport
// limits as the main one.
func newSDS(cfg config.Config, b *broker.Broker, guard *access.Authenticator, m *metrics.Metrics, tlsConfig *tls.Config, logger *slog.Logger, main *grpc.Server) (*sdsService, error) {
	secrets := make(map[string]broker.Selector, len(cfg.SDSSecrets))
	for _, s := range cfg.SDSSecrets {
		secrets[s.Name] = s.Selector()
	}
	srv, err := sds.New(sds.Config{
		Broker:           watchAdapter{b},
		Secrets:          secrets,
		AllowParsedNames: cfg.SDS.AllowParsedNames,
		HeaderFormat:     cfg.SDS.HeaderFormat,
		Authorize:        authorize(guard),
		Logger:           logger,
		Observer:         m,
	})
	if err != nil {
		return nil, err
	}
	svc := &sdsService{sds: srv}
	if cfg.SDS.Listen == "" {
		srv.Register(main)
		return svc, nil
	}
	recoverOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		method, _ := grpc.Method(ctx)
		logger.ErrorContext(ctx, "panic in sds handler", "grpc.full_method", method, "panic_type", fmt.Sprintf("%T", p))
		return status.Error(codes.Internal, "internal error")
	})
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(server.MaxRecvMsgSize),
		grpc.MaxHeaderListSize(uint32(cfg.Server.MaxHeaderListSize)),
		grpc.MaxConcurrentStreams(cfg.Server.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             time.Duration(cfg.Server.KeepaliveMinTime),
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      time.Duration(cfg.Server.MaxConnectionAge),
			MaxConnectionAgeGrace: time.Duration(cfg.Server.MaxConnectionAgeGrace),
		}),
		grpc.ChainUnaryInterceptor(recovery.UnaryServerInterceptor(recoverOpt), m.GRPC().UnaryServerInterceptor(), guard.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(recovery.StreamServerInterceptor(recoverOpt), m.GRPC().StreamServerInterceptor(), guard.StreamServerInterceptor()),
	}
	if tlsConfig != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConfig)))
	}
	svc.grpc = grpc.NewServer(opts...)
	srv.Register(svc.grpc)
	m.GRPC().InitializeMetrics(svc.grpc)
	return svc, nil
}

// listenSDS opens sds.listen: "unix:/path" (with sds.socket_mode and
// socket_group, whatever the umask) or host:port.
func listenSDS(s config.SDS) (net.Listener, error) {
	if path, ok := strings.CutPrefix(s.Listen, "unix:"); ok {
		perm, err := config.Admin{SocketMode: s.SocketMode}.SocketPerm()
		if err != nil {
			return nil, fmt.Errorf("socket_mode: %w", err)
		}
		return listenUnix(path, perm, s.SocketGroup)
	}
	return net.Listen("tcp", s.Listen)
}

// serve serves the SDS server's own gRPC server on l until ctx ends, then
// ends its streams (sds.Server.Shutdown), stops gracefully within timeout
// and closes what is left.
func (s *sdsService) serve(ctx context.Context, l net.Listener, timeout time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(l) }()
	select {
	case err := <-served:
		s.sds.Shutdown()
		s.grpc.Stop()
		if err != nil {
			return fmt.Errorf("sds.listen: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	s.sds.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.grpc.Stop()
		<-stopped
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("sds.listen: %w", err)
	}
	return nil
}
