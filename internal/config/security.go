package config

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// plaintextRemote is the problem of a plaintext listener on a non-loopback
// address.
const plaintextRemote = "plaintext on a non-loopback address; configure tls or set insecure_allow_remote: true"

// maxUnixPath is the longest unix socket path admin.listen may name (Linux
// sun_path less its terminating NUL).
const maxUnixPath = 107

// validateSecurity checks the keys of caller identity, policy, admin and
// key material, and the rules that tie them to listen. clients holds the
// name of every configured client.
func (c *Config) validateSecurity(v *validator, clients map[string]bool) {
	t := c.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.add("tls.key_file", "must be set when tls.cert_file is")
	case t.CertFile == "" && t.KeyFile != "":
		v.add("tls.cert_file", "must be set when tls.key_file is")
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		v.add("tls.client_ca_file", "requires tls.cert_file (client certificates need TLS)")
	}
	switch t.ClientAuth {
	case ClientAuthNone:
	case ClientAuthRequest, ClientAuthRequire:
		if t.ClientCAFile == "" {
			v.add("tls.client_auth", "%s needs tls.client_ca_file to verify client certificates", t.ClientAuth)
		}
	default:
		v.add("tls.client_auth", "must be none, request or require, got %q", t.ClientAuth)
	}

	// Plaintext only on loopback, unless explicitly allowed; -dev only on
	// loopback, whatever the configuration allows.
	plaintextOK := t.Enabled() || c.InsecureAllowRemote
	if checkListen(c.Listen) == "" {
		c.checkRemote(v, "listen", c.Listen, plaintextOK)
	}
	if a := c.HTTPListen; a != "" {
		switch {
		case checkListen(a) != "":
			v.add("http_listen", "%s", checkListen(a))
		case (a == c.Listen || a == c.Admin.Listen) && !strings.HasSuffix(a, ":0"):
			v.add("http_listen", "must differ from listen and admin.listen, got %q", a)
		default:
			c.checkRemote(v, "http_listen", a, plaintextOK)
		}
	}
	if a := c.Admin.Listen; a != "" {
		tcp, problem := checkAdminListen(a)
		switch {
		case problem != "":
			v.add("admin.listen", "%s", problem)
		case a == c.Listen:
			v.add("admin.listen", "must differ from listen (leave it empty to serve AdminService on the main listener)")
		case tcp:
			c.checkRemote(v, "admin.listen", a, plaintextOK)
		}
	}

	if _, err := c.Admin.SocketPerm(); err != nil {
		v.add("admin.socket_mode", "%v", err)
	}
	if g := c.Admin.SocketGroup; g != "" {
		switch {
		case !strings.HasPrefix(c.Admin.Listen, "unix:"):
			v.add("admin.socket_group", `applies only to a unix socket (admin.listen: "unix:/path"), got admin.listen %q`, c.Admin.Listen)
		case !groupRE.MatchString(g):
			v.add("admin.socket_group", "must be a group name or a numeric gid, got %q", g)
		}
	}

	keyIdentities := make(map[string]int, len(c.Auth.APIKeys))
	digests := make(map[string]int, len(c.Auth.APIKeys))
	for i, k := range c.Auth.APIKeys {
		key := fmt.Sprintf("auth.api_keys[%d]", i)
		first, dup := keyIdentities[k.Identity]
		switch {
		case !validIdentity(k.Identity) || strings.Contains(k.Identity, "*"):
			v.add(key+".identity", "must be 1-2048 printable ASCII characters without spaces or '*', got %q", k.Identity)
		case k.Identity == AnonymousIdentity:
			v.add(key+".identity", "%q is reserved for unauthenticated callers", k.Identity)
		case strings.HasPrefix(k.Identity, ident.APIKeyPrefix):
			v.add(key+".identity", "is the key's name without its kind: callers presenting the key are \"apikey:NAME\", write %q", strings.TrimPrefix(k.Identity, ident.APIKeyPrefix))
		case dup:
			v.add(key+".identity", "%q is already the identity of auth.api_keys[%d]", k.Identity, first)
		default:
			keyIdentities[k.Identity] = i
		}
		// The digest is not quoted back: it is key material, if not the key.
		switch d := strings.ToLower(k.SHA256); {
		case len(d) != 64:
			v.add(key+".sha256", "must be 64 hexadecimal characters (the SHA-256 digest of the key), got %d characters", len(d))
		case strings.Trim(d, "0123456789abcdef") != "":
			v.add(key+".sha256", "must be 64 hexadecimal characters (the SHA-256 digest of the key), got a character that is not hexadecimal")
		default:
			if first, dup := digests[d]; dup {
				v.add(key+".sha256", "is the same digest as auth.api_keys[%d].sha256", first)
			} else {
				digests[d] = i
			}
		}
	}
	c.validateKubernetesAuth(v)
	if !c.Dev && !c.Auth.AllowUnauthenticated && len(c.Auth.APIKeys) == 0 && !c.Auth.Kubernetes.Enabled() && t.ClientAuth != ClientAuthRequire {
		v.add("auth.allow_unauthenticated", "no way to authenticate callers: configure tls.client_auth: require, auth.api_keys, auth.kubernetes, or set auth.allow_unauthenticated: true")
	}

	for i, r := range c.Policy {
		key := fmt.Sprintf("policy[%d]", i)
		c.checkIdentityPattern(v, key+".identity", r.Identity)
		for j, name := range r.Clients {
			switch {
			case name == "*" || clients[name]:
			case c.Dev && name == devClient:
			case name == "":
				v.add(fmt.Sprintf("%s.clients[%d]", key, j), `must name a configured client or be "*"`)
			default:
				v.add(fmt.Sprintf("%s.clients[%d]", key, j), "%q is not a configured client", name)
			}
		}
		for j, s := range r.Scopes {
			switch {
			case s == "*" || upstream.ScopeRule(s) == "":
			case len(s) > upstream.MaxScopeBytes:
				v.add(fmt.Sprintf("%s.scopes[%d]", key, j), "must be at most %d bytes (no request may name a longer scope), got %d", upstream.MaxScopeBytes, len(s))
			default:
				v.add(fmt.Sprintf("%s.scopes[%d]", key, j), `must be a scope (printable ASCII without spaces, '"' or '\') or "*", got %q`, s)
			}
		}
	}
	for i, id := range c.Admin.Identities {
		c.checkIdentityPattern(v, fmt.Sprintf("admin.identities[%d]", i), id)
	}

	if c.Sealing.KeysFile != "" && c.Sealing.KeysEnv != "" {
		v.add("sealing", "at most one of keys_file and keys_env may be set, got both")
	}
	if c.Cache.HMACKeyFile != "" && c.Cache.HMACKeyEnv != "" {
		v.add("cache", "at most one of hmac_key_file and hmac_key_env may be set, got both")
	}
}

