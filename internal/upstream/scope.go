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
