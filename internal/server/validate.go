package server

import (
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Request limits. They are part of the API contract (see the comments in
// proto/tokenbroker/v1/tokenbroker.proto) and are checked before a request
// reaches the broker.
const (
	// MaxNameBytes bounds a broker-held client name, a provider name and a
	// client id.
	MaxNameBytes = 128
	// MaxSecretBytes bounds a pass-through client secret.
	MaxSecretBytes = 512
	// MaxScopes is the most scopes one request may name.
	MaxScopes = 50
	// MaxScopeBytes bounds one scope.
	MaxScopeBytes = 256
	// MaxAudienceBytes bounds the audience and the resource.
	MaxAudienceBytes = 1024
	// MaxMinTTL is the largest min_ttl a caller may ask for.
	MaxMinTTL = 24 * time.Hour
)

// Rule texts. They are short, lowercase, and never contain the offending
// value, so a secret sent in the wrong field is not echoed back.
const (
	ruleRequired     = "is required"
	ruleOneCreds     = "exactly one of client or client_credentials is required"
	rulePrintable    = "must be printable ASCII"
	ruleScopeChars   = "must contain only RFC 6749 scope-token characters (%x21 / %x23-5B / %x5D-7E)"
	ruleSecretChars  = "must be valid UTF-8 without NUL bytes"
	ruleResourceURI  = "must be an absolute URI without a fragment (RFC 8707)"
	ruleDuration     = "must be a valid duration"
	ruleMinTTLRange  = "must be between 0 and 24h"
	ruleTooManyScope = "must have at most 50 entries"
)

// Field paths, as the API names them.
const (
	fieldSelector     = "selector"
	fieldCredentials  = "selector.credentials"
	fieldClient       = "selector.client"
	fieldProvider     = "selector.client_credentials.provider"
	fieldClientID     = "selector.client_credentials.client_id"
	fieldClientSecret = "selector.client_credentials.client_secret"
	fieldScopes       = "selector.scopes"
	fieldAudience     = "selector.audience"
	fieldResource     = "selector.resource"
	fieldMinTTL       = "min_ttl"
)

// toBrokerRequest checks every rule of a GetTokenRequest and converts it to
// a broker.Request. The first broken rule is returned as a
// *broker.FieldError of kind broker.ErrInvalidArgument that names the field
// by its API path (for example "selector.scopes[3]"); the value itself is
// never part of the error.
//
// The rules are those of toSelector, plus: min_ttl, when set, is a valid
// duration in [0, 24h].
//
// toBrokerRequest never panics, whatever the input (a nil request is
// reported as a missing selector).
func toBrokerRequest(in *tokenbrokerv1.GetTokenRequest) (broker.Request, error) {
	sel, err := toSelector(in.GetSelector())
	if err != nil {
		return broker.Request{}, err
	}
	out := broker.Request{Selector: sel}
	if d := in.GetMinTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return broker.Request{}, invalid(fieldMinTTL, ruleDuration)
		}
		ttl := d.AsDuration()
		if ttl < 0 || ttl > MaxMinTTL {
			return broker.Request{}, invalid(fieldMinTTL, ruleMinTTLRange)
		}
		out.MinTTL = ttl
	}
	return out, nil
}

// toWatchRequest checks a WatchTokenRequest with the selector rules of
// GetToken (see toSelector) and converts it to a broker.Request. Errors
// are as for toBrokerRequest; a nil request is reported as a missing
// selector.
func toWatchRequest(in *tokenbrokerv1.WatchTokenRequest) (broker.Request, error) {
	sel, err := toSelector(in.GetSelector())
	if err != nil {
		return broker.Request{}, err
	}
	return broker.Request{Selector: sel}, nil
}

