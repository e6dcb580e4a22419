// Package tracing is tokenbroker's OpenTelemetry tracing: set up from the
// standard OTEL_* environment variables, off unless OTEL_TRACES_EXPORTER
// names an exporter. It hands the rest of the program the pieces that
// trace it — a gRPC stats handler (server spans), an HTTP handler wrapper
// (server spans), an HTTP transport wrapper (client spans for token
// requests, with the W3C traceparent header), a go-redis hook (client
// spans for the shared tier's commands), a slog handler adding trace_id
// and span_id to log lines, and the exemplar of the request histograms.
//
// A nil *Tracing is tracing off: every method then returns nil or its
// argument unchanged, so that nothing is installed and the hot path costs
// nothing.
//
// Spans never carry a token, a secret or an assertion: request and
// response bodies, headers and gRPC messages are never recorded, and the
// token endpoint's URL is recorded without its query.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"
)

// ServiceName is the service.name spans carry unless OTEL_SERVICE_NAME
// (or service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
const ServiceName = "tokenbroker"

// instrumentation names the tracer of the spans this package makes itself
// (the shared tier's Redis commands).
const instrumentation = "github.com/tokenbroker/tokenbroker/internal/tracing"

// Tracing holds a tracer provider and the W3C trace-context propagator.
// Its methods are safe for concurrent use; a nil *Tracing is tracing off.
type Tracing struct {
	tp       trace.TracerProvider
	prop     propagation.TextMapPropagator
	mp       metric.MeterProvider // no-op: the instrumentations' metrics are not wanted
	tracer   trace.Tracer
	shutdown func(context.Context) error
}

// New returns tracing that sends spans to tp (its owner shuts it down),
// propagating the W3C trace context. Tests use it with the SDK's in-memory
// exporter.
func New(tp trace.TracerProvider) *Tracing {
	return &Tracing{
		tp:       tp,
		prop:     propagation.TraceContext{},
		mp:       metricnoop.NewMeterProvider(),
		tracer:   tp.Tracer(instrumentation),
		shutdown: func(context.Context) error { return nil },
	}
}

// FromEnv sets tracing up from the OTEL_* environment variables, or
// returns nil (tracing off) when OTEL_TRACES_EXPORTER is unset or "none",
// or OTEL_SDK_DISABLED is "true". OTEL_TRACES_EXPORTER=otlp sends spans
// with OTLP over OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (or
// OTEL_EXPORTER_OTLP_PROTOCOL): "http/protobuf" (the default) or "grpc".
// The exporter reads its own variables (OTEL_EXPORTER_OTLP_ENDPOINT,
// _HEADERS, _TIMEOUT, _INSECURE, _CERTIFICATE…), the SDK its sampler
// (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG; default parentbased_always_on)
// and batching (OTEL_BSP_*), the resource OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES. Export failures are logged on logger as
// warnings. Errors name the variable and the rule.
func FromEnv(ctx context.Context, logger *slog.Logger) (*Tracing, error) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return nil, nil
	}
	var exporter sdktrace.SpanExporter
	for _, name := range strings.Split(os.Getenv("OTEL_TRACES_EXPORTER"), ",") {
		switch name = strings.TrimSpace(name); name {
		case "", "none":
		case "otlp":
			if exporter != nil {
				continue
			}
			var err error
			if exporter, err = otlpExporter(ctx); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: unsupported exporter %q (want otlp or none)", name)
		}
	}
	if exporter == nil {
		return nil, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil && res == nil {
		_ = exporter.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	if logger != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			logger.Warn("tracing: exporting spans failed", "error", err.Error())
		}))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	t := New(tp)
	t.shutdown = tp.Shutdown
	return t, nil
}

// otlpExporter is the OTLP span exporter of the configured protocol.
func otlpExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	key, proto := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		key, proto = "OTEL_EXPORTER_OTLP_PROTOCOL", os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch strings.TrimSpace(proto) {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("%s: unsupported protocol %q (want http/protobuf or grpc)", key, proto)
	}
	if err != nil {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP: %w", err)
	}
	return exp, nil
}

