package verifier

import (
	"strings"
	"testing"
)

// FuzzParseJWT feeds the token parser arbitrary input: it never panics,
// refuses with a *RefusedError (malformed or disallowed algorithm) or
// returns a header and claims, and its errors never quote the input.
func FuzzParseJWT(f *testing.F) {
	for _, seed := range []string{
		"",
		"a.b.c",
		"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
		"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL2kiLCJleHAiOjF9.c2ln",
		"eyJhbGciOiJIUzI1NiJ9.eyJzY29wZSI6WyJhIiwiYiJdfQ.c2ln",
		"eyJhbGciOiJSUzI1NiIsImprdSI6Imh0dHBzOi8vZXZpbCJ9.e30.c2ln",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		tok, tc, err := ParseJWT(token)
		if err != nil {
			r := reasonOf(err)
			if r != ReasonMalformed && r != ReasonDisallowedAlgorithm {
				t.Fatalf("ParseJWT error %v, want a malformed or disallowed_algorithm refusal", err)
			}
			if len(token) >= 12 && strings.Contains(err.Error(), token) {
				t.Fatalf("error %q quotes the token", err)
			}
			return
		}
		if tok == nil || tc == nil || len(tok.Headers) != 1 {
			t.Fatalf("ParseJWT = %v, %v, nil; want one header and claims", tok, tc)
		}
		_ = tc.claims("p")
	})
}
