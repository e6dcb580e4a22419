package access

import (
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/access/ident"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Rule grants what one or more identities may do.
type Rule struct {
	// Identity is a typed identity name (package ident: "spiffe://…",
	// "dns:NAME", "uri:URI", "apikey:NAME"), a prefix ending in "/*"
	// (matching every name that starts with the prefix and has something
	// after its slash) or "KIND:*" (every identity of the kind), "*" for
	// every authenticated identity, or "anonymous" for unauthenticated
	// callers (which "*" does not match). An untyped name is an error.
	Identity string
	// Clients are the broker-held clients the identity may use; "*" grants
	// all of them.
	Clients []string
	// Scopes are the scopes the identity may request; "*" grants any scope,
	// and is also what allows a request without scopes (the provider's
	// default, possibly every scope of the client).
	Scopes []string
	// Passthrough allows the identity to present its own client
	// credentials.
	Passthrough bool
	// Verify allows the identity to verify tokens (TokenVerifierService
	// and the Envoy ext_authz Check).
	Verify bool
}

// rule is a checked Rule.
type rule struct {
	identity    ident.Pattern
	clients     set
	scopes      set
	passthrough bool
	verify      bool
}

// set is a list of names with an optional "*" wildcard.
type set struct {
	all   bool
	names map[string]struct{}
}

func (s set) has(name string) bool {
	if s.all {
		return true
	}
	_, ok := s.names[name]
	return ok
}

// Policy says which identities may use which clients and scopes. It is
// immutable and safe for concurrent use. A nil Policy, or one without rules,
// allows everything.
type Policy struct {
	rules []rule
}

// NewPolicy checks rules and returns them as a Policy. An error is a
// *ConfigError naming the entry, such as "rules[1].identity" or
// "rules[0].scopes[2]".
func NewPolicy(rules []Rule) (*Policy, error) {
	p := &Policy{rules: make([]rule, 0, len(rules))}
	for i, r := range rules {
		field := indexed("rules", i)
		id, err := ident.ParsePattern(r.Identity)
		if err != nil {
			return nil, &ConfigError{Field: field + ".identity", Rule: err.Error()}
		}
		clients, err := newSet(field+".clients", r.Clients)
		if err != nil {
			return nil, err
		}
		scopes, err := newSet(field+".scopes", r.Scopes)
		if err != nil {
			return nil, err
		}
		p.rules = append(p.rules, rule{identity: id, clients: clients, scopes: scopes, passthrough: r.Passthrough, verify: r.Verify})
	}
	return p, nil
}

func newSet(field string, list []string) (set, error) {
	s := set{names: make(map[string]struct{}, len(list))}
	for i, name := range list {
		switch {
		case name == "*":
			s.all = true
		case name == "":
			return set{}, &ConfigError{Field: indexed(field, i), Rule: "must not be empty"}
		case strings.TrimSpace(name) != name:
			return set{}, &ConfigError{Field: indexed(field, i), Rule: "must not have leading or trailing spaces"}
		case strings.Contains(name, "*"):
			return set{}, &ConfigError{Field: indexed(field, i), Rule: `"*" is allowed only as the whole entry (meaning all)`}
		default:
			s.names[name] = struct{}{}
		}
	}
	return s, nil
}

// parsePatterns parses every entry of list, naming the failing one as
// field[i] in the error.
func parsePatterns(field string, list []string) ([]ident.Pattern, error) {
	out := make([]ident.Pattern, 0, len(list))
	for i, s := range list {
		p, err := ident.ParsePattern(s)
		if err != nil {
			return nil, &ConfigError{Field: indexed(field, i), Rule: err.Error()}
		}
		out = append(out, p)
	}
	return out, nil
}

// matchAny reports whether any of ps matches name.
func matchAny(ps []ident.Pattern, name string) bool {
	for _, p := range ps {
		if p.Matches(name) {
			return true
		}
	}
	return false
}

// anonymousRule returns the index of the first rule naming the anonymous
// caller, or -1.
func (p *Policy) anonymousRule() int {
	if p == nil {
		return -1
	}
	for i := range p.rules {
		if p.rules[i].identity.IsAnonymous() {
			return i
		}
	}
	return -1
}

// Empty reports whether the policy has no rules, in which case it allows
// everything.
func (p *Policy) Empty() bool { return p == nil || len(p.rules) == 0 }

// Authorize reports whether the policy lets id obtain a token for sel. The
// grants of every rule whose identity pattern matches id's typed name are
// combined (the anonymous caller is matched only by rules naming
// "anonymous", never by "*"); the request must be covered by them:
//   - a broker-held client (sel.Client) must be granted by name or by "*";
//   - pass-through credentials (sel.Credentials) need Passthrough;
//   - every requested scope must be granted by name or by "*", and a request
//     without scopes needs "*".
//
// A refusal is a *DeniedError (errors.Is(err, ErrPermissionDenied)) naming
// the first client or scope refused. A nil or empty policy allows everything.
func (p *Policy) Authorize(id Identity, sel broker.Selector) error {
	if p.Empty() {
		return nil
	}
	var matched []*rule
	for i := range p.rules {
		if p.rules[i].identity.Matches(id.Name) {
			matched = append(matched, &p.rules[i])
		}
	}
	grants := func(ok func(r *rule) bool) bool {
		for _, r := range matched {
			if ok(r) {
				return true
			}
		}
		return false
	}
	if sel.Credentials != nil && !grants(func(r *rule) bool { return r.passthrough }) {
		return denied("identity may not present its own credentials")
	}
	if sel.Client != "" && !grants(func(r *rule) bool { return r.clients.has(sel.Client) }) {
		return denied("identity may not use client %q", sel.Client)
	}
	if len(sel.Scopes) == 0 && !grants(func(r *rule) bool { return r.scopes.all }) {
		return denied("identity may not request the provider's default scopes; name the scopes")
	}
	for _, s := range sel.Scopes {
		if !grants(func(r *rule) bool { return r.scopes.has(s) }) {
			return denied("identity may not request scope %q", s)
		}
	}
	return nil
}

// AuthorizeVerify reports whether the policy lets id verify tokens
// (VerifyToken, ext_authz Check): some rule matching id must grant Verify.
// A refusal is a *DeniedError. A nil or empty policy allows everything.
func (p *Policy) AuthorizeVerify(id Identity) error {
	if p.Empty() {
		return nil
	}
	for i := range p.rules {
		if p.rules[i].verify && p.rules[i].identity.Matches(id.Name) {
			return nil
		}
	}
	return denied("identity may not verify tokens (no policy rule with verify: true matches it)")
}
