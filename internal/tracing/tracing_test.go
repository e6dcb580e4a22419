package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestFromEnv: tracing is off unless OTEL_TRACES_EXPORTER names an
// exporter (or when OTEL_SDK_DISABLED=true); otlp sets it up over either
// protocol; unsupported values are errors naming the variable.
func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		exporter, proto, off string
		wantOn               bool
		wantErr              string
	}{
		{name: "unset"},
		{name: "none", exporter: "none"},
		{name: "disabled", exporter: "otlp", off: "true"},
		{name: "otlp http", exporter: "otlp", wantOn: true},
		{name: "otlp grpc", exporter: "otlp", proto: "grpc", wantOn: true},
		{name: "unknown exporter", exporter: "zipkin", wantErr: "OTEL_TRACES_EXPORTER"},
		{name: "unknown protocol", exporter: "otlp", proto: "http/json", wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_EXPORTER", tc.exporter)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tc.proto)
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "")
			t.Setenv("OTEL_SDK_DISABLED", tc.off)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			tr, err := FromEnv(context.Background(), slog.New(slog.DiscardHandler))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tr.Enabled() != tc.wantOn {
				t.Fatalf("got enabled %v, want %v", tr.Enabled(), tc.wantOn)
			}
			if tr.Enabled() && tr.StatsHandler() == nil {
				t.Error("tracing on: got no stats handler")
			}
			if !tr.Enabled() && (tr.StatsHandler() != nil || tr.WrapTransport() != nil || tr.RedisHook() != nil) {
				t.Error("tracing off: got something installed")
			}
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
}

// TestTransportHidesQuery: a token request's client span records its URL
// without the query (which could carry a credential), the request still
// leaves with its query, and carries a traceparent header.
func TestTransportHidesQuery(t *testing.T) {
	var gotQuery, gotTP string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery, gotTP = r.URL.RawQuery, r.Header.Get("traceparent")
	}))
	defer srv.Close()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	tr := New(tp)
	hc := &http.Client{Transport: tr.WrapTransport()(http.DefaultTransport)}
	ctx, span := tp.Tracer("test").Start(context.Background(), "caller")
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/token?code=query-secret-1", strings.NewReader("client_secret=body-secret-2"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	span.End()
	if gotQuery != "code=query-secret-1" {
		t.Errorf("endpoint's query: got %q, want code=query-secret-1", gotQuery)
	}
	if !strings.HasPrefix(gotTP, "00-"+span.SpanContext().TraceID().String()+"-") {
		t.Errorf("traceparent: got %q, want one in trace %s", gotTP, span.SpanContext().TraceID())
	}
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2 (caller, token request)", len(spans))
	}
	var sawURL bool
	for _, sp := range spans {
		for _, a := range sp.Attributes {
			v := a.Value.String()
			if strings.Contains(v, "secret") {
				t.Errorf("span %q attribute %s holds a secret: %q", sp.Name, a.Key, v)
			}
			if a.Key == "url.full" {
				sawURL = true
				if v != srv.URL+"/token" {
					t.Errorf("url.full: got %q, want %q", v, srv.URL+"/token")
				}
			}
		}
	}
	if !sawURL {
		t.Error("the client span has no url.full")
	}
}

// TestLogHandler: a record logged with a context holding a span carries
// trace_id and span_id; one without carries neither.
func TestLogHandler(t *testing.T) {
	var buf bytes.Buffer
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	tr := New(tp)
	logger := tr.Logger(slog.New(slog.NewJSONHandler(&buf, nil))).With("k", "v")
	ctx, span := tp.Tracer("test").Start(context.Background(), "call")
	logger.InfoContext(ctx, "traced")
	logger.InfoContext(context.Background(), "untraced")
	span.End()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	var traced, untraced map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &traced); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &untraced); err != nil {
		t.Fatal(err)
	}
	if traced[LogTraceID] != span.SpanContext().TraceID().String() || traced[LogSpanID] != span.SpanContext().SpanID().String() || traced["k"] != "v" {
		t.Errorf("traced line: got %v, want trace_id %s, span_id %s, k=v", traced, span.SpanContext().TraceID(), span.SpanContext().SpanID())
	}
	if _, ok := untraced[LogTraceID]; ok {
		t.Errorf("untraced line: got %v, want no trace_id", untraced)
	}
	if (*Tracing)(nil).Logger(logger) != logger {
		t.Error("tracing off: Logger changed the logger")
	}
}
