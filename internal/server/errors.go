package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// DefaultRetryDelay is the RetryInfo delay sent with ResourceExhausted when
// the upstream error does not say how long to wait.
const DefaultRetryDelay = time.Second

// maxDetailBytes bounds the upstream error text copied into a status
// message.
const maxDetailBytes = 512

// statusRow is one row of the error table.
type statusRow struct {
	// kind is matched with errors.Is.
	kind error
	// code is the status code; passthroughCode, when set, replaces it for
	// requests that presented pass-through credentials.
	code, passthroughCode codes.Code
	// message is the status message. For broker kinds a *broker.FieldError
	// found in the chain replaces it with "<field>: <rule>". For upstream
	// kinds the upstream error's sanitised text is appended after ": ".
	message, passthroughMessage string
	// upstream marks rows for upstream.Err* kinds.
	upstream bool
	// ownMessage makes the error's own text (sanitised) the message.
	ownMessage bool
}

// statusTable maps domain errors to gRPC statuses: the first row whose kind
// matches (errors.Is) wins. Context errors and unknown errors are handled
// after it by StatusFromError.
//
// Choices worth stating:
//   - upstream.ErrInvalidClient is the caller's fault (Unauthenticated) when
//     the caller presented the credentials, and an operator problem
//     (FailedPrecondition) when the broker holds them;
//   - upstream.ErrRejected (invalid_request, unsupported_grant_type, an
//     unexpected HTTP status) is FailedPrecondition: the provider's setup
//     does not accept this request, and retrying it unchanged will not help;
//   - upstream.ErrThrottled is ResourceExhausted with errdetails.RetryInfo;
//     upstream.ErrUnavailable is Unavailable, with RetryInfo when the error
//     says how long to wait (the broker holding a failing key off);
//   - access.ErrPermissionDenied (a denial from Config.Authorize; the one
//     permission-denied error, owned by the package that authorizes) comes
//     first and keeps its own message, which names the client or scope
//     refused;
//   - broker.ErrBadPageToken (ListTokens) is InvalidArgument;
//   - broker.ErrFleetNotTold (InvalidateTokens with Redis down) is
//     Unavailable: the invalidation holds on one replica only.
var statusTable = []statusRow{
	{kind: access.ErrPermissionDenied, code: codes.PermissionDenied, message: "permission denied", ownMessage: true},
	{kind: broker.ErrInvalidArgument, code: codes.InvalidArgument, message: "invalid argument"},
	{kind: broker.ErrUnknownProvider, code: codes.InvalidArgument, message: fieldProvider + ": unknown provider"},
	{kind: broker.ErrUnknownClient, code: codes.NotFound, message: fieldClient + ": unknown client"},
	{kind: broker.ErrPassthroughDisabled, code: codes.PermissionDenied, message: "pass-through credentials are not accepted"},
	{kind: broker.ErrTokenTooShort, code: codes.FailedPrecondition, message: "the token endpoint issues tokens with less life than the broker may serve (min_remaining)"},
	{kind: broker.ErrBadPageToken, code: codes.InvalidArgument, message: fieldPageToken + ": " + broker.ErrBadPageToken.Error()},
	{kind: broker.ErrFleetNotTold, code: codes.Unavailable, message: broker.ErrFleetNotTold.Error()},
	{kind: broker.ErrShuttingDown, code: codes.Unavailable, message: broker.ErrShuttingDown.Error()},
	{
		kind: upstream.ErrInvalidClient, upstream: true,
		code:               codes.FailedPrecondition,
		message:            "token endpoint rejected the broker-held client's credentials (invalid_client)",
		passthroughCode:    codes.Unauthenticated,
		passthroughMessage: "token endpoint rejected the client credentials (invalid_client)",
	},
	{kind: upstream.ErrInvalidScope, upstream: true, code: codes.InvalidArgument, message: "token endpoint rejected the scopes (invalid_scope)"},
	{kind: upstream.ErrUnauthorizedClient, upstream: true, code: codes.PermissionDenied, message: "client may not use the client-credentials grant (unauthorized_client)"},
	{kind: upstream.ErrThrottled, upstream: true, code: codes.ResourceExhausted, message: "token endpoint is throttling requests"},
	{kind: upstream.ErrUnavailable, upstream: true, code: codes.Unavailable, message: "token endpoint unavailable"},
	{kind: upstream.ErrRejected, upstream: true, code: codes.FailedPrecondition, message: "token endpoint rejected the request"},
}

// retryDelayer is implemented by upstream errors that know how long the
// caller should wait before trying again.
type retryDelayer interface {
	RetryDelay() time.Duration
}

