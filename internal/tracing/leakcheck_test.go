package tracing

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }
