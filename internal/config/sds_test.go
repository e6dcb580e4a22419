package config

import (
	"errors"
	"strings"
	"testing"
)

// TestSDSValidate: every sds key's rule, each problem located at its
// file and line.
func TestSDSValidate(t *testing.T) {
	path := writeFile(t, "c.yaml", `providers:
  - name: p
    token_url: https://p.example/token
clients:
  - name: orders
    provider: p
    client_id: id
    client_secret_env: E
auth:
  allow_unauthenticated: true
sds:
  enabled: true
  listen: unix:relative.sock
  socket_mode: "999"
  socket_group: "bad group"
  header_format: "Bearer %s %d"
sds_secrets:
  - name: orders-api
    client: orders
    scopes: [orders/read]
  - name: orders-api
    client: nope
  - name: "oauth2:orders:x"
    client: orders
  - name: bad-scope
    client: orders
    scopes: ["a b"]
`)
	cfg, src, err := ParseSources([]string{"-config", path}, env(nil))
	if err != nil {
		t.Fatalf("ParseSources = %v", err)
	}
	var got []string
	for _, e := range flatten(src.Locate(cfg.Validate())) {
		got = append(got, e.Error())
	}
	want := []string{
		path + `:13: sds.listen: must be "unix:" and an absolute path, or host:port, got "unix:relative.sock"`,
		path + `:14: sds.socket_mode: must be an octal mode`,
		path + `:16: sds.header_format: must hold exactly one "%s"`,
		path + `:21: sds_secrets[1].name: "orders-api" is already the name of sds_secrets[0]`,
		path + `:22: sds_secrets[1].client: "nope" is not a configured client`,
		path + `:23: sds_secrets[2].name: must not start with "oauth2:"`,
		path + `:27: sds_secrets[3].scopes[0]: `,
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w)
		}
		if !found {
			t.Errorf("problems:\n%s\nwant one starting with %q", strings.Join(got, "\n"), w)
		}
	}
	for _, g := range got {
		if strings.Contains(g, "socket_group") && !strings.Contains(g, "must be a group name") {
			t.Errorf("socket_group problem: got %q, want the group name rule", g)
		}
	}
}

// TestSDSValid: a valid sds section passes; the defaults are off, on the
// gRPC listener, "Bearer %s"; TCP listen off loopback needs tls.
func TestSDSValid(t *testing.T) {
	d := Default().SDS
	if d.Enabled || d.Listen != "" || d.HeaderFormat != "Bearer %s" || d.AllowParsedNames {
		t.Errorf("Default().SDS = %+v, want off, on the gRPC listener, header format \"Bearer %%s\"", d)
	}
	c := Default()
	c.Auth.AllowUnauthenticated = true
	c.Providers = []Provider{DefaultProvider()}
	c.Providers[0].Name, c.Providers[0].TokenURL = "p", "https://p.example/token"
	c.Clients = []Client{{Name: "orders", Provider: "p", ClientID: "id", ClientSecretEnv: "E"}}
	c.SDS = SDS{Enabled: true, Listen: "unix:/run/tokenbroker/sds.sock", SocketMode: "0660", SocketGroup: "envoy", HeaderFormat: "Token %s"}
	c.SDSSecrets = []SDSSecret{{Name: "orders-api", Client: "orders", Scopes: []string{"orders/read"}, Audience: "https://orders.example"}}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	c.SDS.Listen, c.SDS.SocketGroup = "0.0.0.0:7444", ""
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "sds.listen: plaintext on a non-loopback address") {
		t.Errorf("plaintext sds.listen off loopback: got %v, want it refused", err)
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 1 {
		t.Errorf("got %v, want exactly one problem", err)
	}
}