// Enabled reports whether tracing is on.
func (t *Tracing) Enabled() bool { return t != nil }

// Shutdown flushes the spans not yet exported and stops the exporter,
// within ctx.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// StatsHandler is the gRPC server's stats handler making a server span per
// call (continuing the caller's traceparent), or nil when tracing is off.
// Health checks (probes) make none. Messages are never recorded.
func (t *Tracing) StatsHandler() stats.Handler {
	if t == nil {
		return nil
	}
	return otelgrpc.NewServerHandler(
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
		otelgrpc.WithTracerProvider(t.tp),
		otelgrpc.WithPropagators(t.prop),
		otelgrpc.WithMeterProvider(t.mp),
	)
}

// HTTPHandler wraps h (the HTTP listener's handler) so that each request
// gets a server span, or returns h when tracing is off. Probes and scrapes
// (/healthz, /readyz, /metrics) make none. Bodies, headers and the query
// are never recorded.
func (t *Tracing) HTTPHandler(h http.Handler) http.Handler {
	if t == nil {
		return h
	}
	return otelhttp.NewHandler(h, "tokenbroker.http",
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case "/healthz", "/readyz", "/metrics":
				return false
			}
			return true
		}),
		otelhttp.WithTracerProvider(t.tp),
		otelhttp.WithPropagators(t.prop),
		otelhttp.WithMeterProvider(t.mp),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
	)
}

// WrapTransport returns the wrapper of the upstream clients' HTTP
// transports, or nil when tracing is off. The wrapped transport makes a
// client span per token request, child of the context's span, and sends
// the W3C traceparent header. The span's url.full has no query (a token
// URL's query could carry a credential) and no user information;
// bodies and headers are never recorded.
func (t *Tracing) WrapTransport() func(http.RoundTripper) http.RoundTripper {
	if t == nil {
		return nil
	}
	return func(base http.RoundTripper) http.RoundTripper {
		traced := otelhttp.NewTransport(queryRestorer{base},
			otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithPropagators(t.prop),
			otelhttp.WithMeterProvider(t.mp),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "token request " + r.Method }),
		)
		return queryHider{traced}
	}
}

// queryKey keys a request's hidden query in its context.
type queryKey struct{}

// queryHider sends the request on without its query (kept in the
// context), so that the span otelhttp makes never records it.
type queryHider struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (q queryHider) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL == nil || (r.URL.RawQuery == "" && !r.URL.ForceQuery) {
		return q.next.RoundTrip(r)
	}
	hidden := r.Clone(context.WithValue(r.Context(), queryKey{}, *r.URL))
	hidden.URL.RawQuery, hidden.URL.ForceQuery = "", false
	return q.next.RoundTrip(hidden)
}

// queryRestorer puts the query queryHider took back before the request
// leaves.
type queryRestorer struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (q queryRestorer) RoundTrip(r *http.Request) (*http.Response, error) {
	if u, ok := r.Context().Value(queryKey{}).(url.URL); ok {
		r = r.Clone(r.Context())
		r.URL.RawQuery, r.URL.ForceQuery = u.RawQuery, u.ForceQuery
	}
	return q.next.RoundTrip(r)
}

// Logger returns l with its records carrying trace_id and span_id when
// their context holds a valid span, or l when tracing is off.
func (t *Tracing) Logger(l *slog.Logger) *slog.Logger {
	if t == nil || l == nil {
		return l
	}
	return slog.New(NewLogHandler(l.Handler()))
}

// PrometheusExemplar returns the exemplar labels of an observation made
// with ctx: trace_id of its span when that span is sampled, else nil (no
// exemplar).
func PrometheusExemplar(ctx context.Context) prometheus.Labels {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return nil
	}
	return prometheus.Labels{"trace_id": sc.TraceID().String()}
}
