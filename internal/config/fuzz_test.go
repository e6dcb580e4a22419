package config

import (
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
		if !names[cl.Provider] || cl.ClientID == "" || (cl.ClientSecretFile == "") == (cl.ClientSecretEnv == "") {
			t.Fatalf("valid config has an insane client: %+v", cl)
		}
	}
	if c.Server.MaxConcurrentStreams < 1 || c.Server.ShutdownTimeout <= 0 || c.Dev {
		t.Fatalf("valid config has insane server settings: %+v (dev %v)", c.Server, c.Dev)
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
