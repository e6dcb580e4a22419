package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

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
	sds      *sds.Server
	listener *server.Listener
}

// newSDS builds the SDS server of cfg (sds.enabled) and registers it on
// the main gRPC server srv, or on a Listener of srv when sds.listen is
// set: the main server's own options (TLS, interceptors — call log, UTF-8
// check, panic recovery, metrics, authentication — codec and transport
// limits) and a health service listing it. Its subscriptions count
// against the per-caller watch limits of WatchToken (srv.AdmitWatch).
func newSDS(cfg config.Config, b *broker.Broker, guard *access.Authenticator, m *metrics.Metrics, logger *slog.Logger, srv *server.Server) (*sdsService, error) {
	secrets := make(map[string]broker.Selector, len(cfg.SDSSecrets))
	for _, s := range cfg.SDSSecrets {
		secrets[s.Name] = s.Selector()
	}
	sdsSrv, err := sds.New(sds.Config{
		Broker:           watchAdapter{b},
		Secrets:          secrets,
		AllowParsedNames: cfg.SDS.AllowParsedNames,
		HeaderFormat:     cfg.SDS.HeaderFormat,
		Authorize:        authorize(guard),
		Admit:            srv.AdmitWatch,
		Logger:           logger,
		Observer:         m,
	})
	if err != nil {
		return nil, err
	}
	svc := &sdsService{sds: sdsSrv}
	if cfg.SDS.Listen == "" {
		sdsSrv.Register(srv.Registrar())
		return svc, nil
	}
	svc.listener = srv.NewListener("sds")
	sdsSrv.Register(svc.listener)
	m.GRPC().InitializeMetrics(svc.listener.GRPCServer())
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

// serve serves the SDS server's own listener on l until ctx ends, then
// ends its streams (sds.Server.Shutdown) and shuts down as the main
// server does (health NOT_SERVING, graceful stop within
// server.shutdown_timeout, then every connection closed).
func (s *sdsService) serve(ctx context.Context, l net.Listener) error {
	if err := s.listener.Serve(ctx, l, s.sds.Shutdown); err != nil {
		return fmt.Errorf("sds.listen: %w", err)
	}
	return nil
}
