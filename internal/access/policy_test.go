package access

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

func mustPolicy(t testing.TB, rules []Rule) *Policy {
	t.Helper()
	p, err := NewPolicy(rules)
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return p
}

func TestPolicyAuthorize(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, []Rule{
		{Identity: "spiffe://prod/ns/payments/sa/worker", Clients: []string{"payments"}, Scopes: []string{"payments/read"}},
		{Identity: "spiffe://prod/ns/payments/*", Clients: []string{"payments-batch"}, Scopes: []string{"payments/export"}},
		{Identity: "spiffe://prod/ns/reports/*", Clients: []string{"*"}, Scopes: []string{"*"}},
		{Identity: "*", Scopes: []string{"openid"}},
		{Identity: "partner", Passthrough: true, Scopes: []string{"partner/read"}},
	})
	const worker = "spiffe://prod/ns/payments/sa/worker"
	creds := &broker.Credentials{Provider: "cognito", ClientID: "abc", ClientSecret: secret.String(knownSecret)}
	client := func(name string, scopes ...string) broker.Selector {
		return broker.Selector{Client: name, Scopes: scopes}
	}
	own := func(scopes ...string) broker.Selector { return broker.Selector{Credentials: creds, Scopes: scopes} }
	const (
		defaultScopes = "identity may not request the provider's default scopes; name the scopes"
		ownCreds      = "identity may not present its own credentials"
	)

	tests := []struct {
		name     string
		identity string
		sel      broker.Selector
		want     string // "" means allowed
	}{
		{"exact rule grants client and scope", worker, client("payments", "payments/read"), ""},
		{"repeated scopes", worker, client("payments", "payments/read", "payments/read"), ""},
		{"client not granted", worker, client("reports", "payments/read"), `identity may not use client "reports"`},
		{"scope subset", worker, client("payments", "payments/read", "openid"), ""},
		{"scope outside the grant", worker, client("payments", "payments/read", "payments/write"), `identity may not request scope "payments/write"`},
		{"empty scopes need *", worker, client("payments"), defaultScopes},
		{"passthrough denied", worker, own("payments/read"), ownCreds},
		{"prefix rule adds a client", worker, client("payments-batch", "payments/export"), ""},
		{"union of several matching rules", worker, client("payments", "payments/read", "payments/export", "openid"), ""},
		{"prefix rule for a sibling", "spiffe://prod/ns/payments/sa/cron", client("payments-batch", "payments/export"), ""},
		{"prefix rule does not grant the exact rule's client", "spiffe://prod/ns/payments/sa/cron", client("payments", "payments/read"), `identity may not use client "payments"`},
		{"prefix needs its slash", "spiffe://prod/ns/payments", client("payments-batch", "payments/export"), `identity may not use client "payments-batch"`},
		{"prefix needs something after the slash", "spiffe://prod/ns/payments/", client("payments-batch", "payments/export"), `identity may not use client "payments-batch"`},
		{"prefix is not a string prefix", "spiffe://prod/ns/paymentsx/sa/worker", client("payments-batch", "payments/export"), `identity may not use client "payments-batch"`},
		{"wildcard client and scopes", "spiffe://prod/ns/reports/sa/nightly", client("anything", "a/b", "c/d"), ""},
		{"wildcard scopes allow empty scopes", "spiffe://prod/ns/reports/sa/nightly", client("anything"), ""},
		{"wildcard rule does not grant passthrough", "spiffe://prod/ns/reports/sa/nightly", own("a/b"), ownCreds},
		{"passthrough allowed", "partner", own("partner/read"), ""},
		{"passthrough with scopes from * rule", "partner", own("partner/read", "openid"), ""},
		{"passthrough scope denied", "partner", own("partner/write"), `identity may not request scope "partner/write"`},
		{"passthrough empty scopes denied", "partner", own(), defaultScopes},
		{"passthrough identity may not use clients", "partner", client("payments", "partner/read"), `identity may not use client "payments"`},
		{"unknown identity", "spiffe://prod/ns/other/sa/x", client("payments", "payments/read"), `identity may not use client "payments"`},
		{"unknown identity, own credentials", "someone", own("openid"), ownCreds},
		{"empty identity matches nothing", "", client("anything", "openid"), `identity may not use client "anything"`},
		{"case matters", "SPIFFE://prod/ns/payments/sa/worker", client("payments", "payments/read"), `identity may not use client "payments"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := p.Authorize(Identity{Name: tc.identity, Source: SourceMTLS}, tc.sel)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("got %v, want allowed", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got allowed, want %q", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("message: got %q, want %q", got, tc.want)
			}
			if !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("errors.Is(err, ErrPermissionDenied): got false, want true")
			}
			if got := status.Code(err); got != codes.PermissionDenied {
				t.Errorf("status code: got %v, want PermissionDenied", got)
			}
			if strings.Contains(err.Error(), knownSecret) {
				t.Errorf("message %q contains the client secret", err.Error())
			}
		})
	}
}

func TestPolicyEmptyAllowsEverything(t *testing.T) {
	t.Parallel()
	sel := broker.Selector{Credentials: &broker.Credentials{Provider: "p"}}
	for _, p := range []*Policy{nil, mustPolicy(t, nil), mustPolicy(t, []Rule{})} {
		if !p.Empty() {
			t.Errorf("Empty: got false, want true")
		}
		if err := p.Authorize(Identity{}, sel); err != nil {
			t.Errorf("Authorize: got %v, want nil", err)
		}
	}
}

func TestNewPolicyErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		rules     []Rule
		wantField string
		wantRule  string
	}{
		{"empty identity", []Rule{{Identity: ""}}, "rules[0].identity", "must not be empty"},
		{"star inside", []Rule{{Identity: "a"}, {Identity: "spiffe://x/*/y"}}, "rules[1].identity", `"*" is allowed only alone or as a trailing "/*"`},
		{"star without slash", []Rule{{Identity: "spiffe://x*"}}, "rules[0].identity", `"*" is allowed only alone`},
		{"double star", []Rule{{Identity: "**"}}, "rules[0].identity", `"*" is allowed only alone`},
		{"spaces", []Rule{{Identity: " spiffe://x"}}, "rules[0].identity", "leading or trailing spaces"},
		{"empty client", []Rule{{Identity: "a", Clients: []string{"p", ""}}}, "rules[0].clients[1]", "must not be empty"},
		{"client pattern", []Rule{{Identity: "a", Clients: []string{"pay*"}}}, "rules[0].clients[0]", `"*" is allowed only as the whole entry`},
		{"scope pattern", []Rule{{Identity: "a"}, {Identity: "b"}, {Identity: "c", Scopes: []string{"payments/*"}}}, "rules[2].scopes[0]", `"*" is allowed only as the whole entry`},
		{"scope with spaces", []Rule{{Identity: "a", Scopes: []string{"x "}}}, "rules[0].scopes[0]", "leading or trailing spaces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewPolicy(tc.rules)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *ConfigError", err)
			}
			if ce.Field != tc.wantField || !strings.Contains(ce.Rule, tc.wantRule) {
				t.Errorf("got %q, want field %q and rule containing %q", err, tc.wantField, tc.wantRule)
			}
		})
	}
	for _, ok := range []string{"*", "/*", "spiffe://prod/*", "exact-name", "spiffe://prod/ns/a/sa/b"} {
		if _, err := NewPolicy([]Rule{{Identity: ok, Clients: []string{"*"}, Scopes: []string{"*", "a/b"}}}); err != nil {
			t.Errorf("NewPolicy(identity %q): got %v, want nil", ok, err)
		}
	}
}

func TestPatternMatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*", "anyone", true},
		{"*", "", false},
		{"a/b", "a/b", true},
		{"a/b", "a/bc", false},
		{"a/*", "a/b", true},
		{"a/*", "a/b/c", true},
		{"a/*", "a/", false},
		{"a/*", "a", false},
		{"a/*", "ab/c", false},
		{"/*", "/x", true},
	}
	for _, tc := range tests {
		p, err := parsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("parsePattern(%q): %v", tc.pattern, err)
		}
		if got := p.matches(tc.name); got != tc.want {
			t.Errorf("%q matches %q: got %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}
