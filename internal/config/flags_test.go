package config

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// env returns a getenv reading m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestParsePrecedence checks defaults < file < environment < flags, one
// layer at a time, for every setting that more than one layer can set.
func TestParsePrecedence(t *testing.T) {
	file := writeFile(t, "c.yaml", `
listen: "127.0.0.1:1001"
passthrough: true
log:
  level: warn
  format: text
cache:
  max_cost: 1MiB
`)
	other := writeFile(t, "other.yaml", "listen: \"127.0.0.1:1002\"\n")

	type result struct {
		listen, level, format string
		passthrough, dev      bool
		maxCost               ByteSize
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want result
	}{
		{
			name: "defaults",
			want: result{"127.0.0.1:7443", "info", "json", false, false, 64 * MiB},
		},
		{
			name: "file from flag",
			args: []string{"-config", file},
			want: result{"127.0.0.1:1001", "warn", "text", true, false, MiB},
		},
		{
			name: "file from environment",
			env:  map[string]string{EnvConfig: file},
			want: result{"127.0.0.1:1001", "warn", "text", true, false, MiB},
		},
		{
			name: "-config beats TOKENBROKER_CONFIG",
			args: []string{"-config", file},
			env:  map[string]string{EnvConfig: other},
			want: result{"127.0.0.1:1001", "warn", "text", true, false, MiB},
		},
		{
			name: "environment beats file",
			args: []string{"-config", file},
			env:  map[string]string{EnvListen: ":2001", EnvLogLevel: "debug", EnvLogFormat: "json"},
			want: result{":2001", "debug", "json", true, false, MiB},
		},
		{
			name: "environment beats defaults",
			env:  map[string]string{EnvListen: ":2001", EnvLogLevel: "error"},
			want: result{":2001", "error", "json", false, false, 64 * MiB},
		},
		{
			name: "empty environment variables are ignored",
			args: []string{"-config", file},
			env:  map[string]string{EnvListen: "", EnvLogLevel: ""},
			want: result{"127.0.0.1:1001", "warn", "text", true, false, MiB},
		},
		{
			name: "flags beat environment and file",
			args: []string{"-config", file, "-listen", ":3001", "-log-level", "error", "-log-format", "json", "-passthrough=false", "-dev"},
			env:  map[string]string{EnvListen: ":2001", EnvLogLevel: "debug", EnvLogFormat: "text"},
			want: result{":3001", "error", "json", false, true, MiB},
		},
		{
			name: "flags beat defaults",
			args: []string{"--listen=:3002", "-passthrough"},
			want: result{":3002", "info", "json", true, false, 64 * MiB},
		},
		{
			name: "a flag set to its default value still wins",
			args: []string{"-config", file, "-log-level", "info"},
			want: result{"127.0.0.1:1001", "info", "text", true, false, MiB},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(tt.args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.args, err)
			}
			got := result{c.Listen, c.Log.Level, c.Log.Format, c.Passthrough, c.Dev, c.Cache.MaxCost}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseNilGetenv(t *testing.T) {
	c, err := Parse(nil, nil)
	if err != nil {
		t.Fatalf("Parse(nil, nil) = %v", err)
	}
	if c.Listen != Default().Listen {
		t.Fatalf("Listen = %q, want %q", c.Listen, Default().Listen)
	}
}

func TestParseDoesNotValidate(t *testing.T) {
	c, err := parse([]string{"-log-level", "loud"}, nil, io.Discard)
	if err != nil {
		t.Fatalf("Parse = %v, want nil (validation is Validate's job)", err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "log.level") {
		t.Fatalf("Validate() = %v, want a log.level problem", err)
	}
}

func TestParseHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		var out bytes.Buffer
		_, err := parse([]string{arg}, nil, &out)
		if err != flag.ErrHelp {
			t.Errorf("Parse(%q) error = %v, want flag.ErrHelp", arg, err)
		}
		for _, w := range []string{"-config", "-listen", "-log-level", "-log-format", "-passthrough", "-dev", EnvConfig, EnvListen, EnvLogLevel} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("usage for %q does not mention %s:\n%s", arg, w, out.String())
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	missing := t.TempDir() + "/missing.yaml"
	bad := writeFile(t, "bad.yaml", "listen: ':1'\nbogus: 1\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"-verbose"}, nil, "flags: flag provided but not defined: -verbose"},
		{"missing value", []string{"-listen"}, nil, "flags: flag needs an argument: -listen"},
		{"bad bool", []string{"-passthrough=maybe"}, nil, "flags: invalid boolean value"},
		{"positional argument", []string{"serve"}, nil, `flags: unexpected argument "serve"`},
		{"missing file from flag", []string{"-config", missing}, nil, missing},
		{"missing file from environment", nil, map[string]string{EnvConfig: missing}, missing},
		{"bad file", []string{"-config", bad}, nil, `bad.yaml:2: bogus: unknown key "bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parse(tt.args, env(tt.env), &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse(%q) error = %v, want one containing %q", tt.args, err, tt.want)
			}
			if errors.Is(err, flag.ErrHelp) {
				t.Fatalf("Parse(%q) error = %v, want it not to be flag.ErrHelp", tt.args, err)
			}
			if out.Len() != 0 {
				t.Errorf("Parse(%q) wrote %q, want nothing (errors are returned)", tt.args, out.String())
			}
		})
	}
}

// TestDurationFlagHint: a duration flag without a unit gets the hint a
// duration in the file gets.
func TestDurationFlagHint(t *testing.T) {
	_, err := Parse([]string{"-dev", "-dev-lifetime", "10"}, nil)
	if err == nil || !strings.Contains(err.Error(), "-dev-lifetime") || !strings.Contains(err.Error(), `write e.g. "10s"`) {
		t.Errorf("Parse(-dev-lifetime 10) error = %v, want one naming the flag and hinting \"10s\"", err)
	}
	c, err := Parse([]string{"-dev-lifetime", "90s"}, nil)
	if err != nil || c.DevLifetime != Duration(90*time.Second) {
		t.Errorf("Parse(-dev-lifetime 90s) = %v, %v; want 1m30s", c.DevLifetime, err)
	}
}

// TestUsageAndReadmeListEveryFlagAndVariable: -h lists every flag and
// every environment variable Parse reads, and the README's flag table
// lists each of them too.
func TestUsageAndReadmeListEveryFlagAndVariable(t *testing.T) {
	var out bytes.Buffer
	if _, err := parse([]string{"-h"}, nil, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("parse(-h) = %v", err)
	}
	usage := out.String()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	table := string(readme)
	if i := strings.Index(table, "| flag | environment | key |"); i >= 0 {
		table = table[i:]
		if j := strings.Index(table, "\n\n"); j >= 0 {
			table = table[:j]
		}
	} else {
		t.Fatal("README.md has no flag table")
	}
	for _, f := range []string{"config", "listen", "http-listen", "log-level", "log-format", "passthrough", "dev", "dev-lifetime", "dev-issuer"} {
		if !strings.Contains(usage, "  -"+f+" ") && !strings.Contains(usage, "  -"+f+"\n") {
			t.Errorf("-h does not list -%s:\n%s", f, usage)
		}
		if !strings.Contains(table, "`-"+f+"`") && !strings.Contains(table, "`-"+f+" ") {
			t.Errorf("README flag table does not list -%s", f)
		}
	}
	for _, v := range []string{EnvConfig, EnvListen, EnvHTTPListen, EnvLogLevel, EnvLogFormat, EnvDevSecret} {
		if !strings.Contains(usage, "  "+v+"\t") {
			t.Errorf("-h's environment list does not name %s:\n%s", v, usage)
		}
		if !strings.Contains(table, "`"+v+"`") {
			t.Errorf("README flag table does not name %s", v)
		}
	}
}

// TestLogAccessPrecedence: log.access is "failures" by default and set,
// in rising precedence, by the file, TOKENBROKER_LOG_ACCESS and
// -log-access; Validate names the key and the rule for another value.
func TestLogAccessPrecedence(t *testing.T) {
	file := writeFile(t, "c.yaml", "log:\n  access: all\n")
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"default", nil, nil, "failures"},
		{"file", []string{"-config", file}, nil, "all"},
		{"environment beats file", []string{"-config", file}, map[string]string{EnvLogAccess: "failures"}, "failures"},
		{"flag beats environment", []string{"-log-access", "all"}, map[string]string{EnvLogAccess: "failures"}, "all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(tc.args, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.Log.Access != tc.want {
				t.Errorf("log.access: got %q, want %q", c.Log.Access, tc.want)
			}
		})
	}
	c := Default()
	c.Log.Access = "some"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `log.access: must be failures or all, got "some"`) {
		t.Errorf("Validate: got %v, want the log.access rule", err)
	}
}
