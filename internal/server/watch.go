package server

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// MsgShuttingDown is the status message, with codes.Unavailable, of the
// WatchToken streams a shutdown ends.
const MsgShuttingDown = "server shutting down"

// msgNoToken is the status message of an EVENT_UNAVAILABLE whose broker
// event carries no error.
const msgNoToken = "no valid token can be held"

// errShuttingDown is the cancellation cause of a watch ended by shutdown.
var errShuttingDown = errors.New(MsgShuttingDown)

// WatchToken validates the request with GetToken's selector rules, checks
// that the caller may have the token (Config.Authorize), admits the stream
// under the caller's limits, subscribes to the broker, sends
// EVENT_INITIAL with the first token at once and then forwards every
// broker event, until the caller goes away or the server shuts down. The
// subscription is closed whatever ends the stream.
//
// Errors before the first message use GetToken's error table (and
// codes.ResourceExhausted with RetryInfo for the caller limits). A
// shutdown ends the stream with codes.Unavailable MsgShuttingDown.
//
// A send blocks while the client's flow-control window is full; such a
// stream notices a shutdown only when Serve's deadline closes its
// connection. Events are small and rare (one per refresh), so this takes a
// client that stopped reading for a long time.
func (h *handler) WatchToken(in *tokenbrokerv1.WatchTokenRequest, stream grpc.ServerStreamingServer[tokenbrokerv1.WatchTokenResponse]) error {
	req, err := toWatchRequest(in)
	if err != nil {
		return StatusFromError(err, false).Err()
	}
	ctx := stream.Context()
	req.Caller = callerName(ctx)
	if h.stopping.Err() != nil {
		return shuttingDown()
	}
	// Authorize before the caller limits: a refused stream costs the
	// caller none of its quota.
	if err := h.authorized(ctx, req.Selector); err != nil {
		return err
	}
	release, rejected := h.limits.acquire(h.callerID(ctx))
	if rejected != nil {
		return rejected.Err()
	}
	var sub Subscription
	defer func() {
		// The caller's slot is free before Close returns, so a caller
		// that saw its watch end may open another at once.
		release()
		if sub != nil {
			sub.Close()
		}
	}()

	// wctx ends when the caller goes away or the server shuts down; it
	// bounds the wait for the first token as well as the stream.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(h.stopping, func() { cancel(errShuttingDown) })()

	passthrough := req.Selector.Credentials != nil
	sub, err = h.broker.Watch(wctx, req)
	if err != nil {
		if errors.Is(context.Cause(wctx), errShuttingDown) {
			return shuttingDown()
		}
		if id := broker.KeyIDOf(err); id != "" {
			setLogKeyID(ctx, id)
		}
		setLogCause(ctx, err)
		return StatusFromError(err, passthrough).Err()
	}
	if sub == nil {
		h.logger.ErrorContext(ctx, "broker returned no subscription and no error")
		return status.Error(codes.Internal, "internal error")
	}

	initial := sub.Initial()
	setLogKeyID(ctx, initial.KeyID)
	if err := h.sendToken(stream, tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL, initial); err != nil {
		return err
	}

	events := sub.Events()
	for {
		select {
		case <-wctx.Done():
			if errors.Is(context.Cause(wctx), errShuttingDown) {
				return shuttingDown()
			}
			return status.FromContextError(wctx.Err()).Err()
		case ev := <-events:
			if event, ok := tokenEvents[ev.Kind]; ok {
				if err := h.sendToken(stream, event, ev.Token); err != nil {
					return err
				}
				continue
			}
			msg := toWatchResponse(ev, passthrough)
			if msg == nil {
				h.logger.WarnContext(ctx, "watch: dropped a broker event of unknown kind", "kind", int(ev.Kind))
				continue
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

// tokenEvents are the broker events that carry a token, with their API
// event: the same message for every watcher of the key.
var tokenEvents = map[broker.EventKind]tokenbrokerv1.WatchTokenResponse_Event{
	broker.EventRefreshed:   tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
	broker.EventInvalidated: tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
}

// sendToken sends the message announcing tok with event on stream, from
// the bytes encoded once for every watcher of the key (prepared.go).
func (h *handler) sendToken(stream grpc.ServerStream, event tokenbrokerv1.WatchTokenResponse_Event, tok broker.Token) error {
	msg, err := h.prepared.get(stream, event, tok)
	if err != nil {
		return err
	}
	return stream.SendMsg(msg)
}

// callerID returns the caller identity of a stream, UnknownCaller when the
// identity function returns "".
func (h *handler) callerID(ctx context.Context) string {
	if id := h.identity(ctx); id != "" {
		return id
	}
	return UnknownCaller
}

// shuttingDown returns the status that ends a watch stream at shutdown.
func shuttingDown() error {
	return status.Error(codes.Unavailable, MsgShuttingDown)
}

// toWatchResponse converts a broker event to its API form, or returns nil
// for an unknown kind. EVENT_UNAVAILABLE carries the status GetToken would
// return for ev.Err, and no token.
func toWatchResponse(ev broker.Event, passthrough bool) *tokenbrokerv1.WatchTokenResponse {
	switch ev.Kind {
	case broker.EventRefreshed:
		return &tokenbrokerv1.WatchTokenResponse{
			Event: tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED,
			Token: toProtoToken(ev.Token),
		}
	case broker.EventInvalidated:
		return &tokenbrokerv1.WatchTokenResponse{
			Event: tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
			Token: toProtoToken(ev.Token),
		}
	case broker.EventUnavailable:
		st := status.New(codes.Unavailable, msgNoToken)
		if ev.Err != nil {
			st = StatusFromError(ev.Err, passthrough)
		}
		return &tokenbrokerv1.WatchTokenResponse{
			Event: tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE,
			Error: st.Proto(),
		}
	}
	return nil
}
