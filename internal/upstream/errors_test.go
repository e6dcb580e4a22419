package upstream

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

func TestErrorMethods(t *testing.T) {
	tests := []struct {
		name      string
		err       *Error
		wantMsg   string
		wantRetry bool
	}{
		{
			name:    "code, status and description",
			err:     &Error{Kind: ErrInvalidClient, Provider: "cognito", Status: 401, Code: "invalid_client", Description: "Client authentication failed"},
			wantMsg: `provider "cognito": invalid_client (401): Client authentication failed`,
		},
		{
			name:    "kind when no code",
			err:     &Error{Kind: ErrRejected, Provider: "p", Status: 404},
			wantMsg: `provider "p": rejected (404)`,
		},
		{
			name:      "no status",
			err:       &Error{Kind: ErrUnavailable, Provider: "p", Description: "request timed out after 5s"},
			wantMsg:   `provider "p": unavailable: request timed out after 5s`,
			wantRetry: true,
		},
		{
			name:      "local budget",
			err:       &Error{Kind: ErrThrottled, Provider: "p", Local: true, RetryAfter: 1500 * time.Millisecond, Description: "request budget exhausted"},
			wantMsg:   `provider "p": throttled: request budget exhausted; retry after 1.5s`,
			wantRetry: true,
		},
		{
			name:    "quoted provider name",
			err:     &Error{Kind: ErrInvalidScope, Provider: "a\"b\n", Code: "invalid_scope"},
			wantMsg: `provider "a\"b\n": invalid_scope`,
		},
		{
			name:    "unauthorized_client",
			err:     &Error{Kind: ErrUnauthorizedClient, Provider: "p", Status: 400, Code: "unauthorized_client"},
			wantMsg: `provider "p": unauthorized_client (400)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.wantMsg {
				t.Errorf("Error(): got %q, want %q", got, tt.wantMsg)
			}
			if got := tt.err.Unwrap(); got != tt.err.Kind {
				t.Errorf("Unwrap(): got %v, want %v", got, tt.err.Kind)
			}
			if got := tt.err.Retryable(); got != tt.wantRetry {
				t.Errorf("Retryable(): got %v, want %v", got, tt.wantRetry)
			}
			wrapped := fmt.Errorf("outer: %w", tt.err)
			if !errors.Is(wrapped, tt.err.Kind) {
				t.Errorf("errors.Is(wrapped, %v): got false, want true", tt.err.Kind)
			}
			for _, other := range []error{ErrInvalidClient, ErrInvalidScope, ErrUnauthorizedClient, ErrThrottled, ErrUnavailable, ErrRejected} {
				if other != tt.err.Kind && errors.Is(wrapped, other) {
					t.Errorf("errors.Is(err, %v): got true, want false", other)
				}
			}
		})
	}
}

func TestRetryDelayInterface(t *testing.T) {
	var err error = &Error{Kind: ErrThrottled, Provider: "p", RetryAfter: 3 * time.Second}
	var rd interface{ RetryDelay() time.Duration }
	if !errors.As(fmt.Errorf("wrapped: %w", err), &rd) {
		t.Fatal("errors.As(RetryDelay interface): got false, want true")
	}
	if got := rd.RetryDelay(); got != 3*time.Second {
		t.Errorf("RetryDelay(): got %v, want 3s", got)
	}
}

func TestNilError(t *testing.T) {
	var e *Error
	if e.Error() != "<nil>" || e.Unwrap() != nil || e.Retryable() || e.RetryDelay() != 0 {
		t.Error("nil *Error methods: got non-zero results, want zero ones")
	}
}

func TestScrubber(t *testing.T) {
	r := Request{ClientID: "id", ClientSecret: secret.String("pä ss/+")}
	s := newScrubber(r)
	tests := []struct{ in, want string }{
		{"x pä ss/+ y", "x [redacted] y"},
		{"x p%C3%A4+ss%2F%2B y", "x [redacted] y"},
		{"x p? ss/+ y", "x [redacted] y"},
		{"tab\there\x00", "tab here?"},
		{"  padded  ", "padded"},
	}
	for _, tt := range tests {
		if got := s.clean(tt.in, maxDescriptionLen); got != tt.want {
			t.Errorf("clean(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := (&scrubber{}).clean("plain", 3); got != "pla" {
		t.Errorf("clean with limit 3: got %q, want %q", got, "pla")
	}
}

// scrubSecret is the secret of the scrubber tests: mixed case, characters
// that URL encoding and base64 treat differently, and non-ASCII.
const scrubSecret = "Sup3r/S3cret+Value=with~Änd?more&stuff"

// scrubForms are the forms of scrubSecret an endpoint might echo, each of
// which the scrubber must remove (issue 10, point 7).
// keep is a non-secret part of a form that may stay.
func scrubForms() []struct{ name, form, keep string } {
	s := scrubSecret
	b := []byte(s)
	basicID := base64.StdEncoding.EncodeToString([]byte("client-1:"))[:12]
	return []struct{ name, form, keep string }{
		{"exact", s, ""},
		{"upper case", strings.ToUpper(s), ""},
		{"lower case", strings.ToLower(s), ""},
		{"hex", hex.EncodeToString(b), ""},
		{"hex upper case", strings.ToUpper(hex.EncodeToString(b)), ""},
		{"base64", base64.StdEncoding.EncodeToString(b), ""},
		{"base64 raw", base64.RawStdEncoding.EncodeToString(b), ""},
		{"base64url", base64.URLEncoding.EncodeToString(b), ""},
		{"base64url raw", base64.RawURLEncoding.EncodeToString(b), ""},
		{"base64 upper case", strings.ToUpper(base64.StdEncoding.EncodeToString(b)), ""},
		{"query escaped", url.QueryEscape(s), ""},
		{"path escaped", url.PathEscape(s), ""},
		{"query escaped upper case", strings.ToUpper(url.QueryEscape(s)), ""},
		{"with a prefix", "xyz" + s, ""},
		{"with a suffix", s + "xyz", ""},
		{"prefix and suffix glued", "pre_" + s[3:] + "_post", ""},
		{"first 12 characters", s[:12], ""},
		{"last 12 characters", s[len(s)-12:], ""},
		{"12 characters from the middle", s[7:19], ""},
		{"12-character run of hex", hex.EncodeToString(b)[5:17], ""},
		{"12-character run of base64url", base64.RawURLEncoding.EncodeToString(b)[9:21], ""},
		{"base64 of a prefixed secret, offset 1", base64.StdEncoding.EncodeToString([]byte("a" + s)), ""},
		{"base64 of a prefixed secret, offset 2", base64.StdEncoding.EncodeToString([]byte("ab" + s)), ""},
		{"base64url of a prefixed secret", base64.RawURLEncoding.EncodeToString([]byte("prefix" + s)), ""},
		{"basic credentials", base64.StdEncoding.EncodeToString([]byte("client-1:" + url.QueryEscape(s))), basicID},
		{"basic credentials unescaped", base64.StdEncoding.EncodeToString([]byte("client-1:" + s)), basicID},
		{"sanitised non-ASCII", sanitise(s), ""},
	}
}

// TestScrubberCatchesEncodings is the table test of issue 10, point 7: the
// scrubber removes case-insensitive copies of the secret, its hex, base64,
// base64url and URL-encoded forms, and any 12-character run of them.
func TestScrubberCatchesEncodings(t *testing.T) {
	s := newScrubber(Request{ClientID: "client-1", ClientSecret: secret.String(scrubSecret)})
	for _, tt := range scrubForms() {
		t.Run(tt.name, func(t *testing.T) {
			got := s.clean("before "+tt.form+" after", 4096)
			if !strings.Contains(got, secret.Redacted) {
				t.Errorf("clean: got %q, want %s in it", got, secret.Redacted)
			}
			rest := got
			if tt.keep != "" {
				rest = strings.Replace(got, tt.keep, "", 1)
			}
			if leak := longestShared(rest, tt.form); len(leak) >= scrubRun {
				t.Errorf("clean: got %q, which still holds %q of the form", got, leak)
			}
			if !strings.HasPrefix(got, "before ") || !strings.HasSuffix(got, " after") {
				t.Errorf("clean: got %q, want the text around the secret kept", got)
			}
		})
	}
}

// longestShared returns the longest substring of form found in text,
// ignoring ASCII case.
func longestShared(text, form string) string {
	lt, lf := asciiLower(text), asciiLower(form)
	best := ""
	for i := range lf {
		for j := len(lf); j > i+len(best); j-- {
			if strings.Contains(lt, lf[i:j]) {
				best = form[i:j]
				break
			}
		}
	}
	return best
}

func TestScrubberShortSecret(t *testing.T) {
	s := newScrubber(Request{ClientID: "id", ClientSecret: secret.String("abc")})
	tests := []struct{ in, want string }{
		{"x abc y", "x [redacted] y"},
		{"x ABC y", "x [redacted] y"},
		{"x 616263 y", "x [redacted] y"},
		{"x YWJj y", "x [redacted] y"},
		{"abcabc", "[redacted]"},
		{"nothing here", "nothing here"},
	}
	for _, tt := range tests {
		if got := s.clean(tt.in, maxDescriptionLen); got != tt.want {
			t.Errorf("clean(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}
