package access

import (
	"errors"
	"strings"
)

// A pattern names identities: an exact identity name, a prefix ending in
// "/*" that matches every name beginning with the prefix (and its slash)
// followed by at least one more character, or a lone "*" that matches every
// identity.
type pattern struct {
	// any is true for the lone "*".
	any bool
	// prefix is set for "prefix/*" patterns; it keeps the trailing slash.
	prefix string
	// exact is set for exact names.
	exact string
}

// parsePattern checks s and returns it as a pattern. The error states the
// rule s breaks without repeating s.
func parsePattern(s string) (pattern, error) {
	switch {
	case s == "":
		return pattern{}, errors.New("must not be empty")
	case strings.TrimSpace(s) != s:
		return pattern{}, errors.New("must not have leading or trailing spaces")
	case s == "*":
		return pattern{any: true}, nil
	}
	star := strings.IndexByte(s, '*')
	if star < 0 {
		return pattern{exact: s}, nil
	}
	if star != len(s)-1 || !strings.HasSuffix(s, "/*") {
		return pattern{}, errors.New(`"*" is allowed only alone or as a trailing "/*"`)
	}
	return pattern{prefix: s[:len(s)-1]}, nil
}

// matches reports whether the identity name is matched by p. The empty name
// (no identity) is matched by nothing.
func (p pattern) matches(name string) bool {
	switch {
	case name == "":
		return false
	case p.any:
		return true
	case p.prefix != "":
		return len(name) > len(p.prefix) && strings.HasPrefix(name, p.prefix)
	default:
		return name == p.exact
	}
}

// parsePatterns parses every entry of list, naming the failing one as
// field[i] in the error.
func parsePatterns(field string, list []string) ([]pattern, error) {
	out := make([]pattern, 0, len(list))
	for i, s := range list {
		p, err := parsePattern(s)
		if err != nil {
			return nil, &ConfigError{Field: indexed(field, i), Rule: err.Error()}
		}
		out = append(out, p)
	}
	return out, nil
}

// matchAny reports whether any of ps matches name.
func matchAny(ps []pattern, name string) bool {
	for _, p := range ps {
		if p.matches(name) {
			return true
		}
	}
	return false
}
