package tokensource

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// attempt is what the fake broker does with one WatchToken stream: fail to
// open it with err, or deliver msgs and then end with err (or, when err is
// nil, stay open until the stream's context ends).
type attempt struct {
	msgs []*tokenbrokerv1.WatchTokenResponse
	err  error
}

// fakeConn is a broker connection without a network, for tests inside a
// synctest bubble: the n-th WatchToken stream follows script[n] (the last
// one repeats). It records when each stream was opened.
type fakeConn struct {
	mu     sync.Mutex
	script []attempt
	opened []time.Time
}

func (f *fakeConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unimplemented, "fake broker: only WatchToken")
}

func (f *fakeConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if method != tokenbrokerv1.TokenBrokerService_WatchToken_FullMethodName {
		return nil, status.Errorf(codes.Unimplemented, "fake broker: %s", method)
	}
	a := f.script[min(len(f.opened), len(f.script)-1)]
	f.opened = append(f.opened, time.Now())
	if a.err != nil && a.msgs == nil {
		return nil, a.err
	}
	return &fakeStream{ctx: ctx, msgs: a.msgs, err: a.err}, nil
}

// times returns when the streams were opened, relative to start.
func (f *fakeConn) times(start time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := make([]time.Duration, len(f.opened))
	for i, t := range f.opened {
		d[i] = t.Sub(start)
	}
	return d
}

// fakeStream is one scripted WatchToken stream.
type fakeStream struct {
	ctx  context.Context
	msgs []*tokenbrokerv1.WatchTokenResponse
	err  error
}

func (s *fakeStream) Header() (metadata.MD, error) { return nil, nil }
func (s *fakeStream) Trailer() metadata.MD         { return nil }
func (s *fakeStream) CloseSend() error             { return nil }
func (s *fakeStream) Context() context.Context     { return s.ctx }
func (s *fakeStream) SendMsg(any) error            { return nil }

func (s *fakeStream) RecvMsg(m any) error {
	if len(s.msgs) > 0 {
		proto.Merge(m.(proto.Message), s.msgs[0])
		s.msgs = s.msgs[1:]
		return nil
	}
	if s.err != nil {
		return s.err
	}
	<-s.ctx.Done()
	return status.FromContextError(s.ctx.Err()).Err()
}

// TestReconnectSchedule: on a fake clock, the stream is opened again after
// exponentially growing waits, reset by a stream that delivered a token; a
// non-retryable failure waits the maximum, a RetryInfo longer than the
// backoff is honoured; and the non-retryable failure becomes Token's error
// only once the held token has less than min_remaining left. The backoff
// draws its highest value, so every wait is its ceiling.
func TestReconnectSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		unavailable := status.Error(codes.Unavailable, "connection refused")
		throttled, err := status.New(codes.ResourceExhausted, "too many watches").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(9 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		initial := &tokenbrokerv1.WatchTokenResponse{
			Event: tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL,
			Token: &tokenbrokerv1.Token{AccessToken: "tok", TokenType: "Bearer", ExpiresAt: timestamppb.New(start.Add(7*time.Second + 40*time.Second))},
		}
		conn := &fakeConn{script: []attempt{
			{err: unavailable}, // @0s, then wait 1s
			{err: unavailable}, // @1s, then 2s
			{err: unavailable}, // @3s, then 4s
			{msgs: []*tokenbrokerv1.WatchTokenResponse{initial}, err: unavailable}, // @7s: a token; reset, then 1s
			{err: status.Error(codes.PermissionDenied, "policy changed")},          // @8s, then max: 10s
			{err: throttled.Err()}, // @18s, then RetryInfo's 9s (backoff: 4s)
			{err: unavailable},     // @27s, then 8s
			{},                     // @35s: stays open
		}}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		src, err := New(ctx, conn, heldSelector(), WithBackoff(time.Second, 10*time.Second),
			func(o *options) { o.randN = func(k int64) int64 { return k - 1 } })
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		defer src.Close()
		if got := time.Since(start); got != 7*time.Second {
			t.Errorf("New returned after %v, want 7s (when the first token came)", got)
		}

		// @12s: PermissionDenied is recorded, but the token (35s left) serves.
		time.Sleep(12*time.Second - time.Since(start))
		if tok, err := src.Token(); err != nil || tok.AccessToken != "tok" {
			t.Errorf("Token @12s: got %v, %v; want the held token", tok, err)
		}
		// @17.5s: less than 30s left; PermissionDenied is the reason.
		time.Sleep(17500*time.Millisecond - time.Since(start))
		if tok, err := src.Token(); tok != nil || !errors.Is(err, ErrNoToken) || status.Code(err) != codes.PermissionDenied {
			t.Errorf("Token @17.5s: got %v, %v; want ErrNoToken wrapping PermissionDenied", tok, err)
		}

		time.Sleep(40*time.Second - time.Since(start))
		synctest.Wait()
		var want []time.Duration
		for _, sec := range []int{0, 1, 3, 7, 8, 18, 27, 35} {
			want = append(want, time.Duration(sec)*time.Second)
		}
		if got := conn.times(start); !slices.Equal(got, want) {
			t.Fatalf("streams opened at %v, want at %v", got, want)
		}
		if err := src.Close(); err != nil {
			t.Errorf("Close: got %v, want nil", err)
		}
		// synctest.Test fails if the Source's goroutine outlived Close.
	})
}

// TestNewRefusedFastOnFakeClock: a non-retryable refusal before the first
// token ends New at once, without waiting for ctx or the backoff.
func TestNewRefusedFastOnFakeClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		conn := &fakeConn{script: []attempt{{err: status.Error(codes.NotFound, "client: unknown client")}}}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		src, err := New(ctx, conn, heldSelector())
		if src != nil || status.Code(err) != codes.NotFound {
			t.Errorf("New: got %v, %v; want no Source, NotFound", src, err)
		}
		if got := time.Since(start); got != 0 {
			t.Errorf("New returned after %v, want at once", got)
		}
		if got := len(conn.times(start)); got != 1 {
			t.Errorf("streams opened: got %d, want 1", got)
		}
	})
}
