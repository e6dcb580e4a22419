package broker

import (
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// This file holds the request rules: what a Request must be before the
// broker serves it. They are defined here once; the gRPC edge
// (internal/server) and the HTTP token endpoint (internal/httpapi) convert
// their input to a Request, call CheckRequest, and only rename the field
// of a *FieldError for their callers (the gRPC API's "selector.scopes[2]"
// is the HTTP endpoint's "scope"). The broker checks them again itself.

// Request limits. They are part of the API contract (see the comments in
// proto/tokenbroker/v1/tokenbroker.proto).
const (
	// MaxNameBytes bounds a broker-held client name, a provider name and a
	// client id.
	MaxNameBytes = 128
	// MaxSecretBytes bounds a pass-through client secret.
	MaxSecretBytes = 512
	// MaxScopes is the most scopes one request may name.
	MaxScopes = 50
	// MaxScopeBytes bounds one scope.
	MaxScopeBytes = upstream.MaxScopeBytes
	// MaxAudienceBytes bounds the audience and the resource.
	MaxAudienceBytes = 1024
	// MaxMinTTL is the largest min_ttl a caller may ask for.
	MaxMinTTL = 24 * time.Hour
)

// Rule texts. They are short, lowercase, and never contain the offending
// value, so a secret sent in the wrong field is not echoed back.
const (
	RuleRequired       = "is required"
	RuleOneCredentials = "exactly one of client or client_credentials is required"
	RulePrintable      = "must be printable ASCII"
	RuleScopeEmpty     = upstream.RuleScopeEmpty
	RuleScopeChars     = upstream.RuleScopeChars
	RuleSecretChars    = "must be valid UTF-8 without NUL bytes"
	RuleResourceURI    = "must be an absolute URI without a fragment (RFC 8707)"
	RuleMinTTLRange    = "must be between 0 and 24h"
	RuleTooManyScopes  = "must have at most 50 entries"
)

// Field paths, as the gRPC API names them. A scope's path is
// FieldScopes + "[i]" (see ScopeField).
const (
	FieldSelector     = "selector"
	FieldCredentials  = "selector.credentials"
	FieldClient       = "selector.client"
	FieldProvider     = "selector.client_credentials.provider"
	FieldClientID     = "selector.client_credentials.client_id"
	FieldClientSecret = "selector.client_credentials.client_secret"
	FieldScopes       = "selector.scopes"
	FieldAudience     = "selector.audience"
	FieldResource     = "selector.resource"
	FieldMinTTL       = "min_ttl"
	FieldParams       = "selector.params"
)

// CheckRequest checks every request rule of r and returns the first one
// broken, as a *FieldError of kind ErrInvalidArgument naming the field by
// its API path (for example "selector.scopes[3]"), or nil. The value itself
// is never part of the error. The rules are those of CheckSelector, plus:
// MinTTL is in [0, MaxMinTTL].
//
// Scopes are checked, not normalised: repeated scopes are allowed (the
// broker sorts and de-duplicates them for the cache key).
func CheckRequest(r Request) *FieldError {
	if fe := CheckSelector(r.Selector); fe != nil {
		return fe
	}
	if r.MinTTL < 0 || r.MinTTL > MaxMinTTL {
		return invalid(FieldMinTTL, RuleMinTTLRange)
	}
	return nil
}

// CheckSelector checks every rule of a selector and returns the first one
// broken (see CheckRequest), or nil. The rules:
//   - exactly one of Client and Credentials is set;
//   - Client, Credentials.Provider and Credentials.ClientID are 1 to
//     MaxNameBytes bytes of printable ASCII (%x20-7E);
//   - Credentials.ClientSecret is 1 to MaxSecretBytes bytes of valid UTF-8
//     without NUL (NUL separates the fields of a cache key, and the token
//     endpoint receives the secret URL-encoded, so any other character is
//     allowed);
//   - at most MaxScopes scopes, each valid by upstream.ScopeRule (1 to
//     MaxScopeBytes bytes of RFC 6749 section 3.3 scope-token characters);
//   - Audience and Resource are at most MaxAudienceBytes bytes of
//     printable ASCII; a Resource, when set, is an absolute URI without a
//     fragment (RFC 8707 section 2).
func CheckSelector(s Selector) *FieldError {
	switch {
	case (s.Client == "") == (s.Credentials == nil):
		return invalid(FieldCredentials, RuleOneCredentials)
	case s.Credentials == nil:
		if fe := CheckName(FieldClient, s.Client); fe != nil {
			return fe
		}
	default:
		if fe := checkCredentials(s.Credentials); fe != nil {
			return fe
		}
	}
	if fe := CheckScopes(FieldScopes, s.Scopes); fe != nil {
		return fe
	}
	if fe := checkPrintable(FieldAudience, s.Audience, 0, MaxAudienceBytes); fe != nil {
		return fe
	}
	if fe := checkParams(s.Params); fe != nil {
		return fe
	}
	return checkResource(s.Resource)
}

// checkParams checks a caller's form parameters: at most
// upstream.MaxParams, each valid by upstream.ParamRule. Whether the
// client allows them is the broker's check (resolve).
func checkParams(params map[string]string) *FieldError {
	if len(params) > upstream.MaxParams {
		return invalid(FieldParams, "must have at most "+strconv.Itoa(upstream.MaxParams)+" entries")
	}
	for name, v := range params {
		if rule := upstream.ParamRule(name, v); rule != "" {
			return invalid(FieldParams, rule)
		}
	}
	return nil
}

// checkCredentials checks pass-through credentials.
func checkCredentials(c *Credentials) *FieldError {
	if fe := CheckName(FieldProvider, c.Provider); fe != nil {
		return fe
	}
	if fe := CheckName(FieldClientID, c.ClientID); fe != nil {
		return fe
	}
	s := c.ClientSecret.Reveal()
	switch {
	case s == "":
		return invalid(FieldClientSecret, RuleRequired)
	case len(s) > MaxSecretBytes:
		return invalid(FieldClientSecret, ruleAtMostBytes(MaxSecretBytes))
	case !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0:
		return invalid(FieldClientSecret, RuleSecretChars)
	}
	return nil
}

// CheckName checks a required name (a client name, a provider name, a
// client id) called field: 1 to MaxNameBytes bytes of printable ASCII.
func CheckName(field, v string) *FieldError {
	return checkPrintable(field, v, 1, MaxNameBytes)
}

// CheckScopes checks a scope list called field: at most MaxScopes
// entries, each valid by upstream.ScopeRule and named field[i] when not.
func CheckScopes(field string, scopes []string) *FieldError {
	if len(scopes) > MaxScopes {
		return invalid(field, RuleTooManyScopes)
	}
	for i, s := range scopes {
		if rule := upstream.ScopeRule(s); rule != "" {
			return invalid(ScopeField(field, i), rule)
		}
	}
	return nil
}

// ScopeField is the path of scope i of the scope list called field, for
// example "selector.scopes[2]".
func ScopeField(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}

// ScopeIndex returns i when field is ScopeField(list, i), and whether it
// is.
func ScopeIndex(list, field string) (int, bool) {
	rest, ok := strings.CutPrefix(field, list+"[")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 {
		return 0, false
	}
	return i, true
}

// checkPrintable checks that v has min to max bytes, all printable ASCII
// (%x20-7E). An empty v with min 1 is reported as missing.
func checkPrintable(field, v string, min, max int) *FieldError {
	if len(v) < min {
		return invalid(field, RuleRequired)
	}
	if len(v) > max {
		return invalid(field, ruleAtMostBytes(max))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return invalid(field, RulePrintable)
		}
	}
	return nil
}

// checkResource checks the optional RFC 8707 resource indicator.
func checkResource(r string) *FieldError {
	if fe := checkPrintable(FieldResource, r, 0, MaxAudienceBytes); fe != nil || r == "" {
		return fe
	}
	// A URI has no spaces; an empty fragment ("...#") is still a fragment.
	if strings.ContainsAny(r, " #") {
		return invalid(FieldResource, RuleResourceURI)
	}
	u, err := url.Parse(r)
	if err != nil || !u.IsAbs() {
		return invalid(FieldResource, RuleResourceURI)
	}
	return nil
}

// ruleAtMostBytes is the rule of a value longer than n bytes.
func ruleAtMostBytes(n int) string {
	return "must be at most " + strconv.Itoa(n) + " bytes"
}

// invalid returns the error for a broken request rule.
func invalid(field, rule string) *FieldError {
	return &FieldError{Field: field, Rule: rule, Kind: ErrInvalidArgument}
}
