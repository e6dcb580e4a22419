package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadFractionForInteger: a fraction for an integer key is an error
// naming the file, the line and the key, not a silent truncation; a whole
// number written as a float is accepted.
func TestLoadFractionForInteger(t *testing.T) {
	content := `providers:
  - name: a
    token_url: https://x.example/token
    burst: 10.7
server:
  max_concurrent_streams: 1.5
  watch_open_burst: 100.0
shared:
  redis:
    db: 0.5
`
	path := writeFile(t, "c.yaml", content)
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load = nil error, want one per fraction")
	}
	for _, want := range []string{
		path + ":4: providers[0].burst: must be an integer, got 10.7",
		path + ":6: server.max_concurrent_streams: must be an integer, got 1.5",
		path + ":10: shared.redis.db: must be an integer, got 0.5",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Load error =\n%v\nwant it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "watch_open_burst") {
		t.Errorf("Load error = %v, want 100.0 accepted for an integer", err)
	}
}

// TestLoadSyntaxErrorLine: a YAML syntax error (an indentation mistake) is
// reported at the line where it is, not where its enclosing block starts.
func TestLoadSyntaxErrorLine(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"dedented key in a list item", "listen: 127.0.0.1:1\nproviders:\n  - name: a\n    token_url: https://x.example\n   burst: 3\n", ":5: "},
		{"dedented key in a mapping", "listen: 127.0.0.1:1\ncache:\n  max_cost: 1MiB\n refresh_fraction: 0.5\n", ":4: "},
		{"indented key", "listen: 127.0.0.1:1\ncache:\n  max_cost: 1MiB\n    refresh_fraction: 0.5\n", ":4: "},
		{"unclosed flow list", "listen: 127.0.0.1:1\n\ncache: [1, 2\nlog: {}\n", ":3: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "c.yaml", tt.content)
			_, err := Load(path)
			if err == nil || !strings.HasPrefix(err.Error(), path+tt.want) {
				t.Errorf("Load error = %v, want it to start with %q", err, path+tt.want)
			}
		})
	}
}

// TestLoadResolvesRelativePathsAbsolute: with a relative configuration
// path, a relative secret path is resolved to an absolute one, and errors
// show it so.
func TestLoadResolvesRelativePathsAbsolute(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "c.yaml"), []byte(`clients:
  - name: a
    provider: p
    client_id: id
    client_secret_file: secrets/a
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	c, err := Load("c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "secrets/a")
	if got := c.Clients[0].ClientSecretFile; got != want {
		t.Errorf("client_secret_file = %q, want %q", got, want)
	}
	// A relative path set in code is shown resolved too.
	c.Clients[0].ClientSecretFile = "other/b"
	err = c.LoadSecrets(nil, nil)
	if want := filepath.Join(dir, "other/b"); err == nil || !strings.Contains(err.Error(), `"`+want+`"`) {
		t.Errorf("LoadSecrets error = %v, want it to name %q", err, want)
	}
}

// TestValidateLocatesEveryProblem: the file's unreadable values and every
// rule violation come at once, each with the file and line, the flag or
// the environment variable it came from; a value that could not be read is
// not reported a second time by Validate.
func TestValidateLocatesEveryProblem(t *testing.T) {
	path := writeFile(t, "c.yaml", `listen: 127.0.0.1:7443
cache:
  refresh_fraction: 2
  fetch_timeout: soon
providers:
  - name: Bad Name
    token_url: https://x.example/token
    burst: 0.5
clients:
  - name: a
    provider: nope
    client_id: id
auth:
  allow_unauthenticated: true
log:
  level: loud
`)
	cfg, src, err := ParseSources([]string{"-config", path, "-log-format", "xml"}, env(map[string]string{EnvListen: "nope"}))
	if err != nil {
		t.Fatalf("ParseSources = %v", err)
	}
	var got []string
	for _, e := range flatten(errors.Join(src.Err(), src.Locate(cfg.Validate()))) {
		got = append(got, e.Error())
	}
	want := []string{
		path + `:4: cache.fetch_timeout: invalid duration "soon"`,
		path + ":8: providers[0].burst: must be an integer, got 0.5",
		"env TOKENBROKER_LISTEN: listen: must be host:port",
		path + ":3: cache.refresh_fraction: must be in (0, 1), got 2",
		path + `:6: providers[0].name: must be 1-63 characters`,
		path + `:11: clients[0].provider: "nope" is not a configured provider`,
		path + ":10: clients[0]: exactly one of client_secret_file and client_secret_env must be set, got neither",
		path + `:16: log.level: must be debug, info, warn or error, got "loud"`,
		`flag -log-format: log.format: must be json or text, got "xml"`,
	}
	if len(got) != len(want) {
		t.Fatalf("problems =\n%s\nwant %d of them", strings.Join(got, "\n"), len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want it to start with %q", i, got[i], want[i])
		}
	}

	// Parse still stops at the file's problems.
	if _, err := Parse([]string{"-config", path}, nil); err == nil || !strings.Contains(err.Error(), "providers[0].burst") {
		t.Errorf("Parse error = %v, want the file's problems", err)
	}
}

// TestLocateKeepsOtherErrors: Locate passes errors that are not
// FieldErrors through, and a nil Sources changes nothing.
func TestLocateKeepsOtherErrors(t *testing.T) {
	plain := errors.New("something else")
	fe := fieldErr("listen", "bad")
	var none *Sources
	if got := none.Locate(fe); got != fe {
		t.Errorf("nil Sources: Locate = %v, want the error itself", got)
	}
	src := newSources("f.yaml")
	src.lines["listen"] = 3
	got := problems(src.Locate(errors.Join(plain, fe)))
	if want := []string{"something else", "f.yaml:3: listen: bad"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Locate = %q, want %q", got, want)
	}
	var target *FieldError
	if !errors.As(src.Locate(fe), &target) || target.Key != "listen" {
		t.Errorf("Locate result does not unwrap to the FieldError")
	}
}
