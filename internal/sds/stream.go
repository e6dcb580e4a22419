package sds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// maxNackMessage is the most bytes of a NACK's message that are logged.
const maxNackMessage = 512

// maxNackField is the most bytes of a NACK's node id, version_info and
// response_nonce that are logged: the sidecar sends them, at any length.
const maxNackField = 256

// clip returns s cut to at most max bytes (then marked "…"), whole UTF-8
// characters only, for a log line.
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "…"
}

// subscription is one name a stream subscribed to: its broker watch and
// the last token sent.
type subscription struct {
	name string
	sub  server.Subscription
	tok  broker.Token
	// release frees the subscription's place in the caller's limits.
	release func()
	// lapse, armed when the broker says no valid token can be held,
	// withdraws the secret when tok expires (withdraw).
	lapse *time.Timer
	// withdrawn: the sidecar was sent the empty secret since tok.
	withdrawn bool
}

// stream is the state of one StreamSecrets call. Only its handler
// goroutine touches it.
type stream struct {
	s      *Server
	ctx    context.Context // the call's, with the caller's identity
	wctx   context.Context // ends with the call or at shutdown
	grpc   grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	subs   map[string]*subscription
	order  []*subscription // subs, in a stable order for select
	caller string
	// pending maps the nonce of each response not yet answered to its
	// name; latest maps each name to its pending nonce.
	pending map[string]string
	latest  map[string]string
	// lapsed receives the subscriptions whose lapse fired.
	lapsed chan *subscription
}

// StreamSecrets serves one SDS stream (state of the world): every name
// the sidecar requests gets the current secret at once and every later
// token of its key, until the sidecar goes away or Shutdown. A name the
// caller may not have ends the stream with codes.PermissionDenied
// MsgRefused; a request of another type, or with too many names, with
// codes.InvalidArgument.
func (s *Server) StreamSecrets(gs grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	if s.stopping.Err() != nil {
		return shuttingDown()
	}
	ctx := gs.Context()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.stopping, func() { cancel(errShuttingDown) })()

	st := &stream{
		s: s, ctx: ctx, wctx: wctx, grpc: gs,
		subs:    map[string]*subscription{},
		pending: map[string]string{},
		latest:  map[string]string{},
		lapsed:  make(chan *subscription),
		caller:  callerName(ctx),
	}
	defer st.closeAll()

	// The receiver hands requests over one at a time; it ends when the
	// call does (Recv fails once the handler has returned).
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := gs.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-wctx.Done():
				return
			}
		}
	}()

	const (
		caseDone = iota
		caseRequest
		caseRecvErr
		caseLapsed
		caseFirstSub
	)
	cases := []reflect.SelectCase{
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(wctx.Done())},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(reqs)},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(recvErr)},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(st.lapsed)},
	}
	for {
		// One case per subscription; rebuilt as subscriptions change.
		cases = cases[:caseFirstSub]
		for _, sub := range st.order {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(sub.sub.Events())})
		}
		chosen, v, _ := reflect.Select(cases)
		switch chosen {
		case caseDone:
			if errors.Is(context.Cause(wctx), errShuttingDown) {
				return shuttingDown()
			}
			return status.FromContextError(wctx.Err()).Err()
		case caseRequest:
			if err := st.handle(v.Interface().(*discoveryv3.DiscoveryRequest)); err != nil {
				return err
			}
		case caseRecvErr:
			err := v.Interface().(error)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if errors.Is(context.Cause(wctx), errShuttingDown) {
				return shuttingDown()
			}
			return err
		case caseLapsed:
			if err := st.lapse(v.Interface().(*subscription)); err != nil {
				return err
			}
		default:
			if err := st.event(st.order[chosen-caseFirstSub], v.Interface().(broker.Event)); err != nil {
				return err
			}
		}
	}
}

