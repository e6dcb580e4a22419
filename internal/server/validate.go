package server

import (
	"maps"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Request limits. They are the broker's request rules (see
// broker.CheckRequest), restated here because they are part of this API's
// contract (see the comments in proto/tokenbroker/v1/tokenbroker.proto).
const (
	// MaxNameBytes bounds a broker-held client name, a provider name and a
	// client id.
	MaxNameBytes = broker.MaxNameBytes
	// MaxSecretBytes bounds a pass-through client secret.
	MaxSecretBytes = broker.MaxSecretBytes
	// MaxScopes is the most scopes one request may name.
	MaxScopes = broker.MaxScopes
	// MaxScopeBytes bounds one scope.
	MaxScopeBytes = broker.MaxScopeBytes
	// MaxAudienceBytes bounds the audience and the resource.
	MaxAudienceBytes = broker.MaxAudienceBytes
	// MaxMinTTL is the largest min_ttl a caller may ask for.
	MaxMinTTL = broker.MaxMinTTL
)

// Rule texts of this edge: the broker's, and the one rule of the wire
// format (a google.protobuf.Duration that is not valid).
const (
	ruleRequired   = broker.RuleRequired
	ruleScopeChars = broker.RuleScopeChars
	ruleDuration   = "must be a valid duration"
)

// Field paths, as the API names them. The broker's rules name the fields
// of a request by these same paths, so this edge maps no names.
const (
	fieldSelector = broker.FieldSelector
	fieldClient   = broker.FieldClient
	fieldProvider = broker.FieldProvider
	fieldMinTTL   = broker.FieldMinTTL
)

// toBrokerRequest converts a GetTokenRequest to a broker.Request and checks
// it with the broker's request rules (broker.CheckRequest). The first
// broken rule is returned as a *broker.FieldError of kind
// broker.ErrInvalidArgument that names the field by its API path (for
// example "selector.scopes[3]"); the value itself is never part of the
// error. Two rules belong to the wire format and are checked here: the
// selector is required, and min_ttl, when set, is a valid duration.
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
		out.MinTTL = d.AsDuration()
	}
	if fe := broker.CheckRequest(out); fe != nil {
		return broker.Request{}, fe
	}
	return out, nil
}

// toWatchRequest converts a WatchTokenRequest with the selector rules of
// GetToken (see toSelector). Errors are as for toBrokerRequest; a nil
// request is reported as a missing selector.
func toWatchRequest(in *tokenbrokerv1.WatchTokenRequest) (broker.Request, error) {
	sel, err := toSelector(in.GetSelector())
	if err != nil {
		return broker.Request{}, err
	}
	return broker.Request{Selector: sel}, nil
}

// toSelector converts a TokenSelector and checks it with
// broker.CheckSelector. The error is a *broker.FieldError (see
// toBrokerRequest). A missing selector, and a client oneof set to the empty
// string, are reported here: the broker's Selector cannot tell "client set
// to empty" from "no credentials".
func toSelector(sel *tokenbrokerv1.TokenSelector) (broker.Selector, error) {
	if sel == nil {
		return broker.Selector{}, invalid(fieldSelector, ruleRequired)
	}
	var out broker.Selector
	switch c := sel.GetCredentials().(type) {
	case *tokenbrokerv1.TokenSelector_Client:
		if c.Client == "" {
			return broker.Selector{}, invalid(fieldClient, ruleRequired)
		}
		out.Client = c.Client
	case *tokenbrokerv1.TokenSelector_ClientCredentials:
		// A nil message (possible only in Go, not on the wire) counts as
		// an empty one.
		out.Credentials = &broker.Credentials{
			Provider:     c.ClientCredentials.GetProvider(),
			ClientID:     c.ClientCredentials.GetClientId(),
			ClientSecret: secret.String(c.ClientCredentials.GetClientSecret()),
		}
	}
	if scopes := sel.GetScopes(); len(scopes) > 0 {
		out.Scopes = append([]string(nil), scopes...)
	}
	out.Audience = sel.GetAudience()
	out.Resource = sel.GetResource()
	if p := sel.GetParams(); len(p) > 0 {
		out.Params = maps.Clone(p)
	}
	if fe := broker.CheckSelector(out); fe != nil {
		return broker.Selector{}, fe
	}
	return out, nil
}

// checkName checks a required name with the broker's rule for names
// (broker.CheckName).
func checkName(field, v string) error {
	if fe := broker.CheckName(field, v); fe != nil {
		return fe
	}
	return nil
}

// checkScopes checks a scope list named field with the broker's rule for
// scopes (broker.CheckScopes).
func checkScopes(field string, scopes []string) error {
	if fe := broker.CheckScopes(field, scopes); fe != nil {
		return fe
	}
	return nil
}

// invalid returns the error for a broken request rule.
func invalid(field, rule string) *broker.FieldError {
	return &broker.FieldError{Field: field, Rule: rule, Kind: broker.ErrInvalidArgument}
}
