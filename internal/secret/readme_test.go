package secret

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeCreatesPrivateKeyFiles: every README shell command that writes
// a key or secret file does so under umask 077, so the file is created
// 0600 and the broker starts without the "readable by others" warning
// that CheckMode logs for files created under a usual umask (0644).
func TestReadmeCreatesPrivateKeyFiles(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// A redirection to a file whose name says it holds a key or a secret.
	secretFile := regexp.MustCompile(`>\s*("?[^\s|;&)"]*(key|keys|secret|sealing|password|pass)[^\s|;&)"]*"?)`)
	var block []string
	inSh, found := false, 0
	for n, line := range strings.Split(string(readme), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !inSh && (trimmed == "```sh" || trimmed == "```bash"):
			inSh, block = true, nil
			continue
		case inSh && trimmed == "```":
			inSh = false
			continue
		case !inSh:
			continue
		}
		block = append(block, trimmed)
		m := secretFile.FindStringSubmatch(trimmed)
		if m == nil {
			continue
		}
		found++
		if !underUmask077(block) {
			t.Errorf("README.md:%d writes %s outside a (umask 077; ...) group: %s", n+1, m[1], trimmed)
		}
	}
	if found == 0 {
		t.Fatal("found no README command that writes a key file; has the fleet demo moved?")
	}
}

// underUmask077 reports whether the last line of block runs inside a
// "(umask 077" subshell opened on it or on an earlier line of the block
// and not closed before it.
func underUmask077(block []string) bool {
	for i := len(block) - 1; i >= 0; i-- {
		if strings.Contains(block[i], "(umask 077") {
			return true
		}
		if i < len(block)-1 && strings.HasSuffix(block[i], ")") {
			return false
		}
	}
	return false
}
