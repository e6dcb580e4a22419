package tracing

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// The attributes a log line of a traced call carries.
const (
	// LogTraceID is the attribute holding the trace id (32 hex digits).
	LogTraceID = "trace_id"
	// LogSpanID is the attribute holding the span id (16 hex digits).
	LogSpanID = "span_id"
)

// LogHandler is a slog.Handler adding trace_id and span_id to each record
// whose context holds a valid span; others pass through unchanged. Log
// calls must pass their context (InfoContext, LogAttrs…) for it to see
// the span.
type LogHandler struct{ next slog.Handler }

// NewLogHandler returns a LogHandler in front of next.
func NewLogHandler(next slog.Handler) *LogHandler { return &LogHandler{next: next} }

// Enabled implements slog.Handler.
func (h *LogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone() // the caller's record is not ours to change
		r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &LogHandler{next: h.next.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	return &LogHandler{next: h.next.WithGroup(name)}
}
