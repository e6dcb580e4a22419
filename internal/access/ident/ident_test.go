package ident

import (
	"net/url"
	"strings"
	"testing"
)

func TestPatternMatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*", "apikey:anyone", true},
		{"*", "dns:a.example", true},
		{"*", "", false},
		{"*", Anonymous, false},
		{"anonymous", Anonymous, true},
		{"anonymous", "apikey:anonymous", false},
		{"apikey:anonymous", Anonymous, false},
		{"spiffe://a/b", "spiffe://a/b", true},
		{"spiffe://a/b", "spiffe://a/bc", false},
		{"spiffe://a/b", "dns:spiffe://a/b", false},
		{"spiffe://a/*", "spiffe://a/b", true},
		{"spiffe://a/*", "spiffe://a/b/c", true},
		{"spiffe://a/*", "spiffe://a/", false},
		{"spiffe://a/*", "spiffe://a", false},
		{"spiffe://a/*", "spiffe://ab/c", false},
		{"spiffe://a/*", "uri:spiffe://a/b", false},
		{"spiffe://*", "spiffe://a/b", true},
		{"spiffe://*", "uri:https://a/b", false},
		{"dns:*", "dns:a.example", true},
		{"dns:*", "uri:dns:a.example", false},
		{"dns:A.Example", "dns:a.example", true},
		{"apikey:*", "apikey:x", true},
		{"apikey:*", "apikey:", false},
		{"apikey:*", "dns:apikey:x", false},
		{"apikey:team/*", "apikey:team/x", true},
		{"uri:https://a/*", "uri:https://a/b", true},
		{"uri:https://a/*", "spiffe://a/b", false},
		{"k8s:payments:*", "k8s:payments:worker", true},
		{"k8s:payments:*", "k8s:payments-eu:worker", false},
		{"k8s:payments:*", "k8s:payments:", false},
		{"k8s:payments:*", "apikey:k8s:payments:worker", false},
		{"k8s:payments:worker", "k8s:payments:worker", true},
		{"k8s:payments:worker", "k8s:payments:worker2", false},
		{"k8s:*", "k8s:billing:api", true},
		{"*", "k8s:billing:api", true},
	}
	for _, tc := range tests {
		p, err := ParsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tc.pattern, err)
		}
		if got := p.Matches(tc.name); got != tc.want {
			t.Errorf("%q matches %q: got %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestParsePatternErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ pattern, want string }{
		{"", "must not be empty"},
		{" dns:a", "leading or trailing spaces"},
		{"worker", "must name its kind"},
		{"a.example.test", "must name its kind"},
		{"spiffe:x", "must name its kind"},
		{"x/*", "must name its kind"},
		{"**", "must name its kind"},
		{"dns:", `after its kind "dns:"`},
		{"dns:a*", `"*" is allowed only`},
		{"spiffe://a/*/b", `"*" is allowed only`},
		{"apikey:**", `"*" is allowed only`},
		{"k8s:pay*", `"*" is allowed only`},
		{"k8s::*", `"*" is allowed only`},
		{"k8s:a:b:*", `"*" is allowed only`},
		{"apikey:team:*", `"*" is allowed only`},
	}
	for _, tc := range tests {
		_, err := ParsePattern(tc.pattern)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePattern(%q): got %v, want an error containing %q", tc.pattern, err, tc.want)
		}
		if err != nil && len(tc.pattern) > len("apikey:") && strings.Contains(err.Error(), tc.pattern) {
			t.Errorf("ParsePattern(%q): error %q repeats the pattern", tc.pattern, err)
		}
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ uri, want string }{
		{"spiffe://prod/ns/a/sa/b", "spiffe://prod/ns/a/sa/b"},
		{"https://example.test/x", "uri:https://example.test/x"},
		{"spiffe:opaque", "uri:spiffe:opaque"},
		{"spiffe://prod/x?y=1", "uri:spiffe://prod/x?y=1"},
		{"dns:a.example", "uri:dns:a.example"},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := URI(u); got != tc.want {
			t.Errorf("URI(%q): got %q, want %q", tc.uri, got, tc.want)
		}
	}
	if got := URI(nil); got != "" {
		t.Errorf("URI(nil): got %q, want empty", got)
	}
	if got := DNS("A.Example"); got != "dns:a.example" {
		t.Errorf("DNS: got %q, want dns:a.example", got)
	}
	if got := K8s("payments", "worker"); got != "k8s:payments:worker" {
		t.Errorf("K8s: got %q, want k8s:payments:worker", got)
	}
	if got := APIKey("w"); got != "apikey:w" {
		t.Errorf("APIKey: got %q, want apikey:w", got)
	}
}
