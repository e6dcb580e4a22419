package sds

import (
	"reflect"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// TestParseName: the documented name syntax, and every malformed form
// refused.
func TestParseName(t *testing.T) {
	tests := []struct {
		name string
		want broker.Selector
		ok   bool
	}{
		{"oauth2:orders:orders/read+orders/write", broker.Selector{Client: "orders", Scopes: []string{"orders/read", "orders/write"}}, true},
		{"oauth2:orders", broker.Selector{Client: "orders"}, true},
		{"oauth2:orders:https://api.example/read", broker.Selector{Client: "orders", Scopes: []string{"https://api.example/read"}}, true},
		{"oauth2:", broker.Selector{}, false},
		{"oauth2::x", broker.Selector{}, false},
		{"oauth2:orders:", broker.Selector{}, false},
		{"oauth2:orders:a++b", broker.Selector{}, false},
		{"orders", broker.Selector{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseName(tt.name)
		if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseName(%q) = %+v, %v; want %+v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

// TestQuotesToken: a NACK message quoting the token, or a 16-byte part of
// it, is recognised.
func TestQuotesToken(t *testing.T) {
	tok := broker.Token{}
	tok.AccessToken = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVlLWxvbmc"
	for msg, want := range map[string]bool{
		"rejected " + tok.AccessToken.Reveal():       true,
		"value ...eyJzdWIiOiJ4In0.c2lnbm... invalid": true,
		"Proto constraint validation failed":         false,
	} {
		if got := quotesToken(msg, tok); got != want {
			t.Errorf("quotesToken(%q) = %v, want %v", msg, got, want)
		}
	}
}