// handle applies one request: its ACK or NACK, then its names.
func (st *stream) handle(req *discoveryv3.DiscoveryRequest) error {
	if err := checkType(req.GetTypeUrl()); err != nil {
		return err
	}
	names := req.GetResourceNames()
	if err := checkNames(names); err != nil {
		return err
	}
	if nonce := req.GetResponseNonce(); nonce != "" {
		if name, ok := st.pending[nonce]; ok {
			delete(st.pending, nonce)
			delete(st.latest, name)
			st.answered(name, req)
		}
		// Otherwise a stale nonce: the answer to a response superseded
		// since. Its names still say what the sidecar wants.
	}

	want := make(map[string]bool, len(names))
	for _, name := range names {
		want[name] = true
	}
	for name, sub := range st.subs {
		if !want[name] {
			st.unsubscribe(sub)
		}
	}
	for i, name := range names {
		if _, ok := st.subs[name]; ok {
			continue
		}
		if err := st.subscribe(fmt.Sprintf("resource_names[%d]", i), name); err != nil {
			return err
		}
	}
	return nil
}

// answered records the sidecar's answer to name's latest response.
func (st *stream) answered(name string, req *discoveryv3.DiscoveryRequest) {
	sub := st.subs[name]
	detail := req.GetErrorDetail()
	if detail == nil {
		st.s.obs.Acked(name)
		return
	}
	msg := detail.GetMessage()
	if sub != nil && quotesToken(msg, sub.tok) {
		msg = "(withheld: the message quotes the secret)"
	} else {
		msg = clip(msg, maxNackMessage)
	}
	st.s.logger.WarnContext(st.ctx, "sds: sidecar rejected a secret (NACK); it keeps its previous one",
		"secret", name,
		"version", clip(req.GetVersionInfo(), maxNackField),
		"nonce", clip(req.GetResponseNonce(), maxNackField),
		"code", codes.Code(detail.GetCode()).String(),
		"message", msg,
		"node", clip(req.GetNode().GetId(), maxNackField))
	st.s.obs.Nacked(name)
}

// quotesToken reports whether msg holds tok's token or a good part of it.
func quotesToken(msg string, tok broker.Token) bool {
	t := tok.AccessToken.Reveal()
	if t == "" {
		return false
	}
	if strings.Contains(msg, t) {
		return true
	}
	// Any 16-byte window of the token.
	const window = 16
	for i := 0; i+window <= len(t); i += window / 2 {
		if strings.Contains(msg, t[i:i+window]) {
			return true
		}
	}
	return false
}

// subscribe authorizes name, watches its token and sends it.
func (st *stream) subscribe(field, name string) error {
	s := st.s
	sel, err := s.selector(st.ctx, field, name)
	if err != nil {
		return err
	}
	// Admitted after authorization, as WatchToken does: a refused name
	// costs the caller none of its quota.
	release := func() {}
	if s.admit != nil {
		if release, err = s.admit(st.ctx); err != nil {
			return err
		}
	}
	w, err := s.broker.Watch(st.wctx, broker.Request{Selector: sel, Caller: st.caller})
	if err != nil {
		release()
		if errors.Is(context.Cause(st.wctx), errShuttingDown) {
			return shuttingDown()
		}
		if st.wctx.Err() != nil {
			return status.FromContextError(st.wctx.Err()).Err()
		}
		return brokerError(field, err)
	}
	if w == nil {
		release()
		s.logger.ErrorContext(st.ctx, "sds: broker returned no subscription and no error")
		return status.Error(codes.Internal, "internal error")
	}
	sub := &subscription{name: name, sub: w, tok: w.Initial(), release: release}
	st.subs[name] = sub
	st.order = append(st.order, sub)
	s.obs.Subscribed(name, 1)
	return st.send(sub)
}

// unsubscribe ends sub.
func (st *stream) unsubscribe(sub *subscription) {
	delete(st.subs, sub.name)
	for i, o := range st.order {
		if o == sub {
			st.order = append(st.order[:i], st.order[i+1:]...)
			break
		}
	}
	if nonce, ok := st.latest[sub.name]; ok {
		delete(st.pending, nonce)
		delete(st.latest, sub.name)
	}
	if sub.lapse != nil {
		sub.lapse.Stop()
	}
	sub.release() // first, as WatchToken frees the slot before Close
	sub.sub.Close()
	st.s.obs.Subscribed(sub.name, -1)
}

