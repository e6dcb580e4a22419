package sdsname

import (
	"strings"
	"testing"
)

// TestSplitHeaderFormat: one "%s", no other '%', no control characters.
func TestSplitHeaderFormat(t *testing.T) {
	if p, s, err := SplitHeaderFormat("Bearer %s"); err != nil || p != "Bearer " || s != "" {
		t.Errorf(`SplitHeaderFormat("Bearer %%s") = %q, %q, %v`, p, s, err)
	}
	for _, bad := range []string{"Bearer", "%s %s", "Bearer %d %s", "100% %s", "Bearer\n%s"} {
		if _, _, err := SplitHeaderFormat(bad); err == nil {
			t.Errorf("SplitHeaderFormat(%q) = nil error, want one", bad)
		}
	}
}

// TestCheckName: 1 to MaxNameLength bytes of UTF-8 without control
// characters.
func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"orders-token":                       true,
		"oauth2:orders:orders/read":          true,
		"":                                   false,
		strings.Repeat("n", MaxNameLength):   true,
		strings.Repeat("n", MaxNameLength+1): false,
		"bad\xff":                            false,
		"tab\there":                          false,
	} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%.20q) = %v, want ok %v", name, err, ok)
		}
	}
}
