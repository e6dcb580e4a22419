package tracing

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// RedisHook returns the go-redis hook making a client span for each
// command (and pipeline) of the shared tier, child of the caller's span,
// or nil when tracing is off. Commands run without a span in their
// context (the tier's health probes, its subscription) make none. A span
// names the command only: its arguments (keys, sealed tokens) and replies
// are never recorded, nor an error's text.
func (t *Tracing) RedisHook() redis.Hook {
	if t == nil {
		return nil
	}
	return redisHook{tracer: t.tracer}
}

// redisHook is the go-redis hook of RedisHook.
type redisHook struct{ tracer trace.Tracer }

// DialHook implements redis.Hook: dials are not traced.
func (redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return next(ctx, cmd)
		}
		op := strings.ToUpper(cmd.Name())
		ctx, span := h.tracer.Start(ctx, "redis "+op, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("db.system.name", "redis"), attribute.String("db.operation.name", op)))
		defer span.End()
		err := next(ctx, cmd)
		endRedis(span, err)
		return err
	}
}

// ProcessPipelineHook implements redis.Hook.
func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return next(ctx, cmds)
		}
		ctx, span := h.tracer.Start(ctx, "redis pipeline", trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("db.system.name", "redis"), attribute.String("db.operation.name", "PIPELINE"),
				attribute.Int("db.operation.batch.size", len(cmds))))
		defer span.End()
		err := next(ctx, cmds)
		endRedis(span, err)
		return err
	}
}

// endRedis marks span failed when err is a failure (redis.Nil, no such
// key, is an answer), with the kind of error only.
func endRedis(span trace.Span, err error) {
	if err == nil || errors.Is(err, redis.Nil) {
		return
	}
	kind := "redis"
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	case errors.Is(err, context.Canceled):
		kind = "canceled"
	case errors.As(err, &ne):
		kind = "network"
	}
	span.SetAttributes(attribute.String("error.type", kind))
	span.SetStatus(codes.Error, kind)
}
