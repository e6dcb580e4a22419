package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// leakyText stands for text that must never reach a caller.
const leakyText = "hunter2-internal-detail"

// TestErrorMapping checks the answer for each kind of broker, upstream and
// policy error, through HTTP.
func TestErrorMapping(t *testing.T) {
	upErr := func(kind error, code string, retry time.Duration) error {
		return fmt.Errorf("fetch: %w", &upstream.Error{Kind: kind, Provider: "dev", Status: 400, Code: code, Description: leakyText, RetryAfter: retry})
	}
	tests := []struct {
		name         string
		err          error // from the broker
		authzErr     error // from Authorize
		panics       bool
		useBasic     bool
		wantStatus   int
		wantCode     string
		wantDesc     string
		wantRetry    string
		wantChalleng bool
	}{
		{name: "invalid_client post", err: upErr(upstream.ErrInvalidClient, "invalid_client", 0),
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client authentication failed"},
		{name: "invalid_client basic", err: upErr(upstream.ErrInvalidClient, "invalid_client", 0), useBasic: true,
			wantStatus: 401, wantCode: "invalid_client", wantDesc: "client authentication failed", wantChalleng: true},
		{name: "invalid_scope", err: upErr(upstream.ErrInvalidScope, "invalid_scope", 0),
			wantStatus: 400, wantCode: "invalid_scope", wantDesc: "scope"},
		{name: "unauthorized_client", err: upErr(upstream.ErrUnauthorizedClient, "unauthorized_client", 0),
			wantStatus: 400, wantCode: "unauthorized_client", wantDesc: "client-credentials grant"},
		{name: "throttled with delay", err: upErr(upstream.ErrThrottled, "", 2500*time.Millisecond),
			wantStatus: 429, wantCode: "temporarily_unavailable", wantDesc: "throttling", wantRetry: "3"},
		{name: "throttled without delay", err: upErr(upstream.ErrThrottled, "", 0),
			wantStatus: 429, wantCode: "temporarily_unavailable", wantDesc: "throttling", wantRetry: "1"},
		{name: "pass-through limit of the caller", err: fmt.Errorf("fetch: %w", &upstream.Error{Kind: upstream.ErrThrottled, Provider: "dev", Local: true,
			Description: "pass-through request limit of this caller reached", RetryAfter: 4 * time.Second}),
			wantStatus: 429, wantCode: "temporarily_unavailable", wantDesc: "request limit reached: pass-through request limit of this caller reached", wantRetry: "4"},
		{name: "unavailable with delay", err: upErr(upstream.ErrUnavailable, "", 7*time.Second),
			wantStatus: 503, wantCode: "temporarily_unavailable", wantDesc: "unavailable", wantRetry: "7"},
		{name: "unavailable without delay", err: upErr(upstream.ErrUnavailable, "", 0),
			wantStatus: 503, wantCode: "temporarily_unavailable", wantDesc: "unavailable"},
		{name: "deadline", err: fmt.Errorf("waiting: %w", context.DeadlineExceeded),
			wantStatus: 503, wantCode: "temporarily_unavailable", wantDesc: "timed out"},
		{name: "rejected invalid_target", err: upErr(upstream.ErrRejected, "invalid_target", 0),
			wantStatus: 400, wantCode: "invalid_target", wantDesc: "rejected the request (invalid_target)"},
		{name: "rejected invalid_request", err: upErr(upstream.ErrRejected, "invalid_request", 0),
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "rejected the request (invalid_request)"},
		{name: "rejected other", err: upErr(upstream.ErrRejected, "unsupported_grant_type", 0),
			wantStatus: 502, wantCode: "server_error", wantDesc: "rejected the request"},
		{name: "passthrough disabled", err: broker.ErrPassthroughDisabled,
			wantStatus: 400, wantCode: "unauthorized_client", wantDesc: "presented by callers"},
		{name: "unknown provider", err: &broker.FieldError{Field: "selector.client_credentials.provider", Rule: "must name a configured provider", Kind: broker.ErrUnknownProvider},
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "provider: must name a configured provider"},
		{name: "field error", err: &broker.FieldError{Field: "selector.scopes[2]", Rule: "must not be empty", Kind: broker.ErrInvalidArgument},
			wantStatus: 400, wantCode: "invalid_request", wantDesc: "scope: scope 3 must not be empty"},
		{name: "token too short", err: fmt.Errorf("%w: %s", broker.ErrTokenTooShort, leakyText),
			wantStatus: 502, wantCode: "server_error", wantDesc: "less life"},
		{name: "unknown error", err: errors.New(leakyText),
			wantStatus: 500, wantCode: "server_error", wantDesc: "internal error"},
		{name: "broker panics", panics: true,
			wantStatus: 500, wantCode: "server_error", wantDesc: "internal error"},
		{name: "policy denies", authzErr: fmt.Errorf("%w: identity %q may not use scope %q", access.ErrPermissionDenied, "svc-a", "api/admin"),
			wantStatus: 403, wantCode: "access_denied", wantDesc: `identity "svc-a" may not use scope "api/admin"`},
		{name: "policy fails", authzErr: errors.New(leakyText),
			wantStatus: 500, wantCode: "server_error", wantDesc: "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := new(testkit.LogBuffer)
			var calls atomic.Int32
			cfg := Config{
				Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
					calls.Add(1)
					if tc.panics {
						panic(leakyText)
					}
					return broker.Token{}, tc.err
				}},
				Logger: testkit.TextLogger(logs),
			}
			if tc.authzErr != nil {
				cfg.Authorize = func(*http.Request, broker.Selector) error { return tc.authzErr }
			}
			_, srv := serveStub(t, cfg)
			form := url.Values{"grant_type": {"client_credentials"}}
			var header http.Header
			if tc.useBasic {
				header = basic("id", "secret-value")
			} else {
				form.Set("client_id", "id")
				form.Set("client_secret", "secret-value")
			}
			a := postForm(t, srv.URL+TokenPath, form, header)
			if a.status != tc.wantStatus || a.str("error") != tc.wantCode {
				t.Fatalf("got %d %q (%s), want %d %q", a.status, a.str("error"), a.body, tc.wantStatus, tc.wantCode)
			}
			if desc := a.str("error_description"); !strings.Contains(desc, tc.wantDesc) {
				t.Errorf("error_description: got %q, want it to contain %q", desc, tc.wantDesc)
			}
			if got := a.header.Get("Retry-After"); got != tc.wantRetry {
				t.Errorf("Retry-After: got %q, want %q", got, tc.wantRetry)
			}
			if got := a.header.Get("WWW-Authenticate") != ""; got != tc.wantChalleng {
				t.Errorf("WWW-Authenticate present: got %v, want %v", got, tc.wantChalleng)
			}
			checkNoStore(t, a)
			for _, leak := range []string{leakyText, "secret-value"} {
				if strings.Contains(a.body, leak) {
					t.Errorf("answer contains %q: %s", leak, a.body)
				}
			}
			if strings.Contains(logs.String(), "secret-value") {
				t.Errorf("logs contain the secret:\n%s", logs)
			}
			if wantCalls := map[bool]int{true: 0, false: 1}[tc.authzErr != nil]; calls.Load() != int32(wantCalls) {
				t.Errorf("broker calls: got %d, want %d", calls.Load(), wantCalls)
			}
		})
	}
}

