// Package ident defines the typed names of caller identities and the
// patterns that policy rules and admin identities match them with. It has
// no dependencies, so that configuration validation and the access package
// check and match names by the same rules.
//
// Every identity name carries its kind, so that names of different kinds
// can never be mistaken for one another (a certificate whose DNS SAN spells
// a SPIFFE ID is still a DNS identity):
//
//	spiffe://TRUST-DOMAIN/PATH   a certificate's URI SAN that is a SPIFFE ID, as is
//	uri:URI                      any other URI SAN of a certificate
//	dns:NAME                     a certificate's DNS SAN
//	apikey:NAME                  a bearer API key configured with identity NAME
//	k8s:NAMESPACE:SERVICEACCOUNT a verified Kubernetes service-account token
//	anonymous                    a caller that did not authenticate
package ident

import (
	"errors"
	"net/url"
	"strings"
)

// Kind prefixes of identity names. A SPIFFE ID is its own prefix.
const (
	// SPIFFEPrefix starts every SPIFFE ID.
	SPIFFEPrefix = "spiffe://"
	// DNSPrefix starts the identity of a certificate's DNS SAN.
	DNSPrefix = "dns:"
	// URIPrefix starts the identity of a certificate's URI SAN that is not
	// a SPIFFE ID.
	URIPrefix = "uri:"
	// APIKeyPrefix starts the identity of a bearer API key.
	APIKeyPrefix = "apikey:"
	// K8sPrefix starts the identity of a caller that presented a verified
	// Kubernetes service-account token: "k8s:NAMESPACE:SERVICEACCOUNT".
	K8sPrefix = "k8s:"
	// Anonymous is the identity of a caller that did not authenticate.
	Anonymous = "anonymous"
	// Any is the pattern matching every authenticated identity (never
	// Anonymous).
	Any = "*"
)

// KindsRule lists the forms a pattern may take, for error messages.
const KindsRule = `must name its kind: "spiffe://TRUST-DOMAIN/PATH", "dns:NAME", "uri:URI", "apikey:NAME", ` +
	`"k8s:NAMESPACE:SERVICEACCOUNT" (each exact, as a prefix ending in "/*", or as "KIND:*" for every identity of the kind; ` +
	`"k8s:NAMESPACE:*" for a namespace), ` +
	`"anonymous" (unauthenticated callers) or "*" (every authenticated caller)`

// kinds are the prefixes of the typed kinds, in KindsRule's order.
var kinds = [...]string{SPIFFEPrefix, DNSPrefix, URIPrefix, APIKeyPrefix, K8sPrefix}

// DNS returns the identity of a certificate's DNS SAN name, in lower case
// (DNS names are case-insensitive; so are "dns:" patterns).
func DNS(name string) string { return DNSPrefix + strings.ToLower(name) }

// APIKey returns the identity of the API key configured with identity name.
func APIKey(name string) string { return APIKeyPrefix + name }

// K8s returns the identity of a Kubernetes service account. Namespace and
// service-account names are DNS labels and subdomains, so neither holds
// the ':' that separates them.
func K8s(namespace, serviceAccount string) string {
	return K8sPrefix + namespace + ":" + serviceAccount
}

// URI returns the identity of a certificate's URI SAN: the URI itself when
// it is a SPIFFE ID (scheme "spiffe" with a trust domain and no query,
// fragment or user info), else "uri:" and the URI. It returns "" for a nil
// or empty URI.
func URI(u *url.URL) string {
	if u == nil {
		return ""
	}
	s := u.String()
	if s == "" {
		return ""
	}
	if u.Scheme == "spiffe" && u.Host != "" && u.Opaque == "" && u.User == nil &&
		u.RawQuery == "" && u.Fragment == "" && strings.HasPrefix(s, SPIFFEPrefix) {
		return s
	}
	return URIPrefix + s
}

// Pattern names a set of identities: an exact name, a prefix ("…/*" or
// "KIND:*"), Any or Anonymous.
type Pattern struct {
	// any is true for Any.
	any bool
	// prefix is set for prefix patterns; it keeps the trailing '/' or ':'.
	prefix string
	// exact is set for exact names (Anonymous included).
	exact string
}

// ParsePattern checks s and returns it as a Pattern. The error states the
// rule s breaks without repeating s.
func ParsePattern(s string) (Pattern, error) {
	switch {
	case s == "":
		return Pattern{}, errors.New("must not be empty")
	case strings.TrimSpace(s) != s:
		return Pattern{}, errors.New("must not have leading or trailing spaces")
	case s == Any:
		return Pattern{any: true}, nil
	case s == Anonymous:
		return Pattern{exact: s}, nil
	}
	kind := ""
	for _, k := range kinds {
		if strings.HasPrefix(s, k) {
			kind = k
			break
		}
	}
	if kind == "" {
		return Pattern{}, errors.New(KindsRule)
	}
	if kind == DNSPrefix {
		s = strings.ToLower(s)
	}
	if len(s) == len(kind) {
		return Pattern{}, errors.New("must name an identity after its kind " + `"` + kind + `"`)
	}
	star := strings.IndexByte(s, '*')
	if star < 0 {
		return Pattern{exact: s}, nil
	}
	if star != len(s)-1 || (!strings.HasSuffix(s, "/*") && s != kind+"*" && !k8sNamespace(kind, s)) {
		return Pattern{}, errors.New(`"*" is allowed only alone, as a trailing "/*", as "KIND:*" or as "k8s:NAMESPACE:*"`)
	}
	return Pattern{prefix: s[:len(s)-1]}, nil
}

// k8sNamespace reports whether s is "k8s:NAMESPACE:*" with a namespace
// free of ':'.
func k8sNamespace(kind, s string) bool {
	if kind != K8sPrefix || !strings.HasSuffix(s, ":*") {
		return false
	}
	ns := s[len(K8sPrefix) : len(s)-2]
	return ns != "" && !strings.Contains(ns, ":")
}

// IsAnonymous reports whether p is the pattern Anonymous.
func (p Pattern) IsAnonymous() bool { return p.exact == Anonymous }

// Matches reports whether the identity name is matched by p. The empty
// name (no identity) is matched by nothing, and Anonymous only by the
// pattern Anonymous.
func (p Pattern) Matches(name string) bool {
	switch {
	case name == "":
		return false
	case name == Anonymous:
		return p.exact == Anonymous
	case p.any:
		return true
	case p.prefix != "":
		return len(name) > len(p.prefix) && strings.HasPrefix(name, p.prefix)
	default:
		return name == p.exact
	}
}
