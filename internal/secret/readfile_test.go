package secret

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadPrivateFile: the one reader of secret and key files reads a
// regular file of at most limit bytes whose opened file's mode passes
// CheckFileMode, warns about one others can read, and refuses everything
// else with an error naming the absolute path, never the content.
func TestReadPrivateFile(t *testing.T) {
	const content = "hunter2-s3cret\n"
	dir := t.TempDir()
	write := func(name string, mode os.FileMode, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		path    string
		limit   int64
		wantErr string // "" for success
		warn    bool
	}{
		{name: "0600", path: write("owner", 0o600, content), limit: 64},
		{name: "0400", path: write("readonly", 0o400, content), limit: 64},
		{name: "0640", path: write("group", 0o640, content), limit: 64},
		{name: "exactly the limit", path: write("exact", 0o600, content), limit: int64(len(content))},
		{name: "0644 warns", path: write("world", 0o644, content), limit: 64, warn: true},
		{name: "0660 refused", path: write("groupw", 0o660, content), limit: 64, wantErr: "has mode 0660"},
		{name: "0602 refused", path: write("otherw", 0o602, content), limit: 64, wantErr: "has mode 0602"},
		{name: "too large", path: write("large", 0o600, content), limit: int64(len(content)) - 1, wantErr: "is larger than 14 bytes"},
		{name: "missing", path: filepath.Join(dir, "missing"), limit: 64, wantErr: "no such file"},
		{name: "directory", path: dir, limit: 64, wantErr: "is not a regular file (a directory)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			data, err := ReadPrivateFile(tc.path, tc.limit, slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.wantErr == "" {
				if err != nil || string(data) != content {
					t.Fatalf("got %q, %v; want the content, nil", data, err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", data, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.path) || !filepath.IsAbs(tc.path) {
					t.Errorf("error %q does not name the absolute path %s", err, tc.path)
				}
				if data != nil || strings.Contains(err.Error(), "hunter2") {
					t.Errorf("got %q, %v; want no data and no content in the error", data, err)
				}
			}
			if got := strings.Contains(logs.String(), "readable by others"); got != tc.warn {
				t.Errorf("got log %q, want a warning: %v", logs.String(), tc.warn)
			}
			if strings.Contains(logs.String(), "hunter2") {
				t.Errorf("log %q quotes the content", logs.String())
			}
		})
	}

	t.Run("relative path named absolute", func(t *testing.T) {
		t.Chdir(dir)
		write("rel", 0o666, content)
		_, err := ReadPrivateFile("rel", 64, nil)
		var me *FileModeError
		if !errors.As(err, &me) || me.Path != filepath.Join(dir, "rel") {
			t.Errorf("got %v, want a *FileModeError for %s", err, filepath.Join(dir, "rel"))
		}
	})
}
