package secret

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckFileMode(t *testing.T) {
	for _, tc := range []struct {
		mode    fs.FileMode
		warn    bool
		refused bool
	}{
		{0o600, false, false},
		{0o400, false, false},
		{0o640, false, false},
		{0o440, false, false},
		{0o644, true, false},
		{0o604, true, false},
		{0o660, false, true},
		{0o602, false, true},
		{0o666, false, true},
		{0o777, false, true},
	} {
		warn, err := CheckFileMode("k.pem", tc.mode)
		var me *FileModeError
		if got := errors.As(err, &me); got != tc.refused || warn != tc.warn {
			t.Errorf("mode %04o: got warn %v, err %v; want warn %v, refused %v", tc.mode, warn, err, tc.warn, tc.refused)
		}
		if me != nil && (!filepath.IsAbs(me.Path) || !strings.Contains(me.Error(), "chmod 0600")) {
			t.Errorf("mode %04o: got %q, want the absolute path and the fix", tc.mode, me.Error())
		}
	}
}

func TestCheckFileLogsReadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("hunter2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := CheckFile(path, slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
		t.Fatalf("got %v, want a warning only", err)
	}
	if out := buf.String(); !strings.Contains(out, "mode=0644") || !strings.Contains(out, path) || strings.Contains(out, "hunter2") {
		t.Errorf("got log %q, want the file and its mode, never its content", out)
	}
	if err := CheckFile(filepath.Join(t.TempDir(), "missing"), nil); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("got %v, want a missing file named", err)
	}
}
