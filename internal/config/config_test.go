package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// writeFile writes content to a file in a fresh temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefault(t *testing.T) {
	c := Default()
	want := Config{
		Listen:     "127.0.0.1:7443",
		HTTPListen: "127.0.0.1:7080",
		Cache: Cache{
			MaxCost:         64 << 20,
			RefreshFraction: 0.75,
			RefreshJitter:   0.05,
			MinRemaining:    Duration(30 * time.Second),
			NegativeTTL:     Duration(5 * time.Second),
			FetchTimeout:    Duration(30 * time.Second),

			RefreshRetryBackoff:    Duration(time.Second),
			RefreshRetryBackoffMax: Duration(time.Minute),
		},
		HTTPMaxBodyBytes: 64 * KiB,
		Server: Server{
			MaxConcurrentStreams:  1000,
			ShutdownTimeout:       Duration(10 * time.Second),
			KeepaliveMinTime:      Duration(30 * time.Second),
			Reflection:            true,
			MaxConnectionAge:      Duration(30 * time.Minute),
			MaxConnectionAgeGrace: Duration(time.Minute),
			MaxWatchesPerCaller:   1000,
			WatchOpensPerSecond:   50,
			WatchOpenBurst:        100,
			MaxHeaderListSize:     16 * KiB,
		},
		Log:         Log{Level: "info", Format: "json", Access: "failures"},
		TLS:         TLS{ClientAuth: "none"},
		Auth:        Auth{Kubernetes: KubernetesAuth{Audience: "tokenbroker", Leeway: Duration(30 * time.Second)}},
		Admin:       Admin{SocketMode: "0600"},
		DevLifetime: Duration(5 * time.Minute),
		Shared: Shared{Redis: Redis{
			KeyPrefix:       "tokenbroker",
			OpTimeout:       Duration(100 * time.Millisecond),
			LockTTL:         Duration(10 * time.Second),
			PollInterval:    Duration(250 * time.Millisecond),
			BreakerFailures: 3,
			BreakerCooldown: Duration(5 * time.Second),
		}},
		Verifier: defaultVerifier(),
		SDS:      SDS{SocketMode: "0600", HeaderFormat: "Bearer %s"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Default() = %+v\nwant %+v", c, want)
	}
	// The defaults are plaintext on loopback, no API keys, no client
	// certificates, no policy, no admin identities and random keys: enough
	// for -dev mode, but with no way to authenticate callers otherwise.
	if c.TLS.Enabled() || c.Auth.AllowUnauthenticated || c.InsecureAllowRemote || c.Dev {
		t.Fatalf("Default() = %+v, want plaintext, authentication demanded, loopback only, not -dev", c)
	}
	got := problems(c.Validate())
	if want := "auth.allow_unauthenticated: no way to authenticate callers"; len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Fatalf("Default().Validate() problems = %q, want exactly one starting with %q", got, want)
	}
	dev := Default()
	dev.Dev = true
	if err := dev.Validate(); err != nil {
		t.Fatalf("Default() with Dev: Validate() = %v, want nil", err)
	}
	open := Default()
	open.Auth.AllowUnauthenticated = true
	if err := open.Validate(); err != nil {
		t.Fatalf("Default() with allow_unauthenticated: Validate() = %v, want nil", err)
	}

	p := DefaultProvider()
	wantP := Provider{
		AuthMethod:      "client_secret_basic",
		Timeout:         Duration(10 * time.Second),
		RateLimit:       100,
		Burst:           20,
		DefaultLifetime: Duration(time.Hour),

		PassthroughShare:       0.5,
		PassthroughCallerShare: 0.25,
		PassthroughClientShare: 0.25,

		FleetBurst:      10,
		FleetLocalShare: 0.25,

		MaxAttempts:     4,
		RetryBackoff:    Duration(100 * time.Millisecond),
		RetryBackoffMax: Duration(5 * time.Second),
	}
	if !reflect.DeepEqual(p, wantP) {
		t.Fatalf("DefaultProvider() = %+v, want %+v", p, wantP)
	}
}

