package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRulesAndFilesInOneRound: a configuration that breaks a rule and
// names secret and key files with problems (missing, writable by others)
// gets every problem in one error, each located, even with log settings
// too bad to build the configured logger; a problem that both Validate
// and the file loaders see is reported once, and a key file others can
// read is still warned about (on the fallback logger).
func TestRulesAndFilesInOneRound(t *testing.T) {
	dir := t.TempDir()
	writable := filepath.Join(dir, "hmac.key")
	readable := filepath.Join(dir, "sealing.keys")
	for path, mode := range map[string]os.FileMode{writable: 0o666, readable: 0o644} {
		if err := os.WriteFile(path, []byte("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(`log:
  level: loud
cache:
  refresh_fraction: 1.5
  hmac_key_file: hmac.key
sealing:
  keys_file: sealing.keys
providers:
  - name: p
    token_url: https://idp.example/token
clients:
  - name: c
    provider: p
    client_id: id
    client_secret_file: missing-secret
  - name: both
    provider: p
    client_id: id2
    client_secret_file: missing-too
    client_secret_env: BOTH_SECRET
auth:
  allow_unauthenticated: true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{"-config", path}, func(string) string { return "" }, &stdout, &stderr)
	if err == nil {
		t.Fatal("run = nil error")
	}
	got := err.Error()
	for _, want := range []string{
		path + `:2: log.level: must be debug, info, warn or error, got "loud"`,
		path + `:4: cache.refresh_fraction: must be in (0, 1)`,
		path + `:15: clients[0].client_secret_file: cannot read "` + filepath.Join(dir, "missing-secret") + `": no such file or directory`,
		path + `:5: cache.hmac_key_file: "` + writable + `" has mode 0666`,
		path + `:16: clients[1]: exactly one of client_secret_file and client_secret_env must be set, got both`,
	} {
		if n := strings.Count(got, want); n != 1 {
			t.Errorf("run error =\n%v\nwant it to contain %q once, got %d", got, want, n)
		}
	}
	if !strings.Contains(stderr.String(), "readable by others") || !strings.Contains(stderr.String(), readable) {
		t.Errorf("stderr = %q, want the warning about %s", stderr.String(), readable)
	}
	if strings.Contains(got+stderr.String(), "MDEyMzQ1") {
		t.Errorf("key material in the output:\n%s\n%s", got, stderr.String())
	}
}