// devRemote is the problem of a -dev listener on a non-loopback address.
const devRemote = "-dev serves a demo client and an open admin service to unauthenticated callers, so it listens only on loopback addresses, whatever tls and insecure_allow_remote say; got %q (use a 127.0.0.1 or [::1] address, or drop -dev)"

// checkRemote reports the TCP listen address addr of key when its host is
// not loopback and either Dev is set (never allowed) or plaintextOK is not
// (plaintext off loopback). addr must be a valid host:port.
func (c *Config) checkRemote(v *validator, key, addr string, plaintextOK bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || isLoopback(host) {
		return
	}
	switch {
	case c.Dev:
		v.add(key, devRemote, addr)
	case !plaintextOK:
		v.add(key, plaintextRemote)
	}
}

// checkIdentityPattern checks the policy or admin identity p, named key
// in errors: the pattern rules are ident.ParsePattern's (the ones the
// access package matches with); on top of them p must be at most
// MaxIdentityLength printable ASCII characters without spaces, and name
// "anonymous" only when unauthenticated callers are allowed.
func (c *Config) checkIdentityPattern(v *validator, key, p string) {
	pat, err := ident.ParsePattern(p)
	switch {
	case err != nil:
		v.add(key, "%v, got %q", err, p)
	case len(p) > MaxIdentityLength:
		v.add(key, "must be at most %d characters, got %d", MaxIdentityLength, len(p))
	case !validIdentity(p):
		v.add(key, "must be printable ASCII characters without spaces, got %q", p)
	case pat.IsAnonymous() && !c.Auth.AllowUnauthenticated && !c.Dev:
		v.add(key, "%q matches only unauthenticated callers, who are refused unless auth.allow_unauthenticated: true", p)
	}
}

// groupRE is the rule of admin.socket_group: a numeric gid or a group
// name (letters, digits, '_', '.', '-', not starting with '-', at most 32
// characters, optionally ending in '$').
var groupRE = regexp.MustCompile(`^([0-9]{1,10}|[A-Za-z0-9_.][A-Za-z0-9_.-]{0,30}[$]?)$`)

// devClient is the client -dev mode adds after Validate; policy may name it
// in -dev mode.
const devClient = "demo"

// checkAdminListen returns whether addr is a TCP address and what is wrong
// with it, "" if nothing.
func checkAdminListen(addr string) (tcp bool, problem string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		switch {
		case !filepath.IsAbs(path):
			return false, fmt.Sprintf(`must be "unix:" and an absolute path, or host:port, got %q`, addr)
		case len(path) > maxUnixPath:
			return false, fmt.Sprintf("unix socket path must be at most %d bytes, got %d", maxUnixPath, len(path))
		case strings.ContainsRune(path, 0):
			return false, "unix socket path must not contain a NUL byte"
		}
		return false, ""
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return true, fmt.Sprintf(`must be "unix:/absolute/path" or host:port, got %q`, addr)
	}
	if p := checkListen(addr); p != "" {
		return true, p
	}
	return true, ""
}

// validIdentity reports whether id is 1-MaxIdentityLength printable ASCII
// bytes without spaces.
func validIdentity(id string) bool {
	if len(id) < 1 || len(id) > MaxIdentityLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// validateKubernetesAuth checks auth.kubernetes.
func (c *Config) validateKubernetesAuth(v *validator) {
	k := c.Auth.Kubernetes
	switch {
	case k.IssuerURL == "":
		if k.JWKSFile != "" {
			v.add("auth.kubernetes.jwks_file", "needs auth.kubernetes.issuer_url (the tokens' \"iss\")")
		}
	case strings.TrimSpace(k.IssuerURL) != k.IssuerURL || strings.ContainsAny(k.IssuerURL, " \t\r\n"):
		v.add("auth.kubernetes.issuer_url", "must not contain spaces")
	case k.JWKSFile == "":
		if err := checkTokenURL(k.IssuerURL); err != "" {
			v.add("auth.kubernetes.issuer_url", "without jwks_file the keys are found by OpenID discovery, so it %s", err)
		}
	}
	if a := k.Audience; a == "" || len(a) > 256 || strings.ContainsAny(a, " \t\r\n") {
		v.add("auth.kubernetes.audience", "must be 1-256 characters without spaces, got %q", a)
	}
	if k.Leeway < 0 || k.Leeway > Duration(5*time.Minute) {
		v.add("auth.kubernetes.leeway", "must be from 0 to 5m, got %s", k.Leeway)
	}
}
