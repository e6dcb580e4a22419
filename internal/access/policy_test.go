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
		{Identity: "apikey:partner", Passthrough: true, Scopes: []string{"partner/read"}},
		{Identity: "dns:reports.example.test", Clients: []string{"reports"}, Scopes: []string{"reports/read"}},
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
		{"passthrough allowed", "apikey:partner", own("partner/read"), ""},
		{"passthrough with scopes from * rule", "apikey:partner", own("partner/read", "openid"), ""},
		{"passthrough scope denied", "apikey:partner", own("partner/write"), `identity may not request scope "partner/write"`},
		{"passthrough empty scopes denied", "apikey:partner", own(), defaultScopes},
		{"passthrough identity may not use clients", "apikey:partner", client("payments", "partner/read"), `identity may not use client "payments"`},
		{"unknown identity", "spiffe://prod/ns/other/sa/x", client("payments", "payments/read"), `identity may not use client "payments"`},
		{"unknown identity, own credentials", "apikey:someone", own("openid"), ownCreds},
		{"DNS identity by its typed name", "dns:reports.example.test", client("reports", "reports/read"), ""},
		{"a DNS SAN spelling a SPIFFE ID is no SPIFFE ID", "dns:" + worker, client("payments", "payments/read"), `identity may not use client "payments"`},
		{"a DNS SAN spelling an API key name is no API key", "dns:apikey:partner", own("partner/read"), ownCreds},
		{"a URI SAN spelling a DNS name is no DNS identity", "uri:dns:reports.example.test", client("reports", "reports/read"), `identity may not use client "reports"`},
		{"an untyped name matches no typed entry", "partner", own("partner/read"), ownCreds},
		{"* matches every authenticated identity", "apikey:someone", client("", "openid"), ""},
		{"* does not match the anonymous caller", AnonymousName, client("", "openid"), `identity may not request scope "openid"`},
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
		{"star inside", []Rule{{Identity: "apikey:a"}, {Identity: "spiffe://x/*/y"}}, "rules[1].identity", `"*" is allowed only alone, as a trailing "/*", as "KIND:*" or as "k8s:NAMESPACE:*"`},
		{"star without slash", []Rule{{Identity: "spiffe://x*"}}, "rules[0].identity", `"*" is allowed only alone`},
		{"double star", []Rule{{Identity: "**"}}, "rules[0].identity", "must name its kind"},
		{"spaces", []Rule{{Identity: " spiffe://x"}}, "rules[0].identity", "leading or trailing spaces"},
		{"untyped name", []Rule{{Identity: "batch-jobs"}}, "rules[0].identity", `must name its kind: "spiffe://TRUST-DOMAIN/PATH", "dns:NAME", "uri:URI", "apikey:NAME"`},
		{"untyped DNS-looking name", []Rule{{Identity: "worker.example.test"}}, "rules[0].identity", "must name its kind"},
		{"SPIFFE without slashes", []Rule{{Identity: "spiffe:prod"}}, "rules[0].identity", "must name its kind"},
		{"kind in upper case", []Rule{{Identity: "DNS:worker.example.test"}}, "rules[0].identity", "must name its kind"},
		{"kind alone", []Rule{{Identity: "apikey:"}}, "rules[0].identity", `must name an identity after its kind "apikey:"`},
		{"empty client", []Rule{{Identity: "apikey:a", Clients: []string{"p", ""}}}, "rules[0].clients[1]", "must not be empty"},
		{"client pattern", []Rule{{Identity: "apikey:a", Clients: []string{"pay*"}}}, "rules[0].clients[0]", `"*" is allowed only as the whole entry`},
		{"scope pattern", []Rule{{Identity: "apikey:a"}, {Identity: "apikey:b"}, {Identity: "apikey:c", Scopes: []string{"payments/*"}}}, "rules[2].scopes[0]", `"*" is allowed only as the whole entry`},
		{"scope with spaces", []Rule{{Identity: "apikey:a", Scopes: []string{"x "}}}, "rules[0].scopes[0]", "leading or trailing spaces"},
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
	for _, ok := range []string{"*", "anonymous", "spiffe://*", "spiffe://prod/*", "spiffe://prod/ns/a/sa/b", "dns:a.example", "dns:*",
		"uri:https://example.test/x", "uri:https://example.test/*", "apikey:exact-name", "apikey:*", "apikey:team/*"} {
		if _, err := NewPolicy([]Rule{{Identity: ok, Clients: []string{"*"}, Scopes: []string{"*", "a/b"}}}); err != nil {
			t.Errorf("NewPolicy(identity %q): got %v, want nil", ok, err)
		}
	}
}