// TestExampleFile loads the reference file, validates it, and checks that
// the defaults it documents are the real ones and that it shows every key.
func TestExampleFile(t *testing.T) {
	const path = "testdata/example.yaml"
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%q) = %v", path, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}

	// Everything but the lists and the examples of tls, auth, policy and
	// admin is at its default.
	rest := c
	rest.Providers, rest.Clients, rest.Policy = nil, nil, nil
	rest.TLS, rest.Auth.APIKeys, rest.Admin.Identities = Default().TLS, nil, nil
	rest.Shared.Redis.Addrs = nil
	if want := Default(); !reflect.DeepEqual(rest, want) {
		t.Errorf("example file without lists and examples = %+v\nwant Default() = %+v", rest, want)
	}
	wantTLS := TLS{
		CertFile:     "/etc/tokenbroker/tls/server.crt",
		KeyFile:      "/etc/tokenbroker/tls/server.key",
		ClientCAFile: "/etc/tokenbroker/tls/clients-ca.pem",
		ClientAuth:   ClientAuthRequest,
	}
	if c.TLS != wantTLS {
		t.Errorf("tls = %+v, want %+v", c.TLS, wantTLS)
	}
	wantKeys := []APIKey{{Identity: "batch-jobs", SHA256: "e6ac99ddc88285dd6c1603ff66bd0746a27b955c19ddd1250af8ac4b3ee9e0a2"}}
	if !reflect.DeepEqual(c.Auth.APIKeys, wantKeys) {
		t.Errorf("auth.api_keys = %+v, want %+v", c.Auth.APIKeys, wantKeys)
	}
	wantPolicy := []PolicyRule{
		{Identity: "spiffe://prod/ns/payments/sa/worker", Clients: []string{"orders"}, Scopes: []string{"orders/read"}},
		{Identity: "spiffe://prod/ns/billing/*", Clients: []string{"billing"}, Scopes: []string{"*"}},
		{Identity: "apikey:batch-jobs", Clients: []string{"orders", "billing"}, Scopes: []string{"orders/read", "billing/read"}},
		{Identity: "dns:reports.internal.example", Clients: []string{"orders"}, Scopes: []string{"orders/read"}},
	}
	if !reflect.DeepEqual(c.Policy, wantPolicy) {
		t.Errorf("policy = %+v\nwant %+v", c.Policy, wantPolicy)
	}
	if want := []string{"spiffe://prod/ns/ops/sa/admin"}; !reflect.DeepEqual(c.Admin.Identities, want) {
		t.Errorf("admin.identities = %q, want %q", c.Admin.Identities, want)
	}

	// Both providers are at the defaults: the first spells them out, the
	// second omits them.
	if got, want := len(c.Providers), 2; got != want {
		t.Fatalf("got %d providers, want %d", got, want)
	}
	for i, p := range c.Providers {
		want := DefaultProvider()
		want.Name, want.TokenURL = p.Name, p.TokenURL
		if !reflect.DeepEqual(p, want) {
			t.Errorf("providers[%d] = %+v, want %+v", i, p, want)
		}
	}
	wantClients := []Client{
		{Name: "orders", Provider: "cognito", ClientID: "1example23456789abcdefghij", ClientSecretFile: "/run/secrets/orders-client-secret"},
		{Name: "billing", Provider: "cognito", ClientID: "2example98765432zyxwvutsrq", ClientSecretEnv: "BILLING_CLIENT_SECRET"},
		{Name: "reports", Provider: "cognito", ClientID: "3example11111111aaaaaaaaaa", AuthMethod: AuthPrivateKeyJWT,
			ClientKeyFile: "/run/secrets/reports-key.pem", ClientKeyID: "reports-2025", ClientKeyAlgorithm: "ES256",
			AssertionLifetime: Duration(time.Minute), Parameters: map[string]string{"tenant": "reports"}, AllowedParameters: []string{"organization"}},
		{Name: "workload", Provider: "cognito", ClientID: "4example22222222bbbbbbbbbb", AuthMethod: AuthPrivateKeyJWT,
			ClientAssertionFile: "/var/run/secrets/tokens/client-assertion"},
		{Name: "ledger", Provider: "cognito", ClientID: "5example33333333cccccccccc", AuthMethod: AuthTLSClient,
			ClientCertFile: "/run/secrets/ledger.crt", ClientKeyFile: "/run/secrets/ledger.key"},
	}
	if !reflect.DeepEqual(c.Clients, wantClients) {
		t.Errorf("clients = %+v\nwant %+v", c.Clients, wantClients)
	}

	// Every key of every section appears in the file.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Cache     map[string]any   `yaml:"cache"`
		Providers []map[string]any `yaml:"providers"`
		Clients   []map[string]any `yaml:"clients"`
		Server    map[string]any   `yaml:"server"`
		Log       map[string]any   `yaml:"log"`
		TLS       map[string]any   `yaml:"tls"`
		Auth      map[string]any   `yaml:"auth"`
		Policy    []map[string]any `yaml:"policy"`
		Admin     map[string]any   `yaml:"admin"`
		Sealing   map[string]any   `yaml:"sealing"`
	}
	var rawKeys struct {
		Auth struct {
			APIKeys []map[string]any `yaml:"api_keys"`
		} `yaml:"auth"`
	}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rawKeys); err != nil {
		t.Fatal(err)
	}
	clientKeys := map[string]any{}
	for _, m := range raw.Clients {
		for k, v := range m {
			clientKeys[k] = v
		}
	}
	sections := []struct {
		name string
		typ  any
		got  map[string]any
	}{
		{"cache", Cache{}, raw.Cache},
		{"providers[0]", Provider{}, raw.Providers[0]},
		{"clients", Client{}, clientKeys},
		{"server", Server{}, raw.Server},
		{"log", Log{}, raw.Log},
		{"tls", TLS{}, raw.TLS},
		{"auth", Auth{}, raw.Auth},
		{"auth.api_keys[0]", APIKey{}, first(rawKeys.Auth.APIKeys)},
		{"policy[0]", PolicyRule{}, first(raw.Policy)},
		{"admin", Admin{}, raw.Admin},
		{"sealing", Sealing{}, raw.Sealing},
	}
	for _, s := range sections {
		for _, k := range yamlKeys(reflect.TypeOf(s.typ)) {
			if _, ok := s.got[k]; !ok {
				t.Errorf("%s: key %q is missing from %s", path, k, s.name)
			}
		}
	}
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range yamlKeys(reflect.TypeOf(Config{})) {
		if _, ok := top[k]; !ok {
			t.Errorf("%s: top-level key %q is missing", path, k)
		}
	}
}

