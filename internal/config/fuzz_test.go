package config

import (
	"net"
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic; its
// errors must name the file; and a configuration that loads and validates
// must hold sane values and survive a round trip through YAML unchanged.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(example),
		"",
		"listen: ':1'\n",
		"cache: {max_cost: 1GiB, refresh_fraction: 0.5, refresh_jitter: 0.1, min_remaining: 0, negative_ttl: 1m, fetch_timeout: 1s}\n",
		"providers:\n  - name: a\n    token_url: http://localhost/t\n    rate_limit: 0.5\n    burst: 1\nclients:\n  - {name: x, provider: a, client_id: 'i d', client_secret_env: E}\n",
		"providers:\n  - &p {name: a, token_url: 'https://h/t', timeout: 1ms}\n  - {<<: *p, name: b}\n",
		"server: {max_concurrent_streams: 4294967295, shutdown_timeout: 1ns, keepalive_min_time: 0, reflection: false}\n",
		"log: {level: debug, format: text}\npassthrough: yes\n",
		"a: &a [*a]\n",
		"---\n---\n",
		"cache:\n  max_cost: 18446744073709551615\n",
		"\xef\xbb\xbflisten: ':1'\n",
		"auth: {allow_unauthenticated: true}\n",
		"tls: {cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem, client_auth: require}\nlisten: ':443'\n",
		"tls: {cert_file: c.pem, client_auth: request}\n",
		"auth:\n  api_keys:\n    - {identity: batch-jobs, sha256: " + digestA + "}\n    - {identity: cron, sha256: " + digestB + "}\n",
		"auth:\n  api_keys: [{identity: anonymous, sha256: 00}]\n  allow_unauthenticated: yes\n",
		"listen: '0.0.0.0:1'\ninsecure_allow_remote: true\nauth: {allow_unauthenticated: true}\nadmin: {listen: '[::]:2'}\n",
		"auth: {allow_unauthenticated: true}\npolicy:\n  - {identity: 'spiffe://a/*', clients: ['*'], scopes: ['*', a/b], passthrough: true}\n  - {identity: '*'}\n  - identity: a*b\n",
		"auth: {allow_unauthenticated: true}\nadmin: {identities: ['*', 'x/*', ''], listen: 'unix:/run/a.sock'}\n",
		"auth: {allow_unauthenticated: true}\nsealing: {keys_file: k, keys_env: K}\ncache: {hmac_key_file: h, hmac_key_env: ''}\n",
		"auth: {allow_unauthenticated: true}\nsealing: {keys_env: K}\ncache: {hmac_key_env: H}\nshared: {redis: {addrs: ['127.0.0.1:6379', 'r:1'], master_name: m, password_env: P, tls: {enabled: true, server_name: r}, op_timeout: 50ms, lock_ttl: 2s, poll_interval: 100ms}}\n",
		"policy: [{identity: x, clients: [orders]}]\nclients: [{name: orders, provider: p, client_id: i, client_secret_env: E}]\nproviders: [{name: p, token_url: 'https://p/t'}]\nauth: {allow_unauthenticated: true}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := loadBytes(data, "fuzz.yaml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error %q does not start with the file name", err)
			}
			return
		}
		if cfg.Validate() != nil {
			return
		}
		checkSane(t, cfg)

		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("yaml.Marshal of a valid config = %v", err)
		}
		again, err := loadBytes(out, "fuzz.yaml")
		if err != nil {
			t.Fatalf("reloading the marshalled config = %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalized(again), normalized(cfg)) {
			t.Fatalf("round trip changed the config:\ngot  %+v\nwant %+v\nyaml:\n%s", again, cfg, out)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("round-tripped config no longer validates: %v", err)
		}
	})
}

// normalized returns c with empty lists set to nil, which YAML does not
// tell apart.
func normalized(c Config) Config {
	if len(c.Providers) == 0 {
		c.Providers = nil
	}
	if len(c.Clients) == 0 {
		c.Clients = nil
	}
	if len(c.Auth.APIKeys) == 0 {
		c.Auth.APIKeys = nil
	}
	if len(c.Admin.Identities) == 0 {
		c.Admin.Identities = nil
	}
	if len(c.Policy) == 0 {
		c.Policy = nil
	}
	if len(c.Shared.Redis.Addrs) == 0 {
		c.Shared.Redis.Addrs = nil
	}
	if len(c.SDSSecrets) == 0 {
		c.SDSSecrets = nil
	}
	for i := range c.SDSSecrets {
		if len(c.SDSSecrets[i].Scopes) == 0 {
			c.SDSSecrets[i].Scopes = nil
		}
	}
	for i := range c.Policy {
		r := &c.Policy[i]
		if len(r.Clients) == 0 {
			r.Clients = nil
		}
		if len(r.Scopes) == 0 {
			r.Scopes = nil
		}
	}
	return c
}

