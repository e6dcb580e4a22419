package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name   string
		client Client
		env    map[string]string
		want   string
	}{
		{"file", Client{ClientSecretFile: write("plain", "s3cr3t-plain")}, nil, "s3cr3t-plain"},
		{"file with newline", Client{ClientSecretFile: write("nl", "s3cr3t-nl\n")}, nil, "s3cr3t-nl"},
		{"file with CRLF", Client{ClientSecretFile: write("crlf", "s3cr3t-crlf\r\n")}, nil, "s3cr3t-crlf"},
		{"only one newline is dropped", Client{ClientSecretFile: write("nl2", "s3cr3t-nl2\n\n")}, nil, "s3cr3t-nl2\n"},
		{"inner white space is kept", Client{ClientSecretFile: write("ws", " a b \n")}, nil, " a b "},
		{"file of 512 bytes", Client{ClientSecretFile: write("max", strings.Repeat("x", 512))}, nil, strings.Repeat("x", 512)},
		{"512 bytes and a newline", Client{ClientSecretFile: write("maxnl", strings.Repeat("y", 511)+"\n")}, nil, strings.Repeat("y", 511)},
		{"environment", Client{ClientSecretEnv: "SECRET_A"}, map[string]string{"SECRET_A": "s3cr3t-env"}, "s3cr3t-env"},
		{"environment keeps a newline", Client{ClientSecretEnv: "SECRET_B"}, map[string]string{"SECRET_B": "s3cr3t\n"}, "s3cr3t\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Clients: []Client{tt.client}}
			if err := c.LoadSecrets(env(tt.env), nil); err != nil {
				t.Fatalf("LoadSecrets() = %v, want nil", err)
			}
			if got := c.Clients[0].Secret.Reveal(); got != tt.want {
				t.Fatalf("secret = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLoadSecretsErrors(t *testing.T) {
	dir := t.TempDir()
	const secretText = "TOPSECRETVALUE"
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unreadable := write("unreadable", secretText)
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	canReadUnreadable := false
	if f, err := os.Open(unreadable); err == nil { // running as root
		canReadUnreadable = true
		_ = f.Close()
	}

	tests := []struct {
		name   string
		client Client
		env    map[string]string
		want   string
		skip   bool
	}{
		{"missing file", Client{ClientSecretFile: filepath.Join(dir, "nope")}, nil, `clients[0].client_secret_file: cannot read "` + filepath.Join(dir, "nope") + `": no such file or directory`, false},
		{"empty file", Client{ClientSecretFile: write("empty", "")}, nil, "clients[0].client_secret_file: " + fmt.Sprintf("%q", filepath.Join(dir, "empty")) + " is empty", false},
		{"only a newline", Client{ClientSecretFile: write("newline", "\n")}, nil, "is empty", false},
		{"too large", Client{ClientSecretFile: write("big", strings.Repeat(secretText, 40))}, nil, "clients[0].client_secret_file: " + fmt.Sprintf("%q", filepath.Join(dir, "big")) + " is larger than 512 bytes", false},
		{"513 bytes", Client{ClientSecretFile: write("513", strings.Repeat("z", 513))}, nil, "is larger than 512 bytes", false},
		{"directory", Client{ClientSecretFile: dir}, nil, "clients[0].client_secret_file: " + fmt.Sprintf("%q", dir) + " is not a regular file", false},
		{"unreadable", Client{ClientSecretFile: unreadable}, nil, "permission denied", canReadUnreadable},
		{"unset variable", Client{ClientSecretEnv: "NOT_SET"}, nil, `clients[0].client_secret_env: environment variable "NOT_SET" is not set or is empty`, false},
		{"empty variable", Client{ClientSecretEnv: "EMPTY"}, map[string]string{"EMPTY": ""}, `clients[0].client_secret_env: environment variable "EMPTY" is not set or is empty`, false},
		{"neither", Client{}, nil, "clients[0]: exactly one of client_secret_file and client_secret_env must be set, got neither", false},
		{"both", Client{ClientSecretFile: write("both", secretText), ClientSecretEnv: "BOTH"}, map[string]string{"BOTH": secretText}, "clients[0]: exactly one of client_secret_file and client_secret_env must be set, got both", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.skip {
				t.Skip("permissions are not enforced for this user")
			}
			c := Config{Clients: []Client{tt.client}}
			err := c.LoadSecrets(env(tt.env), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadSecrets() = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secretText) || strings.Contains(err.Error(), "TOPSECRET") {
				t.Fatalf("error %q contains the secret", err)
			}
			if got := c.Clients[0].Secret.Reveal(); got != "" {
				t.Fatalf("secret = %q after an error, want it unset", got)
			}
		})
	}
}

// TestLoadSecretsAll checks that every client is read and every problem is
// reported, each under its own index.
func TestLoadSecretsAll(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("s3cr3t-good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{Clients: []Client{
		{Name: "a", ClientSecretFile: good},
		{Name: "b", ClientSecretEnv: "MISSING"},
		{Name: "c", ClientSecretEnv: "PRESENT"},
		{Name: "d", ClientSecretFile: filepath.Join(dir, "missing")},
	}}
	err := c.LoadSecrets(env(map[string]string{"PRESENT": "s3cr3t-env"}), nil)
	got := problems(err)
	if len(got) != 2 || !strings.HasPrefix(got[0], "clients[1].client_secret_env: ") || !strings.HasPrefix(got[1], "clients[3].client_secret_file: ") {
		t.Fatalf("LoadSecrets() problems = %q, want clients[1].client_secret_env and clients[3].client_secret_file", got)
	}
	for i, want := range []string{"s3cr3t-good", "", "s3cr3t-env", ""} {
		if got := c.Clients[i].Secret.Reveal(); got != want {
			t.Errorf("clients[%d] secret = %q, want %q", i, got, want)
		}
	}
	// The loaded config prints without its secrets.
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "s3cr3t") {
		t.Errorf("formatted config contains a secret: %s", s)
	}
}
