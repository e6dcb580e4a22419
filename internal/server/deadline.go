package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// deadlineSlack is how close to its deadline a cancelled call may end and
// still count as one whose deadline passed. When a client's deadline
// passes, the client cancels the stream (HTTP/2 RST_STREAM CANCEL, the
// same as a caller giving up); the server's copy of the deadline lies
// later by the time the request took to arrive, so the cancellation
// usually reaches the handler first, as context.Canceled.
const deadlineSlack = 250 * time.Millisecond

// deadlineCode returns err, or a DeadlineExceeded status when err is a
// Canceled status of a call whose deadline has passed or was about to
// (within deadlineSlack): whoever noticed the deadline first, the client
// or the server, the access log and the metrics say DeadlineExceeded.
func deadlineCode(ctx context.Context, err error) error {
	if err == nil || status.Code(err) != codes.Canceled {
		return err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return status.FromContextError(context.DeadlineExceeded).Err()
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= deadlineSlack {
		return status.FromContextError(context.DeadlineExceeded).Err()
	}
	return err
}

// unaryDeadline is the innermost unary interceptor: it reports a call
// cancelled at its deadline as DeadlineExceeded (deadlineCode) to every
// interceptor around it (metrics, access log).
func unaryDeadline(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, deadlineCode(ctx, err)
}

// streamDeadline is unaryDeadline for streams.
func streamDeadline(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return deadlineCode(ss.Context(), handler(srv, ss))
}