// closeAll ends every subscription.
func (st *stream) closeAll() {
	for _, sub := range append([]*subscription(nil), st.order...) {
		st.unsubscribe(sub)
	}
}

// event handles a broker event of sub.
func (st *stream) event(sub *subscription, ev broker.Event) error {
	switch ev.Kind {
	case broker.EventRefreshed, broker.EventInvalidated:
		if sub.lapse != nil {
			sub.lapse.Stop()
			sub.lapse = nil
		}
		sub.tok, sub.withdrawn = ev.Token, false
		return st.send(sub)
	case broker.EventUnavailable:
		cause := "no valid token can be held"
		if ev.Err != nil {
			cause = server.StatusFromError(ev.Err, false).Message()
		}
		st.s.logger.WarnContext(st.ctx, "sds: no valid token for a secret; the sidecar keeps its last one until it expires, then gets an empty secret until the token endpoint is back",
			"secret", sub.name, "cause", cause)
		if sub.lapse == nil && !sub.withdrawn {
			sub.lapse = time.AfterFunc(time.Until(sub.tok.ExpiresAt), func() {
				select {
				case st.lapsed <- sub:
				case <-st.wctx.Done():
				}
			})
		}
	default:
		st.s.logger.WarnContext(st.ctx, "sds: dropped a broker event of unknown kind", "kind", int(ev.Kind))
	}
	return nil
}

// lapse withdraws sub's secret if its lapse fired for the token it still
// holds: that token has expired and no other came.
func (st *stream) lapse(sub *subscription) error {
	if st.subs[sub.name] != sub || sub.lapse == nil || sub.withdrawn || time.Now().Before(sub.tok.ExpiresAt) {
		return nil // superseded since the timer fired
	}
	sub.lapse = nil
	return st.withdraw(sub)
}

// withdraw pushes sub's secret with an empty value in place of its
// expired token. Envoy's generic credential injector sends no header with
// an empty secret: it answers the request itself, 401 "Failed to inject
// credential." (or, with allow_request_without_credential, forwards it
// without the header), and counts it in credential_injector.failed, rather
// than sending the upstream an expired token. The next token is pushed as
// usual when the token endpoint is back.
func (st *stream) withdraw(sub *subscription) error {
	v := withdrawnVersion(sub.tok)
	msg, err := st.s.prepared.get(st.grpc, sub.name, v, "", func() (*anypb.Any, error) {
		return st.s.emptyResource(sub.name)
	})
	if err != nil {
		return err
	}
	st.s.logger.WarnContext(st.ctx, "sds: a secret's token expired with no other to replace it; sent the empty secret",
		"secret", sub.name, "version", v)
	sub.withdrawn = true
	return st.push(sub, v, msg)
}

// send pushes sub's current token, from the bytes encoded once for every
// stream of the name (prepared.go).
func (st *stream) send(sub *subscription) error {
	v := version(sub.tok)
	msg, err := st.s.prepared.get(st.grpc, sub.name, v, sub.tok.AccessToken.Reveal(), func() (*anypb.Any, error) {
		return st.s.resource(sub.name, sub.tok)
	})
	if err != nil {
		return err
	}
	return st.push(sub, v, msg)
}

// push sends msg, the response carrying sub's secret at version v, and
// records its nonce as sub's pending one.
func (st *stream) push(sub *subscription, v string, msg *grpc.PreparedMsg) error {
	n := nonce(sub.name, v)
	if old, ok := st.latest[sub.name]; ok {
		delete(st.pending, old)
	}
	st.pending[n] = sub.name
	st.latest[sub.name] = n
	if err := st.grpc.SendMsg(msg); err != nil {
		return err
	}
	st.s.obs.Pushed(sub.name)
	return nil
}