// checkSane checks, independently of Validate's code, the invariants the
// rest of the broker relies on.
func checkSane(t *testing.T, c Config) {
	t.Helper()
	cc := c.Cache
	if cc.MaxCost < 64<<10 || cc.RefreshFraction-cc.RefreshJitter <= 0 || cc.RefreshFraction+cc.RefreshJitter >= 1 ||
		cc.RefreshJitter < 0 || cc.MinRemaining < 0 || cc.NegativeTTL < 0 || cc.FetchTimeout <= 0 {
		t.Fatalf("valid config has insane cache settings: %+v", cc)
	}
	names := map[string]bool{}
	for _, p := range c.Providers {
		if p.Name == "" || names[p.Name] || p.Timeout <= 0 || !(p.RateLimit > 0) || p.Burst < 1 || p.DefaultLifetime <= 0 ||
			!(strings.HasPrefix(p.TokenURL, "https://") || strings.HasPrefix(strings.ToLower(p.TokenURL), "http://")) {
			t.Fatalf("valid config has an insane provider: %+v", p)
		}
		names[p.Name] = true
	}
	for _, cl := range c.Clients {
		secretMethod := cl.AuthMethod == "" || cl.AuthMethod == AuthClientSecretBasic || cl.AuthMethod == AuthClientSecretPost
		if !names[cl.Provider] || cl.ClientID == "" || (secretMethod && (cl.ClientSecretFile == "") == (cl.ClientSecretEnv == "")) {
			t.Fatalf("valid config has an insane client: %+v", cl)
		}
	}
	if c.Server.MaxConcurrentStreams < 1 || c.Server.ShutdownTimeout <= 0 || c.Dev {
		t.Fatalf("valid config has insane server settings: %+v (dev %v)", c.Server, c.Dev)
	}
	checkSaneSecurity(t, c)
}

// checkSaneSecurity checks the security invariants of a valid config,
// independently of Validate's code.
func checkSaneSecurity(t *testing.T, c Config) {
	t.Helper()
	tl := c.TLS
	if (tl.CertFile == "") != (tl.KeyFile == "") || (tl.ClientCAFile != "" && tl.CertFile == "") ||
		(tl.ClientAuth != "none" && tl.ClientCAFile == "") {
		t.Fatalf("valid config has insane tls settings: %+v", tl)
	}
	if tl.CertFile == "" && !c.InsecureAllowRemote {
		for _, addr := range []string{c.Listen, c.Admin.Listen} {
			if addr == "" || strings.HasPrefix(addr, "unix:") {
				continue
			}
			host, _, err := net.SplitHostPort(addr)
			if ip := net.ParseIP(host); err != nil || (!strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback())) {
				t.Fatalf("valid config serves plaintext on %q", addr)
			}
		}
	}
	if len(c.Auth.APIKeys) == 0 && tl.ClientAuth != "require" && !c.Auth.AllowUnauthenticated {
		t.Fatalf("valid config has no way to authenticate callers: %+v %+v", tl, c.Auth)
	}
	ids := map[string]bool{}
	for _, k := range c.Auth.APIKeys {
		if k.Identity == "" || k.Identity == "anonymous" || ids[k.Identity] || len(k.SHA256) != 64 || strings.ContainsAny(k.Identity, "* ") {
			t.Fatalf("valid config has an insane API key: %+v", k)
		}
		ids[k.Identity] = true
	}
	clients := map[string]bool{"*": true}
	for _, cl := range c.Clients {
		clients[cl.Name] = true
	}
	pattern := func(p string) bool {
		i := strings.Index(p, "*")
		return p != "" && (i < 0 || p == "*" || (i == len(p)-1 && strings.HasSuffix(p, "/*")))
	}
	for _, r := range c.Policy {
		if !pattern(r.Identity) {
			t.Fatalf("valid config has an insane policy identity %q", r.Identity)
		}
		for _, name := range r.Clients {
			if !clients[name] {
				t.Fatalf("valid config's policy names an unknown client %q", name)
			}
		}
		for _, s := range r.Scopes {
			if s == "" || strings.ContainsAny(s, " \"\\") {
				t.Fatalf("valid config's policy has an insane scope %q", s)
			}
		}
	}
	for _, id := range c.Admin.Identities {
		if !pattern(id) {
			t.Fatalf("valid config has an insane admin identity %q", id)
		}
	}
	if (c.Sealing.KeysFile != "" && c.Sealing.KeysEnv != "") || (c.Cache.HMACKeyFile != "" && c.Cache.HMACKeyEnv != "") {
		t.Fatalf("valid config names key material twice: %+v %+v", c.Sealing, c.Cache)
	}
}

// FuzzUnits checks that every size and duration that parses prints back
// to a string that parses to the same value.
func FuzzUnits(f *testing.F) {
	for _, s := range []string{"0", "64MiB", "10 MB", "1000", "1m30s", "-5s", "5", "16EiB", "1.5GiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if b, err := ParseByteSize(s); err == nil {
			if back, err := ParseByteSize(b.String()); err != nil || back != b {
				t.Fatalf("ParseByteSize(%q) = %d; ParseByteSize(%q) = %d, %v", s, uint64(b), b.String(), uint64(back), err)
			}
		}
		if d, err := ParseDuration(s); err == nil {
			if back, err := ParseDuration(d.String()); err != nil || back != d {
				t.Fatalf("ParseDuration(%q) = %v; ParseDuration(%q) = %v, %v", s, d, d.String(), back, err)
			}
		}
	})
}
