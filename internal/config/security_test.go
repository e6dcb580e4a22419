package config

import (
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
)

// TestLoadSecuritySections loads every key of tls, auth, policy, admin,
// sealing and the cache keys, and checks that relative paths are resolved
// against the file's directory.
func TestLoadSecuritySections(t *testing.T) {
	content := `
listen: ":7443"
insecure_allow_remote: true
tls:
  cert_file: tls/cert.pem
  key_file: /abs/key.pem
  client_ca_file: tls/ca.pem
  client_auth: require
auth:
  api_keys:
    - identity: batch-jobs
      sha256: ` + digestA + `
    - {identity: cron, sha256: ` + digestB + `}
  allow_unauthenticated: true
policy:
  - identity: spiffe://prod/ns/payments/sa/worker
    clients: [payments]
    scopes: [payments/read, payments/write]
    passthrough: true
  - identity: "*"
admin:
  identities: [spiffe://prod/ns/ops/sa/admin, "spiffe://prod/ns/sre/*"]
  listen: unix:/run/tokenbroker/admin.sock
sealing:
  keys_file: keys/sealing
cache:
  hmac_key_env: TB_HMAC_KEY
`
	path := writeFile(t, "c.yaml", content)
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	dir := filepath.Dir(path)
	want := Default()
	want.Listen = ":7443"
	want.InsecureAllowRemote = true
	want.TLS = TLS{
		CertFile:     filepath.Join(dir, "tls/cert.pem"),
		KeyFile:      "/abs/key.pem",
		ClientCAFile: filepath.Join(dir, "tls/ca.pem"),
		ClientAuth:   ClientAuthRequire,
	}
	want.Auth = Auth{
		APIKeys:              []APIKey{{Identity: "batch-jobs", SHA256: digestA}, {Identity: "cron", SHA256: digestB}},
		AllowUnauthenticated: true,
		Kubernetes:           Default().Auth.Kubernetes,
	}
	want.Policy = []PolicyRule{
		{Identity: "spiffe://prod/ns/payments/sa/worker", Clients: []string{"payments"}, Scopes: []string{"payments/read", "payments/write"}, Passthrough: true},
		{Identity: "*"},
	}
	want.Admin.Identities = []string{"spiffe://prod/ns/ops/sa/admin", "spiffe://prod/ns/sre/*"}
	want.Admin.Listen = "unix:/run/tokenbroker/admin.sock"
	want.Sealing = Sealing{KeysFile: filepath.Join(dir, "keys/sealing")}
	want.Cache.HMACKeyEnv = "TB_HMAC_KEY"
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load =\n%+v\nwant\n%+v", c, want)
	}

	// The relative hmac_key_file is resolved too.
	path = writeFile(t, "c.yaml", "cache:\n  hmac_key_file: hmac.key\n")
	c, err = Load(path)
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	if got, want := c.Cache.HMACKeyFile, filepath.Join(filepath.Dir(path), "hmac.key"); got != want {
		t.Errorf("cache.hmac_key_file = %q, want %q", got, want)
	}
}

// TestLoadSecurityErrors checks that errors in the new sections name the
// key and the rule.
func TestLoadSecurityErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"unknown tls key", "tls:\n  ca_file: x\n", `c.yaml:2: tls.ca_file: unknown key "ca_file" (valid keys here: cert_file, key_file, client_ca_file, client_auth)`},
		{"unknown api key key", "auth:\n  api_keys:\n    - identity: a\n      key: hunter2\n", `c.yaml:4: auth.api_keys[0].key: unknown key "key" (valid keys here: identity, sha256)`},
		{"unknown policy key", "policy:\n  - identity: a\n    client: [x]\n", `c.yaml:3: policy[0].client: unknown key "client" (valid keys here: identity, clients, scopes, passthrough, verify)`},
		{"unknown admin key", "admin:\n  admin_listen: x\n", `c.yaml:2: admin.admin_listen: unknown key "admin_listen" (valid keys here: identities, listen, socket_mode, socket_group)`},
		{"unknown sealing key", "sealing:\n  key: x\n", `c.yaml:2: sealing.key: unknown key "key" (valid keys here: keys_file, keys_env)`},
		{"policy not a list", "policy: everyone\n", "c.yaml:1: policy: must be a list"},
		{"policy item not a mapping", "policy:\n  - everyone\n", "c.yaml:2: policy[0]: must be a mapping"},
		{"clients not a list", "policy:\n  - identity: a\n    clients: orders\n", "c.yaml:3: policy[0].clients: must be a list"},
		{"api_keys not a list", "auth:\n  api_keys: abc\n", "c.yaml:2: auth.api_keys: must be a list"},
		{"allow_unauthenticated not a bool", "auth:\n  allow_unauthenticated: sometimes\n", "c.yaml:2: auth.allow_unauthenticated: must be true or false"},
		{"insecure_allow_remote not a bool", "insecure_allow_remote: please\n", "c.yaml:1: insecure_allow_remote: must be true or false"},
		{"tls not a mapping", "tls: on\n", "c.yaml:1: tls: must be a mapping"},
		{"admin identities not a list", "admin:\n  identities: root\n", "c.yaml:2: admin.identities: must be a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeFile(t, "c.yaml", tt.content))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v\nwant it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q contains a value from the file", err)
			}
		})
	}
}