// toSelector checks every rule of a TokenSelector and converts it. The
// first broken rule is returned as a *broker.FieldError (see
// toBrokerRequest).
//
// The rules:
//   - selector is required, with exactly one credentials form;
//   - selector.client, and client_credentials.provider and .client_id, are
//     1-128 bytes of printable ASCII (%x20-7E);
//   - client_credentials.client_secret is 1-512 bytes of valid UTF-8
//     without NUL (NUL separates the fields of a cache key, and the token
//     endpoint receives the secret URL-encoded, so any other character is
//     allowed);
//   - at most 50 scopes, each 1-256 bytes of RFC 6749 section 3.3
//     scope-token characters (%x21 / %x23-5B / %x5D-7E);
//   - audience and resource are at most 1024 bytes of printable ASCII;
//     a resource, when set, is an absolute URI without a fragment
//     (RFC 8707 section 2).
func toSelector(sel *tokenbrokerv1.TokenSelector) (broker.Selector, error) {
	if sel == nil {
		return broker.Selector{}, invalid(fieldSelector, ruleRequired)
	}
	var out broker.Selector
	switch c := sel.GetCredentials().(type) {
	case *tokenbrokerv1.TokenSelector_Client:
		if err := checkName(fieldClient, c.Client); err != nil {
			return broker.Selector{}, err
		}
		out.Client = c.Client
	case *tokenbrokerv1.TokenSelector_ClientCredentials:
		creds, err := toCredentials(c.ClientCredentials)
		if err != nil {
			return broker.Selector{}, err
		}
		out.Credentials = creds
	default:
		return broker.Selector{}, invalid(fieldCredentials, ruleOneCreds)
	}

	scopes := sel.GetScopes()
	if err := checkScopes(fieldScopes, scopes); err != nil {
		return broker.Selector{}, err
	}
	if len(scopes) > 0 {
		out.Scopes = append([]string(nil), scopes...)
	}

	if err := checkPrintable(fieldAudience, sel.GetAudience(), 0, MaxAudienceBytes); err != nil {
		return broker.Selector{}, err
	}
	out.Audience = sel.GetAudience()
	if err := checkResource(sel.GetResource()); err != nil {
		return broker.Selector{}, err
	}
	out.Resource = sel.GetResource()
	return out, nil
}

// toCredentials checks and converts pass-through credentials. A nil message
// (possible only in Go, not on the wire) counts as an empty one.
func toCredentials(c *tokenbrokerv1.ClientCredentials) (*broker.Credentials, error) {
	if err := checkName(fieldProvider, c.GetProvider()); err != nil {
		return nil, err
	}
	if err := checkName(fieldClientID, c.GetClientId()); err != nil {
		return nil, err
	}
	s := c.GetClientSecret()
	switch {
	case s == "":
		return nil, invalid(fieldClientSecret, ruleRequired)
	case len(s) > MaxSecretBytes:
		return nil, invalid(fieldClientSecret, "must be at most "+strconv.Itoa(MaxSecretBytes)+" bytes")
	case !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0:
		return nil, invalid(fieldClientSecret, ruleSecretChars)
	}
	return &broker.Credentials{
		Provider:     c.GetProvider(),
		ClientID:     c.GetClientId(),
		ClientSecret: secret.String(s),
	}, nil
}

// checkName checks a required name of at most MaxNameBytes printable bytes.
func checkName(field, v string) error {
	return checkPrintable(field, v, 1, MaxNameBytes)
}

// checkPrintable checks that v has min to max bytes, all printable ASCII
// (%x20-7E). An empty v with min 1 is reported as missing.
func checkPrintable(field, v string, min, max int) error {
	if len(v) < min {
		return invalid(field, ruleRequired)
	}
	if len(v) > max {
		return invalid(field, "must be at most "+strconv.Itoa(max)+" bytes")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return invalid(field, rulePrintable)
		}
	}
	return nil
}

// checkScopes checks a scope list named field: at most MaxScopes entries,
// each checked by checkScope as field[i].
func checkScopes(field string, scopes []string) error {
	if len(scopes) > MaxScopes {
		return invalid(field, ruleTooManyScope)
	}
	for i, s := range scopes {
		if err := checkScope(field+"["+strconv.Itoa(i)+"]", s); err != nil {
			return err
		}
	}
	return nil
}

// checkScope checks one scope named field: 1-MaxScopeBytes bytes of
// scope-token characters.
func checkScope(field, s string) error {
	switch {
	case s == "":
		return invalid(field, "must not be empty")
	case len(s) > MaxScopeBytes:
		return invalid(field, "must be at most "+strconv.Itoa(MaxScopeBytes)+" bytes")
	}
	for j := 0; j < len(s); j++ {
		if !isScopeChar(s[j]) {
			return invalid(field, ruleScopeChars)
		}
	}
	return nil
}

// isScopeChar reports whether b may appear in an RFC 6749 scope-token:
// %x21 / %x23-5B / %x5D-7E (printable ASCII except space, '"' and '\').
func isScopeChar(b byte) bool {
	return b == 0x21 || (b >= 0x23 && b <= 0x5b) || (b >= 0x5d && b <= 0x7e)
}

// checkResource checks the optional RFC 8707 resource indicator.
func checkResource(r string) error {
	if err := checkPrintable(fieldResource, r, 0, MaxAudienceBytes); err != nil || r == "" {
		return err
	}
	// A URI has no spaces; an empty fragment ("...#") is still a fragment.
	if strings.ContainsAny(r, " #") {
		return invalid(fieldResource, ruleResourceURI)
	}
	u, err := url.Parse(r)
	if err != nil || !u.IsAbs() {
		return invalid(fieldResource, ruleResourceURI)
	}
	return nil
}

// invalid returns the error for a broken request rule.
func invalid(field, rule string) *broker.FieldError {
	return &broker.FieldError{Field: field, Rule: rule, Kind: broker.ErrInvalidArgument}
}
