//go:build unix

package secret

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadPrivateFileRefusesFIFO: a named pipe is refused at once, not read:
// opening one for reading blocks until a writer comes, so a FIFO in place
// of a secret file must not hang the broker or tokenbrokerctl. The same
// holds for CheckFile (the TLS reload's check).
func TestReadPrivateFileRefusesFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 2)
	go func() {
		_, err := ReadPrivateFile(fifo, 64, nil)
		done <- err
		done <- CheckFile(fifo, nil)
	}()
	for range 2 {
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "is not a regular file (a named pipe)") || !strings.Contains(err.Error(), fifo) {
				t.Errorf("got %v, want the FIFO refused, named", err)
			}
		case <-time.After(30 * time.Second):
			// Not a timing assertion: a reader blocked in open(2) would
			// wait forever; a writer releases it so the test can fail.
			if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				w.Close()
			}
			t.Fatal("reading a FIFO blocked instead of refusing it")
		}
	}
}
