// Package testkit holds what the tests of several packages share: a log
// sink safe for concurrent use (LogBuffer, with TextLogger and JSONLogger
// writing every level into it) and the goroutine-leak check
// (VerifyTestMain for a package's TestMain, VerifyNone for one test), built
// on go.uber.org/goleak. It is imported by _test.go files only.
package testkit

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leakPatience bounds how long the leak checks wait for goroutines that
// are already ending (the reader of a closed connection, the handlers of a
// stopped server) before calling them leaked. goleak.Find alone gives up
// after about half a second, which a loaded machine running the race
// detector can exceed; a real leak fails all the same, only later.
const leakPatience = 10 * time.Second

// VerifyTestMain runs the package's tests and, when they pass, fails the
// run if a goroutine outlives them. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines outlived the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// VerifyNone fails t if goroutines other than those opts ignore are
// running; pass goleak.IgnoreCurrent(), taken before the code under test
// started, to check only what it started.
func VerifyNone(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	if err := findLeaks(opts...); err != nil {
		t.Error(err)
	}
}

// findLeaks returns goleak's report of the unexpected goroutines still
// running after leakPatience, or nil as soon as there are none.
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(leakPatience)
	for {
		err := goleak.Find(opts...) // retries for about half a second itself
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}
