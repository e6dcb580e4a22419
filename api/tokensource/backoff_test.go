package tokensource

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestBackoffBounds: full jitter over [0, min(max, base·2ⁿ)] for retryable
// failures, [max/2, max] for the others; the extremes of the random number
// give the bounds exactly.
func TestBackoffBounds(t *testing.T) {
	const base, max = time.Second, time.Minute
	lowest := func(int64) int64 { return 0 }
	highest := func(k int64) int64 { return k - 1 }
	for _, tc := range []struct {
		n         int
		retryable bool
		lo, hi    time.Duration
	}{
		{0, true, 0, time.Second},
		{1, true, 0, 2 * time.Second},
		{2, true, 0, 4 * time.Second},
		{5, true, 0, 32 * time.Second},
		{6, true, 0, time.Minute},
		{7, true, 0, time.Minute},
		{1000, true, 0, time.Minute},
		{0, false, 30 * time.Second, time.Minute},
		{1000, false, 30 * time.Second, time.Minute},
	} {
		if got := backoff(base, max, tc.n, tc.retryable, lowest); got != tc.lo {
			t.Errorf("n=%d retryable=%v, lowest draw: got %v, want %v", tc.n, tc.retryable, got, tc.lo)
		}
		if got := backoff(base, max, tc.n, tc.retryable, highest); got != tc.hi {
			t.Errorf("n=%d retryable=%v, highest draw: got %v, want %v", tc.n, tc.retryable, got, tc.hi)
		}
		for range 1000 {
			if got := backoff(base, max, tc.n, tc.retryable, rand.Int64N); got < tc.lo || got > tc.hi {
				t.Fatalf("n=%d retryable=%v: got %v, want in [%v, %v]", tc.n, tc.retryable, got, tc.lo, tc.hi)
			}
		}
	}
}

// TestBackoffExtremes: huge limits neither overflow nor panic.
func TestBackoffExtremes(t *testing.T) {
	for _, tc := range []struct {
		base, max time.Duration
		n         int
	}{
		{1, math.MaxInt64, 10_000},
		{math.MaxInt64, math.MaxInt64, 3},
		{time.Hour, math.MaxInt64 - 1, 100},
		{1, 1, 5},
	} {
		for _, retry := range []bool{true, false} {
			got := backoff(tc.base, tc.max, tc.n, retry, rand.Int64N)
			if got < 0 || got > tc.max {
				t.Errorf("base %d max %d n %d retryable %v: got %d, want in [0, max]", tc.base, tc.max, tc.n, retry, got)
			}
		}
	}
}

// TestRetryable: the codes that say the request itself is refused are not
// retryable; the ones that say the broker or the network failed are.
func TestRetryable(t *testing.T) {
	for code, want := range map[codes.Code]bool{
		codes.Unavailable:        true,
		codes.Canceled:           true,
		codes.DeadlineExceeded:   true,
		codes.Internal:           true,
		codes.Unknown:            true,
		codes.ResourceExhausted:  true,
		codes.Aborted:            true,
		codes.InvalidArgument:    false,
		codes.NotFound:           false,
		codes.PermissionDenied:   false,
		codes.Unauthenticated:    false,
		codes.FailedPrecondition: false,
		codes.Unimplemented:      false,
	} {
		if got := retryable(code); got != want {
			t.Errorf("retryable(%v): got %v, want %v", code, got, want)
		}
	}
}

// TestRetryDelay: a status's RetryInfo is read; anything else gives 0.
func TestRetryDelay(t *testing.T) {
	withInfo, err := status.New(codes.ResourceExhausted, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	negative, err := status.New(codes.ResourceExhausted, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(-time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want time.Duration
	}{
		{"retry info", withInfo.Err(), 3 * time.Second},
		{"negative retry info", negative.Err(), 0},
		{"plain status", status.Error(codes.Unavailable, "down"), 0},
		{"not a status", errors.New("plain"), 0},
		{"nil", nil, 0},
	} {
		if got := retryDelay(tc.err); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
