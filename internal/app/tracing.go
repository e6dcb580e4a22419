package app

import (
	"context"
	"log/slog"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc/stats"

	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

// newTracing sets up New's tracing: from the OTEL_* environment, off
// (nil) unless OTEL_TRACES_EXPORTER names an exporter. Tests replace it
// to record spans in memory.
var newTracing = func(logger *slog.Logger) (*tracing.Tracing, error) {
	return tracing.FromEnv(context.Background(), logger)
}

// tracingShutdownTimeout bounds the flush of the last spans at close.
const tracingShutdownTimeout = 5 * time.Second

// shutdownTracing flushes tr's last spans (nothing when tracing is off).
func shutdownTracing(tr *tracing.Tracing) {
	if tr == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), tracingShutdownTimeout)
	defer cancel()
	_ = tr.Shutdown(ctx) // export failures are logged by the exporter's handler
}

// statsHandlers are the gRPC servers' stats handlers: tracing's, or none.
func statsHandlers(tr *tracing.Tracing) []stats.Handler {
	if h := tr.StatsHandler(); h != nil {
		return []stats.Handler{h}
	}
	return nil
}

// metricsOptions are the options of the gRPC metrics interceptors: the
// trace id as the request histograms' exemplar when tracing is on.
func metricsOptions(tr *tracing.Tracing) []grpcprom.Option {
	if !tr.Enabled() {
		return nil
	}
	return []grpcprom.Option{grpcprom.WithExemplarFromContext(tracing.PrometheusExemplar)}
}