// first returns the first map of list, nil if there is none.
func first(list []map[string]any) map[string]any {
	if len(list) == 0 {
		return nil
	}
	return list[0]
}

func TestLoadEmptyAndNull(t *testing.T) {
	for _, content := range []string{"", "# only a comment\n", "---\n", "~\n", "cache:\nserver: ~\nlisten: ~\n"} {
		c, err := Load(writeFile(t, "c.yaml", content))
		if err != nil {
			t.Errorf("Load(%q) error = %v, want nil", content, err)
			continue
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("Load(%q) = %+v, want Default()", content, c)
		}
	}
}

func TestLoadOverlay(t *testing.T) {
	content := `
listen: ":9000"
cache:
  max_cost: 1GiB
  min_remaining: 0
providers:
  - name: a
    token_url: https://a.example/token
    rate_limit: 0
    burst: 0
    timeout: ~
  - &base
    name: b
    token_url: https://b.example/token
    auth_method: client_secret_post
    burst: 3
  - <<: *base
    name: c
clients:
  - name: x
    provider: a
    client_id: id
    client_secret_file: secrets/x
log:
  level: debug
`
	path := writeFile(t, "c.yaml", content)
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	want := Default()
	want.Listen = ":9000"
	want.Cache.MaxCost = GiB
	want.Cache.MinRemaining = 0
	want.Log.Level = "debug"

	a := DefaultProvider()
	a.Name, a.TokenURL = "a", "https://a.example/token"
	a.RateLimit, a.Burst = 0, 0 // explicit zeros stay, for Validate to reject
	b := DefaultProvider()
	b.Name, b.TokenURL, b.AuthMethod, b.Burst = "b", "https://b.example/token", AuthClientSecretPost, 3
	cc := b
	cc.Name = "c" // merged from b
	want.Providers = []Provider{a, b, cc}
	want.Clients = []Client{{Name: "x", Provider: "a", ClientID: "id", ClientSecretFile: filepath.Join(filepath.Dir(path), "secrets/x")}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load =\n%+v\nwant\n%+v", c, want)
	}
}

