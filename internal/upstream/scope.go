package upstream

import "strconv"

// MaxScopeBytes bounds one scope. It is part of the API contract: the gRPC
// and HTTP edges and the broker refuse longer scopes with the same rule.
const MaxScopeBytes = 256

// The rules a scope may break, as ScopeRule states them. They never
// contain the offending value.
const (
	// RuleScopeEmpty: the scope is the empty string.
	RuleScopeEmpty = "must not be empty"
	// RuleScopeChars: the scope holds a character outside RFC 6749
	// section 3.3's scope-token.
	RuleScopeChars = "must contain only RFC 6749 scope-token characters (%x21 / %x23-5B / %x5D-7E)"
)

// ruleScopeTooLong is the rule a scope longer than MaxScopeBytes breaks.
var ruleScopeTooLong = "must be at most " + strconv.Itoa(MaxScopeBytes) + " bytes"

// ScopeRule returns the rule s breaks as one scope, or "" when s is a
// valid scope: 1 to MaxScopeBytes bytes of RFC 6749 section 3.3
// scope-token characters (scope-token = 1*( %x21 / %x23-5B / %x5D-7E ):
// printable ASCII without space, '"' and '\'). It is the one scope checker
// of tokenbroker: the request rules of the broker (and so of every edge),
// the upstream client's own request check and the configuration's policy
// scopes all use it.
func ScopeRule(s string) string {
	switch {
	case s == "":
		return RuleScopeEmpty
	case len(s) > MaxScopeBytes:
		return ruleScopeTooLong
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b != 0x21 && (b < 0x23 || b > 0x5b) && (b < 0x5d || b > 0x7e) {
			return RuleScopeChars
		}
	}
	return ""
}

// Bounds of the extra form parameters of a request (Request.Params).
const (
	// MaxParamNameBytes bounds a parameter's name.
	MaxParamNameBytes = 64
	// MaxParamValueBytes bounds a parameter's value.
	MaxParamValueBytes = 1024
	// MaxParams bounds how many extra parameters one request carries.
	MaxParams = 16
)

// reservedParams are the form parameters the client sets itself: a
// configured or caller-passed parameter may not name one.
var reservedParams = map[string]bool{
	"grant_type": true, "scope": true, "audience": true, "resource": true,
	"client_id": true, "client_secret": true, "client_assertion": true, "client_assertion_type": true,
}

// ReservedParam reports whether name is a form parameter the client sets
// itself (grant_type, scope, audience, resource and the client
// authentication's), which extra parameters may not name.
func ReservedParam(name string) bool { return reservedParams[name] }

// ParamRule returns the rule an extra form parameter breaks, or "" when it
// is valid: a name of 1 to MaxParamNameBytes bytes of [A-Za-z0-9_.-] that
// is not reserved, and a value of at most MaxParamValueBytes printable
// ASCII bytes (space included). It never quotes the value.
func ParamRule(name, value string) string {
	switch {
	case name == "" || len(name) > MaxParamNameBytes:
		return "name must be 1-" + strconv.Itoa(MaxParamNameBytes) + " bytes"
	case reservedParams[name]:
		return "name must not be a parameter the broker sets itself (grant_type, scope, audience, resource, client_id, client_secret, client_assertion, client_assertion_type)"
	case len(value) > MaxParamValueBytes:
		return "value must be at most " + strconv.Itoa(MaxParamValueBytes) + " bytes"
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '.' || b == '-') {
			return "name must contain only A-Z, a-z, 0-9, '_', '.' and '-'"
		}
	}
	for i := 0; i < len(value); i++ {
		if b := value[i]; b < 0x20 || b > 0x7e {
			return "value must be printable ASCII"
		}
	}
	return ""
}
