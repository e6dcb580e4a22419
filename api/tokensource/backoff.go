package tokensource

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ibackoff "github.com/tokenbroker/tokenbroker/internal/backoff"
)

// retryable reports whether a stream that ended with code may succeed when
// opened again soon. The other codes say the request itself is refused
// (a bad or unknown selector, a caller without the right, credentials the
// token endpoint rejects, a broker without WatchToken); they are retried
// too, in case an operator fixes the cause, but only at the maximum
// backoff.
func retryable(code codes.Code) bool {
	switch code {
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.Unimplemented:
		return false
	}
	return true
}

// backoff returns how long to wait before opening the stream again after
// the n-th consecutive failure (n >= 0). A retryable failure waits a
// uniformly random time in [0, min(max, base·2ⁿ)] (full jitter, the
// broker's one backoff policy, internal/backoff); a non-retryable one waits
// in [max/2, max], whatever n. randN(k) must return a uniformly random
// number in [0, k), for k > 0. base must be > 0 and max >= base.
func backoff(base, max time.Duration, n int, isRetryable bool, randN func(int64) int64) time.Duration {
	p := ibackoff.Policy{Base: base, Max: max, Rand: randN}
	if !isRetryable {
		half := max / 2
		return half + p.Jitter(max-half)
	}
	return p.Delay(n, 0)
}

// retryDelay returns the delay a status's RetryInfo asks for, or 0.
func retryDelay(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return max(ri.GetRetryDelay().AsDuration(), 0)
		}
	}
	return 0
}
