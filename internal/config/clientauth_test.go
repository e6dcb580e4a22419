package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestValidateClientAuth: the rules of the client authentication keys and
// the parameters, each problem naming its key.
func TestValidateClientAuth(t *testing.T) {
	jwt := func(c *Config) *Client {
		cl := &c.Clients[0]
		cl.ClientSecretFile, cl.AuthMethod, cl.ClientKeyFile = "", AuthPrivateKeyJWT, "/k.pem"
		return cl
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // one problem starts with this
	}{
		{"client auth_method", func(c *Config) { c.Clients[0].AuthMethod = "client_secret_jwt" }, `clients[0].auth_method: must be client_secret_basic, client_secret_post, private_key_jwt`},
		{"jwt without key or assertion", func(c *Config) { jwt(c).ClientKeyFile = "" }, "clients[0]: auth_method private_key_jwt needs exactly one of client_key_file and client_assertion_file, got neither"},
		{"jwt with both", func(c *Config) { jwt(c).ClientAssertionFile = "/a" }, "clients[0]: auth_method private_key_jwt needs exactly one of client_key_file and client_assertion_file, got both"},
		{"jwt with a secret", func(c *Config) { jwt(c).ClientSecretEnv = "X" }, "clients[0].client_secret_env: must not be set with auth_method private_key_jwt"},
		{"assertion lifetime too long", func(c *Config) { jwt(c).AssertionLifetime = Duration(6 * time.Minute) }, "clients[0].assertion_lifetime: must be > 0 and at most 5m"},
		{"assertion lifetime with a secret", func(c *Config) { c.Clients[0].AssertionLifetime = Duration(time.Minute) }, "clients[0].assertion_lifetime: applies only to auth_method private_key_jwt with client_key_file"},
		{"algorithm", func(c *Config) { jwt(c).ClientKeyAlgorithm = "HS256" }, `clients[0].client_key_algorithm: must be RS256, PS256 or ES256, got "HS256"`},
		{"kid on an assertion file", func(c *Config) {
			cl := jwt(c)
			cl.ClientKeyFile, cl.ClientAssertionFile, cl.ClientKeyID = "", "/a", "k"
		}, "clients[0].client_key_id: applies to assertions the broker signs"},
		{"tls without key", func(c *Config) {
			cl := &c.Clients[0]
			cl.ClientSecretFile, cl.AuthMethod, cl.ClientCertFile = "", AuthTLSClient, "/c.pem"
		}, "clients[0]: auth_method tls_client_auth needs client_cert_file and client_key_file"},
		{"provider method inherited", func(c *Config) { c.Providers[0].AuthMethod = AuthSelfSignedTLSClient }, "clients[0]: auth_method self_signed_tls_client_auth needs client_cert_file and client_key_file"},
		{"secret client with a key file", func(c *Config) { c.Clients[0].ClientKeyFile = "/k" }, "clients[0].client_key_file: must not be set with auth_method client_secret_basic"},
		{"reserved parameter", func(c *Config) { c.Clients[0].Parameters = map[string]string{"client_id": "x"} }, `clients[0].parameters: parameter "client_id": name must not be a parameter the broker sets itself`},
		{"provider parameter value", func(c *Config) { c.Providers[0].Parameters = map[string]string{"x": "a\nb"} }, `providers[0].parameters: parameter "x": value must be printable ASCII`},
		{"allowed parameter name", func(c *Config) { c.Clients[0].AllowedParameters = []string{"ok", "not ok"} }, "clients[0].allowed_parameters[1]: name must contain only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			found := false
			for _, e := range flatten(err) {
				if strings.HasPrefix(e.Error(), tc.want) {
					found = true
				}
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Errorf("problem %q is not a *FieldError", e)
				}
			}
			if !found {
				t.Fatalf("Validate() = %v\nwant a problem starting %q", err, tc.want)
			}
		})
	}
	c := validConfig()
	cl := jwt(&c)
	cl.ClientKeyAlgorithm, cl.ClientKeyID, cl.AssertionLifetime, cl.AssertionAudience = "PS256", "k1", Duration(5*time.Minute), "https://issuer.example"
	c.Clients[1].Parameters, c.Clients[1].AllowedParameters = map[string]string{"tenant": "t"}, []string{"org"}
	c.Providers[1].Parameters = map[string]string{"region": "eu"}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid client auth: Validate() = %v", err)
	}
	if got := c.ClientParams(1); len(got) != 2 || got[0] != [2]string{"region", "eu"} || got[1] != [2]string{"tenant", "t"} {
		t.Errorf("ClientParams = %v, want the provider's and the client's, sorted", got)
	}
}
