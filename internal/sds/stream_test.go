package sds

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestClip: a NACK's client-supplied fields are logged cut to their
// limit, on a character boundary, marked; short ones as they are.
func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"", 4, ""},
		{"abcd", 4, "abcd"},
		{"abcde", 4, "abcd…"},
		{"abcé", 4, "abc…"}, // é is two bytes: cut before it
		{strings.Repeat("x", 10000), maxNackField, strings.Repeat("x", maxNackField) + "…"},
	} {
		got := clip(tc.in, tc.max)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("clip(%.20q, %d): got %.40q, want %.40q", tc.in, tc.max, got, tc.want)
		}
	}
}