// hmacText is a valid HMAC key: 32 bytes in standard base64.
var (
	hmacBytes = []byte("0123456789abcdef0123456789abcdef")
	hmacText  = base64.StdEncoding.EncodeToString(hmacBytes)
)

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const sealingText = "k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nk1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=\n"
	long := make([]byte, 48)
	for i := range long {
		long[i] = byte(i * 7)
	}
	tests := []struct {
		name        string
		sealing     Sealing
		hmacFile    string
		hmacEnv     string
		env         map[string]string
		wantSealing []byte
		wantHMAC    []byte
	}{
		{name: "neither", wantSealing: nil, wantHMAC: nil},
		{name: "sealing file", sealing: Sealing{KeysFile: write("sealing", sealingText)}, wantSealing: []byte(sealingText)},
		{name: "sealing env", sealing: Sealing{KeysEnv: "SEAL"}, env: map[string]string{"SEAL": sealingText}, wantSealing: []byte(sealingText)},
		{name: "hmac file with newline", hmacFile: write("hmac", hmacText+"\n"), wantHMAC: hmacBytes},
		{name: "hmac env", hmacEnv: "HMAC", env: map[string]string{"HMAC": hmacText}, wantHMAC: hmacBytes},
		{name: "hmac unpadded", hmacEnv: "HMAC", env: map[string]string{"HMAC": strings.TrimRight(hmacText, "=")}, wantHMAC: hmacBytes},
		{name: "hmac URL-safe", hmacEnv: "HMAC", env: map[string]string{"HMAC": base64.URLEncoding.EncodeToString(long)}, wantHMAC: long},
		{name: "hmac URL-safe unpadded", hmacEnv: "HMAC", env: map[string]string{"HMAC": base64.RawURLEncoding.EncodeToString(long[:35])}, wantHMAC: long[:35]},
		{
			name: "both", sealing: Sealing{KeysEnv: "SEAL"}, hmacFile: write("hmac2", " "+hmacText+"\r\n"),
			env: map[string]string{"SEAL": sealingText}, wantSealing: []byte(sealingText), wantHMAC: hmacBytes,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Sealing: tt.sealing, Cache: Cache{HMACKeyFile: tt.hmacFile, HMACKeyEnv: tt.hmacEnv}}
			sealing, hmac, err := c.LoadKeys(env(tt.env), nil)
			if err != nil {
				t.Fatalf("LoadKeys() error = %v, want nil", err)
			}
			if !reflect.DeepEqual(sealing, tt.wantSealing) {
				t.Errorf("sealing keys = %q, want %q", sealing, tt.wantSealing)
			}
			if !reflect.DeepEqual(hmac, tt.wantHMAC) {
				t.Errorf("hmac key = %x, want %x", hmac, tt.wantHMAC)
			}
		})
	}

	// A nil getenv is an empty environment.
	c := Config{Sealing: Sealing{KeysEnv: "SEAL"}}
	if _, _, err := c.LoadKeys(nil, nil); err == nil || !strings.Contains(err.Error(), "sealing.keys_env") {
		t.Errorf("LoadKeys(nil) error = %v, want one naming sealing.keys_env", err)
	}
}