// StatusFromError maps an error from the broker (or from request
// validation) to the gRPC status sent to the caller. passthrough says
// whether the request presented its own client credentials; it decides how
// upstream.ErrInvalidClient is reported.
//
// The rows of statusTable are tried first, then context errors
// (status.FromContextError, with a generic message), and anything else is
// codes.Internal "internal error". A message never contains the text of an
// unknown error, a secret or a token: it is the table's fixed text, a
// *broker.FieldError's "<field>: <rule>", for upstream failures the
// upstream error's own sanitised text, or for access.ErrPermissionDenied the
// denial's own sanitised text (Config.Authorize vouches for it). A nil
// error gives an OK status.
func StatusFromError(err error, passthrough bool) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	for _, row := range statusTable {
		if !errors.Is(err, row.kind) {
			continue
		}
		code, msg := row.code, row.message
		if passthrough && row.passthroughCode != codes.OK {
			code, msg = row.passthroughCode, row.passthroughMessage
		}
		if row.ownMessage {
			if own := sanitize(err.Error()); own != "" {
				msg = own
			}
			return status.New(code, msg)
		}
		if !row.upstream {
			var fe *broker.FieldError
			if errors.As(err, &fe) {
				msg = fe.Field + ": " + fe.Rule
			}
			return status.New(code, msg)
		}
		if detail := upstreamDetail(err, row.kind); detail != "" {
			msg += ": " + detail
		}
		st := status.New(code, msg)
		var rd retryDelayer
		switch {
		case row.kind == upstream.ErrThrottled:
			st = withRetryInfo(st, retryDelay(err))
		case row.kind == upstream.ErrUnavailable && errors.As(err, &rd) && rd.RetryDelay() > 0:
			// The endpoint's Retry-After, or the broker's backoff: the
			// caller was refused without a request and may retry then.
			st = withRetryInfo(st, rd.RetryDelay())
		}
		return st
	}
	var fe *broker.FieldError
	if errors.As(err, &fe) {
		// A field error of an unexpected kind is still a request error.
		return status.New(codes.InvalidArgument, fe.Field+": "+fe.Rule)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// Map the bare sentinel: err's own text may carry internal detail.
		return status.FromContextError(context.DeadlineExceeded)
	case errors.Is(err, context.Canceled):
		return status.FromContextError(context.Canceled)
	}
	return status.New(codes.Internal, "internal error")
}

// retryDelay returns the delay an upstream error asks for, or
// DefaultRetryDelay when it does not say.
func retryDelay(err error) time.Duration {
	var rd retryDelayer
	if errors.As(err, &rd) {
		if d := rd.RetryDelay(); d > 0 {
			return d
		}
	}
	return DefaultRetryDelay
}

// withRetryInfo attaches errdetails.RetryInfo to st.
func withRetryInfo(st *status.Status, d time.Duration) *status.Status {
	withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	if err != nil {
		// Only fails for an OK status or an unmarshalable detail; neither
		// happens here, but a status without details is still right.
		return st
	}
	return withInfo
}

// upstreamDetail returns the text of the upstream error in err's chain: the
// error that wraps kind directly (the *upstream.Error), not any wrapper the
// broker added around it. It returns "" when err is the bare kind. The text
// is cut down to printable ASCII and maxDetailBytes as a second line of
// defence; the upstream package already sanitises it.
func upstreamDetail(err, kind error) string {
	e := findWrapper(err, kind, 0)
	if e == nil {
		return ""
	}
	return sanitize(e.Error())
}

// findWrapper walks err's tree and returns the first error whose single
// Unwrap yields kind itself. depth guards against pathological chains.
func findWrapper(err, kind error, depth int) error {
	if err == nil || depth > 100 {
		return nil
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		next := u.Unwrap()
		if next == kind {
			return err
		}
		return findWrapper(next, kind, depth+1)
	case interface{ Unwrap() []error }:
		// A multi-error's text includes its siblings' texts, so it is
		// never used itself: only an upstream error inside it is.
		for _, next := range u.Unwrap() {
			if found := findWrapper(next, kind, depth+1); found != nil {
				return found
			}
		}
	}
	return nil
}

// sanitize keeps printable ASCII and at most maxDetailBytes of s.
func sanitize(s string) string {
	b := make([]byte, 0, min(len(s), maxDetailBytes))
	for i := 0; i < len(s) && len(b) < maxDetailBytes; i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e {
			b = append(b, c)
		}
	}
	return string(b)
}