// TestAuthorizeSeesSelector checks what the policy hook is given.
func TestAuthorizeSeesSelector(t *testing.T) {
	var (
		mu  sync.Mutex
		got broker.Selector
	)
	_, srv := serveStub(t, Config{
		Providers: []string{"dev", "other"},
		Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
			return broker.Token{AccessToken: "tok", ExpiresAt: time.Now().Add(time.Hour)}, nil
		}},
		Authorize: func(r *http.Request, sel broker.Selector) error {
			if r.Header.Get("X-Caller") != "svc-a" {
				return fmt.Errorf("%w: unknown caller", access.ErrPermissionDenied)
			}
			mu.Lock()
			defer mu.Unlock()
			got = sel
			return nil
		},
	})
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"b a"}, "audience": {"aud"}, "resource": {"https://r.example/"}}
	if a := postForm(t, srv.URL+"/oauth2/other/token", form, basic("id", "pw")); a.status != http.StatusForbidden {
		t.Fatalf("without X-Caller: got %d %s, want 403", a.status, a.body)
	}
	a := postForm(t, srv.URL+"/oauth2/other/token", form, http.Header{
		"Authorization": basic("id", "pw")["Authorization"],
		"X-Caller":      {"svc-a"},
	})
	if a.status != http.StatusOK {
		t.Fatalf("with X-Caller: got %d %s, want 200", a.status, a.body)
	}
	mu.Lock()
	defer mu.Unlock()
	c := got.Credentials
	if c == nil || c.Provider != "other" || c.ClientID != "id" || c.ClientSecret.Reveal() != "pw" || got.Client != "" {
		t.Errorf("credentials: got %+v, want provider other, id, secret pw", c)
	}
	if strings.Join(got.Scopes, ",") != "b,a" || got.Audience != "aud" || got.Resource != "https://r.example/" {
		t.Errorf("selector: got scopes %v audience %q resource %q, want [b a] aud https://r.example/", got.Scopes, got.Audience, got.Resource)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want int64
	}{
		{time.Nanosecond, 1},
		{time.Second, 1},
		{time.Second + time.Millisecond, 2},
		{90 * time.Second, 90},
	} {
		if got := retryAfterSeconds(tc.in); got != tc.want {
			t.Errorf("retryAfterSeconds(%v): got %d, want %d", tc.in, got, tc.want)
		}
	}
}