func TestLoadKeysErrors(t *testing.T) {
	dir := t.TempDir()
	// secretText is in every piece of key material below; no error may
	// contain it.
	const secretText = "TOPSECRETKEYTEXT"
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	short := base64.StdEncoding.EncodeToString([]byte(secretText + "0123456789abcde")) // 31 bytes
	notBase64 := secretText + "!!" + hmacText
	tests := []struct {
		name    string
		sealing Sealing
		cache   Cache
		env     map[string]string
		want    []string // each problem, in order, starts with one
	}{
		{"sealing missing file", Sealing{KeysFile: filepath.Join(dir, "nope")}, Cache{}, nil,
			[]string{`sealing.keys_file: cannot read "` + filepath.Join(dir, "nope") + `": no such file or directory`}},
		{"sealing empty file", Sealing{KeysFile: write("empty", " \n")}, Cache{}, nil,
			[]string{fmt.Sprintf("sealing.keys_file: %q is empty", filepath.Join(dir, "empty"))}},
		{"sealing directory", Sealing{KeysFile: dir}, Cache{}, nil,
			[]string{fmt.Sprintf("sealing.keys_file: %q is not a regular file", dir)}},
		{"sealing too large", Sealing{KeysFile: write("big", strings.Repeat(secretText, MaxKeyFileSize/len(secretText)+1))}, Cache{}, nil,
			[]string{fmt.Sprintf("sealing.keys_file: %q is larger than %d bytes", filepath.Join(dir, "big"), MaxKeyFileSize)}},
		{"sealing unset variable", Sealing{KeysEnv: "SEAL"}, Cache{}, nil,
			[]string{`sealing.keys_env: environment variable "SEAL" is not set or is empty`}},
		{"sealing blank variable", Sealing{KeysEnv: "SEAL"}, Cache{}, map[string]string{"SEAL": " \n"},
			[]string{`sealing.keys_env: environment variable "SEAL" is not set or is empty`}},
		{"sealing both", Sealing{KeysFile: write("s", secretText), KeysEnv: "SEAL"}, Cache{}, map[string]string{"SEAL": secretText},
			[]string{"sealing: at most one of keys_file and keys_env may be set, got both"}},
		{"hmac not base64", Sealing{}, Cache{HMACKeyEnv: "HMAC"}, map[string]string{"HMAC": notBase64},
			[]string{"cache.hmac_key_env: key must be base64 (standard or URL-safe alphabet, padding optional)"}},
		{"hmac file not base64", Sealing{}, Cache{HMACKeyFile: write("bad", notBase64)}, nil,
			[]string{"cache.hmac_key_file: key must be base64"}},
		{"hmac too short", Sealing{}, Cache{HMACKeyFile: write("short", short+"\n")}, nil,
			[]string{"cache.hmac_key_file: key must decode to at least 32 bytes, got 31"}},
		{"hmac unset variable", Sealing{}, Cache{HMACKeyEnv: "HMAC"}, nil,
			[]string{`cache.hmac_key_env: environment variable "HMAC" is not set or is empty`}},
		{"hmac missing file", Sealing{}, Cache{HMACKeyFile: filepath.Join(dir, "nope")}, nil,
			[]string{"cache.hmac_key_file: cannot read"}},
		{"hmac both", Sealing{}, Cache{HMACKeyFile: write("h", hmacText), HMACKeyEnv: "HMAC"}, map[string]string{"HMAC": hmacText},
			[]string{"cache: at most one of hmac_key_file and hmac_key_env may be set, got both"}},
		{"every problem", Sealing{KeysEnv: "SEAL"}, Cache{HMACKeyEnv: "HMAC"}, map[string]string{"HMAC": short},
			[]string{"sealing.keys_env: ", "cache.hmac_key_env: key must decode to at least 32 bytes"}},
		{"good sealing, bad hmac", Sealing{KeysEnv: "SEAL"}, Cache{HMACKeyEnv: "HMAC"}, map[string]string{"SEAL": secretText, "HMAC": notBase64},
			[]string{"cache.hmac_key_env: key must be base64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Sealing: tt.sealing, Cache: tt.cache}
			sealing, hmac, err := c.LoadKeys(env(tt.env), nil)
			got := problems(err)
			if len(got) != len(tt.want) {
				t.Fatalf("LoadKeys() problems = %q, want %d starting with %q", got, len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("problem %d = %q, want it to start with %q", i, got[i], tt.want[i])
				}
				if strings.Contains(got[i], secretText) || strings.Contains(got[i], hmacText) || strings.Contains(got[i], short) {
					t.Errorf("problem %q contains key material", got[i])
				}
			}
			if sealing != nil || hmac != nil {
				t.Errorf("LoadKeys() = %q, %x with an error, want nil, nil", sealing, hmac)
			}
		})
	}
}

// TestExampleKeysNeedNoFiles checks that the example file validates while
// the files it names do not exist: Validate reads no file.
func TestExampleKeysNeedNoFiles(t *testing.T) {
	c, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	for _, p := range []string{c.TLS.CertFile, c.TLS.KeyFile, c.TLS.ClientCAFile} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists on this machine", p)
		}
	}
	c.Sealing.KeysFile = filepath.Join(t.TempDir(), "missing")
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil (Validate must not read files)", err)
	}
}

