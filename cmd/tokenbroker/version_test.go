package main

import (
	"context"
	"strings"
	"testing"
)

// TestVersion: -version prints the version and commit set at link time
// and exits without reading a configuration (none is given, and a
// configuration that could not be valid is ignored).
func TestVersion(t *testing.T) {
	version, commit = "v1.2.3", "abc123"
	t.Cleanup(func() { version, commit = "devel", "unknown" })
	for _, args := range [][]string{{"-version"}, {"--version"}, {"-config", "/nonexistent.yaml", "-version"}} {
		var out, errOut strings.Builder
		if err := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if got := out.String(); !strings.HasPrefix(got, "tokenbroker v1.2.3 (commit abc123, go") {
			t.Errorf("%v: printed %q", args, got)
		}
	}
	if versionFlag([]string{"--", "-version"}) || versionFlag([]string{"version"}) {
		t.Error("-version after -- or without a dash was taken as the flag")
	}
}
