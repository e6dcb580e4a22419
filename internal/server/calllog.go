package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The access log writes one "finished call" record per RPC with exactly
// these fields, named as go-grpc-middleware's logging interceptor names
// them. It is not that interceptor: that one builds about a dozen fields
// on every call (peer address, start time, deadline, the error text) that
// this log must drop anyway, and on a cache hit building them cost more
// than the broker's own work (see the README's performance section).
//
// A failure on the broker's side (codes.Unavailable, FailedPrecondition,
// Internal, DeadlineExceeded, Canceled) adds its cause: the text of the
// broker's error, as the HTTP endpoint's log line shows it (for Internal
// only when the error is of a known kind, see causeText). Upstream error
// texts in it carry only the OAuth error code and a description the
// upstream package has scrubbed of the secret; the text is further cut to
// printable ASCII and 512 bytes. Errors of the caller's own making (an
// invalid request, a denial) add none: the status message says it all.
const (
	logService  = "grpc.service"
	logMethod   = "grpc.method"
	logCode     = "grpc.code"
	logDuration = "grpc.time_ms"
	logKeyID    = "key_id"
	logCause    = "cause"
	logFinished = "finished call"
)

// callLog is what a handler adds to its call's access-log record.
type callLog struct {
	keyID string
	// cause is the broker's error, for failures whose code logsCause
	// accepts.
	cause error
}

// callLogKey is the context key of a call's *callLog.
type callLogKey struct{}

// setLogKeyID records the non-secret key id the call resolved, for its
// access-log record. Handlers call it on their own goroutine; the
// interceptor reads it after the handler returns.
func setLogKeyID(ctx context.Context, id string) {
	if c, ok := ctx.Value(callLogKey{}).(*callLog); ok {
		c.keyID = id
	}
}

// setLogCause records the broker's error that failed the call, for its
// access-log record (which shows it when the call's code is one of the
// broker's failures, see logsCause).
func setLogCause(ctx context.Context, err error) {
	if c, ok := ctx.Value(callLogKey{}).(*callLog); ok {
		c.cause = err
	}
}

// logsCause reports whether a call that ended with code shows its cause:
// the failures an operator must look into, not the caller's own mistakes.
func logsCause(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.FailedPrecondition, codes.Internal, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

// internalCause is the cause logged for a codes.Internal call whose error
// is of no known kind.
const internalCause = "internal error"

// causeText returns the access-log cause of a call that ended with code
// because of err. codes.Internal is also what an error of no known kind
// becomes (StatusFromError's fallback), and such an error's text may hold
// anything, a secret included: for Internal the text is shown only when
// err matches a kind of the error table (the upstream kinds among them),
// else the fixed internalCause (the broker's own internal error reads the
// same).
func causeText(code codes.Code, err error) string {
	if code == codes.Internal && !knownKind(err) {
		return internalCause
	}
	return sanitize(err.Error())
}

// knownKind reports whether err matches a kind of statusTable.
func knownKind(err error) bool {
	for _, row := range statusTable {
		if errors.Is(err, row.kind) {
			return true
		}
	}
	return false
}

// unaryCallLog returns the unary access-log interceptor writing to l;
// successes says whether a successful call's line is at info (else at
// debug).
func unaryCallLog(l *slog.Logger, successes bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		rec := &callLog{}
		resp, err := handler(context.WithValue(ctx, callLogKey{}, rec), req)
		rec.write(ctx, l, successes, info.FullMethod, start, err)
		return resp, err
	}
}

// streamCallLog returns the streaming access-log interceptor writing to l;
// successes as for unaryCallLog.
func streamCallLog(l *slog.Logger, successes bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		rec := &callLog{}
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = context.WithValue(ss.Context(), callLogKey{}, rec)
		err := handler(srv, wrapped)
		rec.write(ss.Context(), l, successes, info.FullMethod, start, err)
		return err
	}
}

// callLevel is the level of the line of a call that ended with code: the
// level go-grpc-middleware's logging gives it (info for OK,
// InvalidArgument or Unauthenticated; warn for PermissionDenied,
// ResourceExhausted or Unavailable; error for Internal), except that a
// success is at debug unless successes is set (log.access: all). At the
// default level, info, a cache hit so writes no line: the line, its
// formatting and its write were the largest part of a hit's cost beyond
// gRPC's own (README, Performance), and the metrics count every call.
func callLevel(code codes.Code, successes bool) slog.Level {
	if code == codes.OK && !successes {
		return slog.LevelDebug
	}
	return slog.Level(logging.DefaultServerCodeToLevel(code))
}

// write logs the call's record at callLevel.
func (c *callLog) write(ctx context.Context, l *slog.Logger, successes bool, fullMethod string, start time.Time, err error) {
	code := status.Code(err)
	level := callLevel(code, successes)
	if !l.Enabled(ctx, level) {
		return
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	attrs := [6]slog.Attr{
		slog.String(logService, service),
		slog.String(logMethod, method),
		slog.String(logCode, code.String()),
		slog.Float64(logDuration, float64(time.Since(start))/float64(time.Millisecond)),
	}
	n := 4
	if c.keyID != "" {
		attrs[n] = slog.String(logKeyID, c.keyID)
		n++
	}
	if c.cause != nil && logsCause(code) {
		attrs[n] = slog.String(logCause, causeText(code, c.cause))
		n++
	}
	l.LogAttrs(ctx, level, logFinished, attrs[:n]...)
}
