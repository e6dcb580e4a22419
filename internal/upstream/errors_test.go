package upstream

import (
	"errors"
	"fmt"
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
	if got := (scrubber{}).clean("plain", 3); got != "pla" {
		t.Errorf("clean with limit 3: got %q, want %q", got, "pla")
	}
}
