package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestCheckRequest checks each request rule once, with the field path and
// rule text both edges build their answers from.
func TestCheckRequest(t *testing.T) {
	held := func(edit func(*Request)) Request {
		r := Request{Selector: Selector{Client: "payments", Scopes: []string{"payments/read"}}}
		edit(&r)
		return r
	}
	pass := func(edit func(*Credentials)) Request {
		c := &Credentials{Provider: "cognito", ClientID: "abc123", ClientSecret: "s3cr3t"}
		edit(c)
		return Request{Selector: Selector{Credentials: c}}
	}
	for _, tc := range []struct {
		name      string
		req       Request
		wantField string // "" for a valid request
		wantRule  string
	}{
		{"valid held", held(func(*Request) {}), "", ""},
		{"valid pass-through", pass(func(*Credentials) {}), "", ""},
		{"no credentials", Request{}, FieldCredentials, RuleOneCredentials},
		{"both credentials", held(func(r *Request) { r.Selector.Credentials = &Credentials{} }), FieldCredentials, RuleOneCredentials},
		{"client too long", held(func(r *Request) { r.Selector.Client = strings.Repeat("c", 129) }), FieldClient, "must be at most 128 bytes"},
		{"client control", held(func(r *Request) { r.Selector.Client = "a\tb" }), FieldClient, RulePrintable},
		{"provider empty", pass(func(c *Credentials) { c.Provider = "" }), FieldProvider, RuleRequired},
		{"client_id DEL", pass(func(c *Credentials) { c.ClientID = "a\x7f" }), FieldClientID, RulePrintable},
		{"secret empty", pass(func(c *Credentials) { c.ClientSecret = "" }), FieldClientSecret, RuleRequired},
		{"secret too long", pass(func(c *Credentials) { c.ClientSecret = secret.String(strings.Repeat("s", 513)) }), FieldClientSecret, "must be at most 512 bytes"},
		{"secret NUL", pass(func(c *Credentials) { c.ClientSecret = "a\x00" }), FieldClientSecret, RuleSecretChars},
		{"secret invalid UTF-8", pass(func(c *Credentials) { c.ClientSecret = "\xff" }), FieldClientSecret, RuleSecretChars},
		{"secret non-ASCII", pass(func(c *Credentials) { c.ClientSecret = "sécret" }), "", ""},
		{"50 scopes", held(func(r *Request) { r.Selector.Scopes = make([]string, 50); fill(r.Selector.Scopes) }), "", ""},
		{"51 scopes", held(func(r *Request) { r.Selector.Scopes = make([]string, 51); fill(r.Selector.Scopes) }), FieldScopes, RuleTooManyScopes},
		{"repeated scopes", held(func(r *Request) { r.Selector.Scopes = []string{"b", "a", "b"} }), "", ""},
		{"scope empty", held(func(r *Request) { r.Selector.Scopes = []string{"a", ""} }), "selector.scopes[1]", RuleScopeEmpty},
		{"scope 256 bytes", held(func(r *Request) { r.Selector.Scopes = []string{strings.Repeat("a", 256)} }), "", ""},
		{"scope 257 bytes", held(func(r *Request) { r.Selector.Scopes = []string{strings.Repeat("a", 257)} }), "selector.scopes[0]", "must be at most 256 bytes"},
		{"scope quote", held(func(r *Request) { r.Selector.Scopes = []string{"a", "b", `c"`} }), "selector.scopes[2]", RuleScopeChars},
		{"audience too long", held(func(r *Request) { r.Selector.Audience = strings.Repeat("a", 1025) }), FieldAudience, "must be at most 1024 bytes"},
		{"audience newline", held(func(r *Request) { r.Selector.Audience = "a\n" }), FieldAudience, RulePrintable},
		{"resource urn", held(func(r *Request) { r.Selector.Resource = "urn:x" }), "", ""},
		{"resource relative", held(func(r *Request) { r.Selector.Resource = "/x" }), FieldResource, RuleResourceURI},
		{"resource fragment", held(func(r *Request) { r.Selector.Resource = "https://a/#" }), FieldResource, RuleResourceURI},
		{"min_ttl 24h", held(func(r *Request) { r.MinTTL = MaxMinTTL }), "", ""},
		{"min_ttl negative", held(func(r *Request) { r.MinTTL = -time.Nanosecond }), FieldMinTTL, RuleMinTTLRange},
		{"min_ttl over 24h", held(func(r *Request) { r.MinTTL = MaxMinTTL + 1 }), FieldMinTTL, RuleMinTTLRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe := CheckRequest(tc.req)
			if tc.wantField == "" {
				if fe != nil {
					t.Fatalf("CheckRequest: got %v, want nil", fe)
				}
				return
			}
			if fe == nil || fe.Field != tc.wantField || fe.Rule != tc.wantRule || fe.Kind != ErrInvalidArgument {
				t.Fatalf("CheckRequest: got %#v, want field %q rule %q kind ErrInvalidArgument", fe, tc.wantField, tc.wantRule)
			}
		})
	}
}

// fill sets distinct valid scopes.
func fill(scopes []string) {
	for i := range scopes {
		scopes[i] = "s" + strings.Repeat("x", i)
	}
}

// TestOneScopeRule: the broker's scope rule is upstream.ScopeRule, the one
// scope checker, for every byte value.
func TestOneScopeRule(t *testing.T) {
	for b := 0; b < 256; b++ {
		s := "a" + string([]byte{byte(b)})
		fe := CheckScopes(FieldScopes, []string{s})
		rule := upstream.ScopeRule(s)
		if (fe == nil) != (rule == "") || (fe != nil && fe.Rule != rule) {
			t.Errorf("byte %#x: CheckScopes %v, upstream.ScopeRule %q", b, fe, rule)
		}
		inRFC := b == 0x21 || (b >= 0x23 && b <= 0x5b) || (b >= 0x5d && b <= 0x7e)
		if inRFC != (rule == "") {
			t.Errorf("byte %#x: got rule %q, want valid=%v (RFC 6749 scope-token)", b, rule, inRFC)
		}
	}
}

// TestScopeIndex checks the parsing of scope field paths.
func TestScopeIndex(t *testing.T) {
	for _, tc := range []struct {
		field string
		want  int
		ok    bool
	}{
		{ScopeField(FieldScopes, 0), 0, true},
		{ScopeField(FieldScopes, 49), 49, true},
		{FieldScopes, 0, false},
		{"selector.scopes[x]", 0, false},
		{"selector.scopes[-1]", 0, false},
		{"client_id.scopes[1]", 0, false},
	} {
		got, ok := ScopeIndex(FieldScopes, tc.field)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ScopeIndex(%q): got %d, %v, want %d, %v", tc.field, got, ok, tc.want, tc.ok)
		}
	}
}
