package access

import (
	"crypto/tls"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestServerTLSReloadRefusesWritableKey: a new key file that group or
// others can write is not loaded; the previous material stays until the
// file's mode is fixed.
func TestServerTLSReloadRefusesWritableKey(t *testing.T) {
	t.Parallel()
	serverCA := newTestCA(t, "server CA")
	first := serverCA.issue(t, true, nil, []string{"localhost"})
	second := serverCA.issue(t, true, nil, []string{"localhost"})
	files := &tlsFiles{dir: t.TempDir(), mtime: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	files.writeCert(t, first)
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	var logs testkit.LogBuffer
	r, err := newReloader(files.certFile, files.keyFile, "", tls.NoClientCert, slog.New(slog.NewTextHandler(&logs, nil)), clock.Now)
	if err != nil {
		t.Fatalf("newReloader: %v", err)
	}
	cfg := r.serverConfig()

	files.writeCert(t, second)
	if err := os.Chmod(files.keyFile, 0o666); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if got, _ := handshake(t, cfg, serverCA, nil); got == nil || got.Cmp(first.serial) != 0 {
		t.Errorf("after a writable key file: serial %v, want the first certificate's %v", got, first.serial)
	}
	if l := logs.String(); !strings.Contains(l, "TLS reload refused") || !strings.Contains(l, "0666") || !strings.Contains(l, "chmod 0600") {
		t.Errorf("logs = %s, want the refusal naming the mode and the fix", l)
	}

	if err := os.Chmod(files.keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(files.keyFile, files.mtime.Add(time.Minute), files.mtime.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if got, _ := handshake(t, cfg, serverCA, nil); got == nil || got.Cmp(second.serial) != 0 {
		t.Errorf("after chmod 0600: serial %v, want the second certificate's %v", got, second.serial)
	}
}
