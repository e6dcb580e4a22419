//go:build unix

package config

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestLoadSecretsFIFO checks that a named pipe is refused instead of read:
// reading one would block until a writer appears.
func TestLoadSecretsFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	c := Config{Clients: []Client{{ClientSecretFile: fifo}}}
	err := c.LoadSecrets(nil, nil)
	if want := "clients[0].client_secret_file: \"" + fifo + "\" is not a regular file"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("LoadSecrets() = %v, want an error containing %q", err, want)
	}
}

// TestLoadKeysFIFO checks that LoadKeys refuses a named pipe too.
func TestLoadKeysFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, c := range []Config{{Sealing: Sealing{KeysFile: fifo}}, {Cache: Cache{HMACKeyFile: fifo}}} {
		_, _, err := c.LoadKeys(nil, nil)
		if want := "\"" + fifo + "\" is not a regular file"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadKeys() = %v, want an error containing %q", err, want)
		}
	}
}