// TestLoadErrors checks that every kind of error names the file, the line
// and, where there is one, the key.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string // each must appear in the error
	}{
		{
			name:    "unknown top-level key",
			content: "listen: ':1'\nlisten_addr: x\n",
			want:    []string{`c.yaml:2: listen_addr: unknown key "listen_addr"`, "valid keys here: listen, http_listen, http_default_provider, cache, providers"},
		},
		{
			name:    "unknown nested key",
			content: "cache:\n  max_cost: 1MiB\n  refresh_fractoin: 0.5\n",
			want:    []string{`c.yaml:3: cache.refresh_fractoin: unknown key "refresh_fractoin"`, "valid keys here: max_cost, refresh_fraction"},
		},
		{
			name:    "unknown key in a list item",
			content: "providers:\n  - name: a\n    token_url: https://x\n  - name: b\n    client_secret: hunter2\n",
			want:    []string{`c.yaml:5: providers[1].client_secret: unknown key "client_secret"`},
		},
		{
			name:    "section that is not a mapping",
			content: "shared: 5\n",
			want:    []string{"c.yaml:1: shared: must be a mapping of keys to values (got !!int `5`)"},
		},
		{
			name:    "unknown key in a nested shared section",
			content: "shared:\n  redis:\n    adrs: [x]\n",
			want:    []string{`c.yaml:3: shared.redis.adrs: unknown key "adrs" (valid keys here: addrs, master_name,`},
		},
		{
			name:    "unknown metrics label",
			content: "metrics:\n  client_label: true\n",
			want:    []string{`c.yaml:2: metrics.client_label: unknown key "client_label"`, "valid keys here: client_id_label, key_id_label"},
		},
		{
			name:    "unknown key in flow style",
			content: "log: {level: info, colour: true}\n",
			want:    []string{`c.yaml:1: log.colour: unknown key "colour"`},
		},
		{
			name:    "bad size",
			content: "cache:\n  max_cost: 64 megs\n",
			want:    []string{`c.yaml:2: cache.max_cost: invalid size "64 megs": unknown unit "megs"`},
		},
		{
			name:    "bad duration",
			content: "server:\n  shutdown_timeout: 10\n",
			want:    []string{`c.yaml:2: server.shutdown_timeout: invalid duration "10": missing unit`},
		},
		{
			name:    "bad duration in list item",
			content: "providers:\n  - name: a\n    timeout: 3\n",
			want:    []string{`c.yaml:3: providers[0].timeout: invalid duration "3"`},
		},
		{
			name:    "wrong scalar type",
			content: "cache:\n  refresh_fraction: lots\nserver:\n  max_concurrent_streams: -1\n  reflection: maybe\n",
			want: []string{
				"c.yaml:2: cache.refresh_fraction: must be a number (got !!str `lots`)",
				"c.yaml:4: server.max_concurrent_streams: must be an integer from 1 to 4294967295",
				"c.yaml:5: server.reflection: must be true or false",
			},
		},
		{
			name:    "mapping where a string belongs",
			content: "listen:\n  host: x\n",
			want:    []string{"c.yaml:2: listen: must be a string (got !!map)"},
		},
		{
			name:    "scalar where a list belongs",
			content: "providers: cognito\n",
			want:    []string{"c.yaml:1: providers: must be a list"},
		},
		{
			name:    "scalar where a mapping belongs",
			content: "clients:\n  - orders\n",
			want:    []string{"c.yaml:2: clients[0]: must be a mapping"},
		},
		{
			name:    "document is not a mapping",
			content: "- a\n- b\n",
			want:    []string{"c.yaml:1: must be a mapping"},
		},
		{
			name:    "duplicate key",
			content: "log:\n  level: info\n  level: debug\n",
			want:    []string{"c.yaml:3: log.level: key is set more than once (first at line 2)"},
		},
		{
			name:    "two documents",
			content: "listen: ':1'\n---\nlisten: ':2'\n",
			want:    []string{"c.yaml:2: a second YAML document starts here"},
		},
		{
			name:    "syntax error",
			content: "cache:\n  max_cost: [1\n",
			want:    []string{"c.yaml:"},
		},
		{
			name:    "tab indentation",
			content: "cache:\n\tmax_cost: 1\n",
			want:    []string{"c.yaml:2: found character that cannot start any token"},
		},
		{
			name:    "several errors at once",
			content: "nope: 1\ncache:\n  max_cost: -1\n",
			want:    []string{`c.yaml:1: nope: unknown key`, "c.yaml:3: cache.max_cost: invalid size \"-1\": must not be negative"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "c.yaml", tt.content)
			_, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%q) error = nil, want one", tt.content)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file %s", msg, path)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("got error:\n%s\nwant it to contain %q", msg, w)
				}
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error %q contains a value from the file", msg)
			}
		})
	}
}

