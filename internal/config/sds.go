package config

import (
	"fmt"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/sds/sdsname"
)

// SDS configures the Secret Discovery Service that serves tokens to Envoy
// sidecars (package sds).
type SDS struct {
	// Enabled serves envoy.service.secret.v3.SecretDiscoveryService.
	// Default false.
	Enabled bool `yaml:"enabled"`
	// Listen is where: "" (the default) for the gRPC listener (listen,
	// with its TLS and authentication), or an address of its own:
	// "unix:/absolute/path" (a unix socket, at most 107 bytes of path, as
	// sidecars usually reach SDS) or host:port (with tls when not
	// loopback, unless insecure_allow_remote). Its callers are
	// authenticated and authorized like the gRPC listener's.
	Listen string `yaml:"listen"`
	// SocketMode is the permission of a unix sds.listen socket, an octal
	// string such as "0660". Default "0600".
	SocketMode string `yaml:"socket_mode"`
	// SocketGroup is the group of a unix sds.listen socket: a group name
	// or a numeric gid. Default "": the process's group.
	SocketGroup string `yaml:"socket_group"`
	// AllowParsedNames also serves secrets named
	// "oauth2:CLIENT:SCOPE+SCOPE" (or "oauth2:CLIENT"), a broker-held
	// client and its scopes, without an sds_secrets entry; the policy
	// still decides who may have them. Default false.
	AllowParsedNames bool `yaml:"allow_parsed_names"`
	// HeaderFormat is the secret's value, the header value Envoy sends,
	// with "%s" where the token goes: exactly one "%s", no other '%', no
	// control characters. Default "Bearer %s".
	HeaderFormat string `yaml:"header_format"`
}

// SDSSecret names a token for SDS: a broker-held client, scopes and
// audience or resource.
type SDSSecret struct {
	// Name is the secret's name in Envoy's sds_config: 1-1024 bytes of
	// UTF-8 without control characters, unique, not starting with
	// "oauth2:" (the parsed names' prefix).
	Name string `yaml:"name"`
	// Client is the name of a configured client.
	Client string `yaml:"client"`
	// Scopes are the scopes to request. Default none (the client's
	// default scopes).
	Scopes []string `yaml:"scopes"`
	// Audience is sent upstream as `audience` when set.
	Audience string `yaml:"audience"`
	// Resource is sent upstream as `resource` when set (RFC 8707).
	Resource string `yaml:"resource"`
}

// Selector returns the token selector of s.
func (s SDSSecret) Selector() broker.Selector {
	return broker.Selector{Client: s.Client, Scopes: s.Scopes, Audience: s.Audience, Resource: s.Resource}
}

// defaultSDS is the sds section's default.
func defaultSDS() SDS {
	return SDS{SocketMode: "0600", HeaderFormat: sdsname.DefaultHeaderFormat}
}

// validateSDS checks the sds section and sds_secrets. clients holds the
// name of every configured client.
func (c *Config) validateSDS(v *validator, clients map[string]bool) {
	s := c.SDS
	if a := s.Listen; a != "" {
		tcp, problem := checkAdminListen(a)
		switch {
		case problem != "":
			v.add("sds.listen", "%s", problem)
		case a == c.Listen || a == c.Admin.Listen || a == c.HTTPListen:
			v.add("sds.listen", "must differ from listen, admin.listen and http_listen (leave it empty to serve SDS on the gRPC listener)")
		case tcp:
			c.checkRemote(v, "sds.listen", a, c.TLS.Enabled() || c.InsecureAllowRemote)
		}
	}
	if _, err := (Admin{SocketMode: s.SocketMode}).SocketPerm(); err != nil {
		v.add("sds.socket_mode", "%v", err)
	}
	if g := s.SocketGroup; g != "" {
		switch {
		case !strings.HasPrefix(s.Listen, "unix:"):
			v.add("sds.socket_group", `applies only to a unix socket (sds.listen: "unix:/path"), got sds.listen %q`, s.Listen)
		case !groupRE.MatchString(g):
			v.add("sds.socket_group", "must be a group name or a numeric gid, got %q", g)
		}
	}
	if _, _, err := sdsname.SplitHeaderFormat(s.HeaderFormat); err != nil {
		v.add("sds.header_format", "%v", err)
	}

	names := make(map[string]int, len(c.SDSSecrets))
	for i, sec := range c.SDSSecrets {
		key := fmt.Sprintf("sds_secrets[%d]", i)
		first, dup := names[sec.Name]
		switch err := sdsname.CheckName(sec.Name); {
		case err != nil:
			v.add(key+".name", "%v", err)
		case strings.HasPrefix(sec.Name, sdsname.ParsedPrefix):
			v.add(key+".name", "must not start with %q, the prefix of parsed names, got %q", sdsname.ParsedPrefix, sec.Name)
		case dup:
			v.add(key+".name", "%q is already the name of sds_secrets[%d]", sec.Name, first)
		default:
			names[sec.Name] = i
		}
		switch {
		case sec.Client == "":
			v.add(key+".client", "must name a configured client")
		case !clients[sec.Client] && !(c.Dev && sec.Client == devClient):
			v.add(key+".client", "%q is not a configured client", sec.Client)
		}
		sel := sec.Selector()
		if sel.Client == "" {
			sel.Client = "x" // reported above
		}
		if fe := broker.CheckSelector(sel); fe != nil {
			v.add(key+"."+sdsField(fe.Field), "%s", fe.Rule)
		}
	}
}

// sdsField turns the API field path of a selector rule ("selector.scopes[1]")
// into the key under an sds_secrets entry ("scopes[1]").
func sdsField(field string) string {
	return strings.TrimPrefix(field, "selector.")
}
