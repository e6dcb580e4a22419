package config

import (
	"math"
	"strings"
	"testing"
)

// TestPassthroughShares: the pass-through budget shares default to half of
// the provider's budget and a quarter of that per caller and per client
// id, and each must be a fraction in (0, 1] (issue 10, point 2).
func TestPassthroughShares(t *testing.T) {
	p := DefaultProvider()
	if p.PassthroughShare != 0.5 || p.PassthroughCallerShare != 0.25 || p.PassthroughClientShare != 0.25 {
		t.Errorf("DefaultProvider shares: got %v, %v, %v, want 0.5, 0.25, 0.25", p.PassthroughShare, p.PassthroughCallerShare, p.PassthroughClientShare)
	}
	for _, bad := range []float64{0, -0.5, 1.01, math.NaN(), math.Inf(1)} {
		for _, key := range []string{"passthrough_share", "passthrough_caller_share", "passthrough_client_share"} {
			c := validConfig()
			switch key {
			case "passthrough_share":
				c.Providers[1].PassthroughShare = bad
			case "passthrough_caller_share":
				c.Providers[1].PassthroughCallerShare = bad
			case "passthrough_client_share":
				c.Providers[1].PassthroughClientShare = bad
			}
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), "providers[1]."+key+": must be a fraction > 0 and <= 1") {
				t.Errorf("%s = %v: Validate() = %v, want an error naming providers[1].%s", key, bad, err, key)
			}
		}
	}
	c := validConfig()
	c.Providers[0].PassthroughShare, c.Providers[0].PassthroughCallerShare, c.Providers[0].PassthroughClientShare = 1, 1, 0.01
	if err := c.Validate(); err != nil {
		t.Errorf("shares 1, 1, 0.01: Validate() = %v, want nil", err)
	}
}
