package tokensource

import (
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// TestDefaultMinRemainingMatchesBroker: the Source's default
// WithMinRemaining is the broker's default cache.min_remaining, whose one
// home is config.Default (a Source with more would count the tokens a
// failing broker still pushes as none).
func TestDefaultMinRemainingMatchesBroker(t *testing.T) {
	if got, want := DefaultMinRemaining, time.Duration(config.Default().Cache.MinRemaining); got != want {
		t.Errorf("DefaultMinRemaining: got %v, want config.Default().Cache.MinRemaining %v", got, want)
	}
}
