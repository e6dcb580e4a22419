// Package sdsname holds the rules of SDS secret names and of the header
// value format, with no dependencies, so that the configuration can check
// them without importing the SDS server (and Envoy's types).
package sdsname

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ParsedPrefix starts every parsed secret name ("oauth2:CLIENT:SCOPE+SCOPE").
const ParsedPrefix = "oauth2:"

// MaxNameLength is the longest secret name accepted, in bytes.
const MaxNameLength = 1024

// DefaultHeaderFormat is the header value format when none is configured.
const DefaultHeaderFormat = "Bearer %s"

// CheckName returns an error unless name is a valid secret name: 1 to
// MaxNameLength bytes of UTF-8 without control characters.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case len(name) > MaxNameLength:
		return errors.New("must be at most " + strconv.Itoa(MaxNameLength) + " bytes")
	case !utf8.ValidString(name):
		return errors.New("must be valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("must not hold control characters")
		}
	}
	return nil
}

// SplitHeaderFormat returns what format puts before and after the token.
// format must hold exactly one "%s" and no other '%'.
func SplitHeaderFormat(format string) (prefix, suffix string, err error) {
	prefix, suffix, ok := strings.Cut(format, "%s")
	if !ok || strings.Contains(prefix, "%") || strings.Contains(suffix, "%") {
		return "", "", errors.New(`must hold exactly one "%s" (where the token goes) and no other '%'`)
	}
	for _, r := range format {
		if r < 0x20 || r == 0x7f {
			return "", "", errors.New("must not hold control characters (it is an HTTP header value)")
		}
	}
	return prefix, suffix, nil
}
