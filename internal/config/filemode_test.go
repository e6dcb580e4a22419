package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretFileModes: a secret, key or TLS private key file that group or
// others can write is refused, naming the file, its mode and the fix; one
// others can read is loaded with a warning naming the file and its mode;
// one only its owner (and group) can read is loaded silently.
func TestSecretFileModes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	const hmac = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes
	tests := []struct {
		name    string
		mode    os.FileMode
		refused bool
		warned  bool
	}{
		{"private", 0o600, false, false},
		{"read-only", 0o400, false, false},
		{"readable by others", 0o644, false, true},
		{"readable by group", 0o640, false, false},
		{"fsGroup style", 0o440, false, false},
		{"writable by group", 0o620, true, false},
		{"writable by others", 0o602, true, false},
		{"open to all", 0o666, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.name = strings.ReplaceAll(tt.name, " ", "-")
			secretFile := write("secret-"+tt.name, "s3cr3t-value", tt.mode)
			keysFile := write("keys-"+tt.name, "k1:"+hmac+"\n", tt.mode)
			hmacFile := write("hmac-"+tt.name, hmac, tt.mode)
			passFile := write("pass-"+tt.name, "redis-pass", tt.mode)
			tlsKey := write("tls-"+tt.name+".key", "not parsed here", tt.mode)
			tlsCert := write("tls-"+tt.name+".crt", "not parsed here", 0o644) // certificates are public
			c := Config{
				Clients: []Client{{Name: "a", ClientSecretFile: secretFile}},
				Sealing: Sealing{KeysFile: keysFile},
				Cache:   Cache{HMACKeyFile: hmacFile},
				TLS:     TLS{CertFile: tlsCert, KeyFile: tlsKey},
				Shared:  Shared{Redis: Redis{Addrs: []string{"127.0.0.1:6379"}, PasswordFile: passFile}},
			}
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			errS := c.LoadSecrets(nil, logger)
			_, _, errK := c.LoadKeys(nil, logger)
			files := map[string]string{
				"clients[0].client_secret_file": secretFile, "shared.redis.password_file": passFile,
				"sealing.keys_file": keysFile, "cache.hmac_key_file": hmacFile, "tls.key_file": tlsKey,
			}
			for key, file := range files {
				for _, err := range []error{errS, errK} {
					if err != nil && strings.Contains(err.Error(), key+":") {
						if !tt.refused {
							t.Errorf("%s refused: %v", key, err)
						}
					}
				}
				all := ""
				if errS != nil {
					all += errS.Error()
				}
				if errK != nil {
					all += errK.Error()
				}
				want := key + `: "` + file + `" has mode ` + octal(tt.mode) + ": group or others can write it"
				if tt.refused && (!strings.Contains(all, want) || !strings.Contains(all, "chmod 0600 "+file)) {
					t.Errorf("errors =\n%s\nwant one starting %q with the fix", all, want)
				}
				if tt.warned != strings.Contains(logs.String(), "file="+file+" mode="+octal(tt.mode)) {
					t.Errorf("warning for %s: got logs\n%s\nwant a warning: %v", file, logs.String(), tt.warned)
				}
			}
			if strings.Contains(logs.String(), "tls-"+tt.name+".crt") {
				t.Errorf("a certificate file was warned about: %s", logs.String())
			}
			for _, s := range []string{"s3cr3t-value", "redis-pass", hmac} {
				if strings.Contains(logs.String(), s) || (errS != nil && strings.Contains(errS.Error(), s)) || (errK != nil && strings.Contains(errK.Error(), s)) {
					t.Errorf("a secret appears in a log or an error")
				}
			}
		})
	}
}

// octal formats a mode's permission bits as "0644".
func octal(m os.FileMode) string { return fmt.Sprintf("%04o", uint32(m.Perm())) }