func TestLoadFileProblems(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) error = %v; want one naming %s", err, missing)
	}
	big := writeFile(t, "big.yaml", "# "+strings.Repeat("x", maxFileSize)+"\n")
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load(big) error = %v; want a size error", err)
	}
}

// TestLoadServerWatchKeys checks the server keys of WatchToken: they load
// with their units and a wrong type names the key.
func TestLoadServerWatchKeys(t *testing.T) {
	content := `
server:
  max_connection_age: 10m
  max_connection_age_grace: 30s
  max_watches_per_caller: 5
  watch_opens_per_second: 0.5
  watch_open_burst: 7
`
	c, err := Load(writeFile(t, "c.yaml", content))
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	want := Default().Server
	want.MaxConnectionAge = Duration(10 * time.Minute)
	want.MaxConnectionAgeGrace = Duration(30 * time.Second)
	want.MaxWatchesPerCaller = 5
	want.WatchOpensPerSecond = 0.5
	want.WatchOpenBurst = 7
	if c.Server != want {
		t.Errorf("server = %+v, want %+v", c.Server, want)
	}

	bad := "server:\n  max_watches_per_caller: many\n  watch_opens_per_second: fast\n  max_connection_age: 30\n"
	_, err = Load(writeFile(t, "c.yaml", bad))
	if err == nil {
		t.Fatal("Load(bad) error = nil, want one")
	}
	for _, w := range []string{
		"c.yaml:2: server.max_watches_per_caller: must be an integer",
		"c.yaml:3: server.watch_opens_per_second: must be a number",
		`c.yaml:4: server.max_connection_age: invalid duration "30"`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("got error:\n%s\nwant it to contain %q", err, w)
		}
	}
}

// TestReadmeShowsTheExample: the README's configuration reference is the
// example file, verbatim, so the documentation cannot drift from what the
// tests load and validate.
func TestReadmeShowsTheExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, append([]byte("```yaml\n"), example...)) {
		t.Error("README.md does not contain testdata/example.yaml verbatim in a yaml block; copy it over")
	}
}

// TestMetricsLabels: the optional metric labels are off by default and
// turned on by their keys.
func TestMetricsLabels(t *testing.T) {
	if d := Default().Metrics; d.ClientIDLabel || d.KeyIDLabel {
		t.Errorf("default metrics labels: got %+v, want both off", d)
	}
	c, err := Load(writeFile(t, "c.yaml", "metrics:\n  client_id_label: true\n  key_id_label: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Metrics.ClientIDLabel || !c.Metrics.KeyIDLabel {
		t.Errorf("got %+v, want both labels on", c.Metrics)
	}
}

// TestEverySectionListsItsKeys: every mapping of the configuration file
// is in sectionKeys, so that an unknown key in it is answered with the
// keys valid there.
func TestEverySectionListsItsKeys(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeOf(Config{}).PkgPath() || seen[typ] {
			return
		}
		seen[typ] = true
		if _, ok := sectionKeys[typ.String()]; !ok {
			t.Errorf("%s (%s) is not in sectionKeys", path, typ)
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name != "" && name != "-" {
				walk(f.Type, path+"."+name)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "config")
	if len(seen) < 10 {
		t.Fatalf("walked only %d sections: the walk is broken", len(seen))
	}
}