// TestDevNeverListensBeyondLoopback: -dev refuses every non-loopback TCP
// listener (listen, http_listen, admin.listen), even with tls and
// insecure_allow_remote set; each error names the flag and the address.
func TestDevNeverListensBeyondLoopback(t *testing.T) {
	c := validConfig()
	withTLS(&c)
	c.InsecureAllowRemote = true
	c.Dev = true
	c.Listen = "0.0.0.0:7443"
	c.HTTPListen = "[::]:7080"
	c.Admin.Listen = "10.0.0.1:7444"
	got := problems(c.Validate())
	want := []struct{ key, addr string }{{"listen", "0.0.0.0:7443"}, {"http_listen", "[::]:7080"}, {"admin.listen", "10.0.0.1:7444"}}
	if len(got) != len(want) {
		t.Fatalf("Validate() = %q, want %d problems", got, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w.key+": -dev ") || !strings.Contains(got[i], fmt.Sprintf("%q", w.addr)) {
			t.Errorf("problem %d = %q, want %q naming -dev and %q", i, got[i], w.key, w.addr)
		}
	}

	// An empty host listens on every interface: refused too.
	c = validConfig()
	c.Dev, c.InsecureAllowRemote, c.Listen = true, true, ":7443"
	if got := problems(c.Validate()); len(got) != 1 || !strings.Contains(got[0], "-dev") {
		t.Errorf("-dev on :7443: Validate() = %q, want one -dev problem", got)
	}

	// Loopback addresses and a unix admin socket are fine.
	c = validConfig()
	c.Dev = true
	c.Listen, c.HTTPListen, c.Admin.Listen = "[::1]:0", "localhost:0", "unix:/run/tb/admin.sock"
	if err := c.Validate(); err != nil {
		t.Errorf("-dev on loopback: Validate() = %v, want nil", err)
	}
}

// TestAdminSocketKeys: admin.socket_mode is an octal string (default
// "0600"), admin.socket_group a name or gid, only with a unix socket.
func TestAdminSocketKeys(t *testing.T) {
	if got := Default().Admin.SocketMode; got != "0600" {
		t.Errorf("default admin.socket_mode = %q, want 0600", got)
	}
	for _, tt := range []struct {
		mode string
		want fs.FileMode
	}{{"0600", 0o600}, {"660", 0o660}, {"0000", 0}, {"0777", 0o777}} {
		if got, err := (Admin{SocketMode: tt.mode}).SocketPerm(); err != nil || got != tt.want {
			t.Errorf("SocketPerm(%q) = %v, %v; want %v", tt.mode, got, err, tt.want)
		}
	}
	for _, tt := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Admin.SocketMode = "600 " }, "admin.socket_mode: must be an octal mode"},
		{func(c *Config) { c.Admin.SocketMode = "0800" }, "admin.socket_mode: must be an octal mode"},
		{func(c *Config) { c.Admin.SocketMode = "1777" }, "admin.socket_mode: must be an octal mode"},
		{func(c *Config) { c.Admin.SocketMode = "384" }, "admin.socket_mode: must be an octal mode"},
		{func(c *Config) { c.Admin.Listen, c.Admin.SocketGroup = "unix:/run/a.sock", "bad group" }, "admin.socket_group: must be a group name or a numeric gid"},
		{func(c *Config) { c.Admin.Listen, c.Admin.SocketGroup = "127.0.0.1:7444", "ops" }, "admin.socket_group: applies only to a unix socket"},
	} {
		c := validConfig()
		tt.mod(&c)
		if got := problems(c.Validate()); len(got) != 1 || !strings.HasPrefix(got[0], tt.want) {
			t.Errorf("Validate() = %q, want one problem starting with %q", got, tt.want)
		}
	}
	c := validConfig()
	c.Admin = Admin{Listen: "unix:/run/a.sock", SocketMode: "0660", SocketGroup: "tokenbroker-ops"}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
	c.Admin.SocketGroup = "1001"
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
}

// TestIdentityPatternRulesAreIdents: a policy or admin identity is valid
// exactly when ident.ParsePattern (the rule the access package matches
// with) accepts it, within the length and printable limits, and the error
// is ParsePattern's own, naming the field.
func TestIdentityPatternRulesAreIdents(t *testing.T) {
	for _, p := range []string{
		"*", "anonymous", "spiffe://prod/ns/a/sa/b", "spiffe://prod/*", "spiffe://*", "dns:*", "dns:API.example.test",
		"dns:*.example.test", "uri:https://x.test/a", "uri:*", "apikey:ops", "apikey:*", "apikey:ops/*",
		"", " *", "* ", "**", "x*", "a/*", "ops", "dns:", "spiffe://prod/ns*", "spiffe://prod/*/x", "apikey:o*s",
		"dns:a/*/*", "ANONYMOUS", "uri:", "spiffe://",
	} {
		c := validConfig()
		c.Auth.AllowUnauthenticated = true
		c.Policy = []PolicyRule{{Identity: p}}
		c.Admin.Identities = []string{p}
		got := problems(c.Validate())
		_, err := ident.ParsePattern(p)
		if err == nil {
			if len(got) != 0 {
				t.Errorf("%q: ParsePattern accepts it, Validate says %q", p, got)
			}
			continue
		}
		want := []string{
			fmt.Sprintf("policy[0].identity: %v, got %q", err, p),
			fmt.Sprintf("admin.identities[0]: %v, got %q", err, p),
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got problems %q, want %q", p, got, want)
		}
	}
}
