package testkit

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { VerifyTestMain(m) }

// TestVerifyNone: a goroutine started after the snapshot and still
// running is reported; once it ends, nothing is.
func TestVerifyNone(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		<-stop
	}()
	if err := goleak.Find(ignore); err == nil {
		t.Error("goleak.Find: got nil with a goroutine running, want a report")
	}
	ft := &errorRecorder{TB: t}
	close(stop)
	<-stopped
	VerifyNone(ft, ignore)
	if ft.failed {
		t.Error("VerifyNone failed after the goroutine ended")
	}
}

// errorRecorder records Error instead of failing the test.
type errorRecorder struct {
	testing.TB
	failed bool
}

func (e *errorRecorder) Error(...any) { e.failed = true }
func (e *errorRecorder) Helper()      {}
