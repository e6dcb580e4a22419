package config

// This file holds the rules and the loading of the broker-held clients'
// authentication: the method, the files or variable its material comes
// from, and the form parameters of their token requests.

import (
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/credential"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// MaxAssertionLifetime is the longest clients[].assertion_lifetime.
const MaxAssertionLifetime = upstream.MaxAssertionLifetime

// authMethods are the values of auth_method.
var authMethods = []string{AuthClientSecretBasic, AuthClientSecretPost, AuthPrivateKeyJWT, AuthTLSClient, AuthSelfSignedTLSClient}

// validAuthMethod reports whether m is one of authMethods.
func validAuthMethod(m string) bool { return slices.Contains(authMethods, m) }

// authMethodRule is how the rule of auth_method reads.
const authMethodRule = "must be client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth or self_signed_tls_client_auth"

// ClientAuthMethod returns the auth method of clients[i]: its own, or its
// provider's.
func (c *Config) ClientAuthMethod(i int) string {
	cl := c.Clients[i]
	if cl.AuthMethod != "" {
		return cl.AuthMethod
	}
	for _, p := range c.Providers {
		if p.Name == cl.Provider {
			return p.AuthMethod
		}
	}
	return AuthClientSecretBasic
}

// validateClientAuth checks the authentication keys and parameters of
// clients[i].
func (c *Config) validateClientAuth(v *validator, i int) {
	cl := c.Clients[i]
	key := fmt.Sprintf("clients[%d]", i)
	if cl.AuthMethod != "" && !validAuthMethod(cl.AuthMethod) {
		v.add(key+".auth_method", authMethodRule+", got %q", cl.AuthMethod)
		return
	}
	method := c.ClientAuthMethod(i)
	set := func(name, value string) bool { return value != "" }
	notWith := func(name, value string) {
		if set(name, value) {
			v.add(key+"."+name, "must not be set with auth_method %s", method)
		}
	}
	switch method {
	case AuthClientSecretBasic, AuthClientSecretPost:
		switch {
		case cl.ClientSecretFile == "" && cl.ClientSecretEnv == "":
			v.add(key, "exactly one of client_secret_file and client_secret_env must be set, got neither")
		case cl.ClientSecretFile != "" && cl.ClientSecretEnv != "":
			v.add(key, "exactly one of client_secret_file and client_secret_env must be set, got both")
		}
		notWith("client_key_file", cl.ClientKeyFile)
		notWith("client_assertion_file", cl.ClientAssertionFile)
		notWith("client_cert_file", cl.ClientCertFile)
	case AuthPrivateKeyJWT:
		switch {
		case cl.ClientKeyFile == "" && cl.ClientAssertionFile == "":
			v.add(key, "auth_method private_key_jwt needs exactly one of client_key_file and client_assertion_file, got neither")
		case cl.ClientKeyFile != "" && cl.ClientAssertionFile != "":
			v.add(key, "auth_method private_key_jwt needs exactly one of client_key_file and client_assertion_file, got both")
		}
		notWith("client_secret_file", cl.ClientSecretFile)
		notWith("client_secret_env", cl.ClientSecretEnv)
		notWith("client_cert_file", cl.ClientCertFile)
		if cl.ClientAssertionFile != "" {
			for _, k := range [][2]string{{"client_key_id", cl.ClientKeyID}, {"client_key_algorithm", cl.ClientKeyAlgorithm}, {"assertion_audience", cl.AssertionAudience}} {
				if k[1] != "" {
					v.add(key+"."+k[0], "applies to assertions the broker signs (client_key_file), not to client_assertion_file")
				}
			}
		}
	case AuthTLSClient, AuthSelfSignedTLSClient:
		if cl.ClientCertFile == "" || cl.ClientKeyFile == "" {
			v.add(key, "auth_method %s needs client_cert_file and client_key_file", method)
		}
		notWith("client_secret_file", cl.ClientSecretFile)
		notWith("client_secret_env", cl.ClientSecretEnv)
		notWith("client_assertion_file", cl.ClientAssertionFile)
	}
	if method != AuthPrivateKeyJWT || cl.ClientKeyFile == "" {
		if cl.AssertionLifetime != 0 {
			v.add(key+".assertion_lifetime", "applies only to auth_method private_key_jwt with client_key_file")
		}
	}
	switch cl.ClientKeyAlgorithm {
	case "", "RS256", "PS256", "ES256":
	default:
		v.add(key+".client_key_algorithm", "must be RS256, PS256 or ES256, got %q", cl.ClientKeyAlgorithm)
	}
	if lt := time.Duration(cl.AssertionLifetime); lt < 0 || lt > MaxAssertionLifetime {
		v.add(key+".assertion_lifetime", "must be > 0 and at most %s (0: 60s), got %s", Duration(MaxAssertionLifetime), cl.AssertionLifetime)
	}
	if len(cl.ClientKeyID) > 256 || !printable(cl.ClientKeyID) {
		v.add(key+".client_key_id", "must be at most 256 printable ASCII characters")
	}
	if len(cl.AssertionAudience) > 1024 || !printable(cl.AssertionAudience) {
		v.add(key+".assertion_audience", "must be at most 1024 printable ASCII characters")
	}
	checkParameters(v, key+".parameters", cl.Parameters)
	if len(cl.AllowedParameters) > upstream.MaxParams {
		v.add(key+".allowed_parameters", "must name at most %d parameters", upstream.MaxParams)
	}
	for j, name := range cl.AllowedParameters {
		if rule := upstream.ParamRule(name, ""); rule != "" {
			v.add(fmt.Sprintf("%s.allowed_parameters[%d]", key, j), "%s", rule)
		}
	}
}

// checkParameters checks a parameters map.
func checkParameters(v *validator, key string, params map[string]string) {
	if len(params) > upstream.MaxParams {
		v.add(key, "must hold at most %d parameters", upstream.MaxParams)
	}
	for _, name := range sortedKeys(params) {
		if rule := upstream.ParamRule(name, params[name]); rule != "" {
			v.add(key, "parameter %q: %s", truncate(name, 64), rule)
		}
	}
}

// sortedKeys returns m's keys, sorted.
func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// printable reports whether s is printable ASCII (space included).
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ClientParams returns the form parameters of clients[i]'s token
// requests: its provider's, overridden by its own, sorted by name.
func (c *Config) ClientParams(i int) [][2]string {
	cl := c.Clients[i]
	merged := map[string]string{}
	for _, p := range c.Providers {
		if p.Name == cl.Provider {
			for k, v := range p.Parameters {
				merged[k] = v
			}
		}
	}
	for k, v := range cl.Parameters {
		merged[k] = v
	}
	return SortedParams(merged)
}

// SortedParams returns params as (name, value) pairs sorted by name; nil
// for none.
func SortedParams(params map[string]string) [][2]string {
	if len(params) == 0 {
		return nil
	}
	out := make([][2]string, 0, len(params))
	for _, k := range sortedKeys(params) {
		out = append(out, [2]string{k, params[k]})
	}
	return out
}

// CredentialSpec returns where clients[i]'s credential comes from.
func (c *Config) CredentialSpec(i int) credential.Spec {
	cl := c.Clients[i]
	s := credential.Spec{
		Name:              cl.Name,
		Method:            upstream.AuthMethod(c.ClientAuthMethod(i)),
		KeyFile:           cl.ClientKeyFile,
		KeyID:             cl.ClientKeyID,
		Algorithm:         cl.ClientKeyAlgorithm,
		AssertionFile:     cl.ClientAssertionFile,
		CertFile:          cl.ClientCertFile,
		Audience:          cl.AssertionAudience,
		AssertionLifetime: time.Duration(cl.AssertionLifetime),
	}
	if m := s.Method; m == upstream.AuthBasic || m == upstream.AuthPost {
		s.SecretFile, s.SecretEnv = cl.ClientSecretFile, cl.ClientSecretEnv
	}
	return s
}

// loadClientCredential reads the material of clients[i] (a client whose
// keys break a rule Validate reports is skipped: nil, nil), sets its
// Credential (and Secret, for the secret methods) and returns the
// problem, a *FieldError naming the key of the file or variable.
func (c *Config) loadClientCredential(i int, getenv func(string) string, logger *slog.Logger) error {
	cl := &c.Clients[i]
	key := fmt.Sprintf("clients[%d]", i)
	spec := c.CredentialSpec(i)
	field := key
	switch {
	case spec.SecretFile != "" && spec.SecretEnv != "":
		return fieldErr(key, "exactly one of client_secret_file and client_secret_env must be set, got both")
	case spec.SecretFile != "":
		field = key + ".client_secret_file"
	case spec.SecretEnv != "":
		field = key + ".client_secret_env"
	case spec.AssertionFile != "":
		field = key + ".client_assertion_file"
	case spec.Method == upstream.AuthPrivateKeyJWT && spec.KeyFile != "":
		field = key + ".client_key_file"
	case (spec.Method == upstream.AuthTLSClient || spec.Method == upstream.AuthSelfSignedTLSClient) && spec.CertFile != "" && spec.KeyFile != "":
		field = key + ".client_cert_file"
	case spec.Method == upstream.AuthBasic || spec.Method == upstream.AuthPost:
		return fieldErr(key, "exactly one of client_secret_file and client_secret_env must be set, got neither")
	default:
		return nil // Validate reports the missing keys
	}
	cr, err := credential.New(spec, getenv, logger)
	if err != nil {
		return &FieldError{Key: field, Err: err}
	}
	cl.Credential = cr
	if m := cr.Current(); m != nil && m.Secret != "" {
		cl.Secret = m.Secret
	}
	return nil
}

// noEmptyParameters makes the empty parameters maps of c's providers and
// clients nil: "parameters: {}" is no parameters, as is no key.
func noEmptyParameters(c *Config) {
	for i := range c.Providers {
		if len(c.Providers[i].Parameters) == 0 {
			c.Providers[i].Parameters = nil
		}
	}
	for i := range c.Clients {
		if len(c.Clients[i].Parameters) == 0 {
			c.Clients[i].Parameters = nil
		}
		if len(c.Clients[i].AllowedParameters) == 0 {
			c.Clients[i].AllowedParameters = nil
		}
	}
}
