package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// fakeUpstreamError stands in for *upstream.Error: it wraps a kind, has a
// sanitised text and may know a retry delay.
type fakeUpstreamError struct {
	kind  error
	text  string
	delay time.Duration
}

func (e *fakeUpstreamError) Error() string             { return e.text }
func (e *fakeUpstreamError) Unwrap() error             { return e.kind }
func (e *fakeUpstreamError) RetryDelay() time.Duration { return e.delay }

func upErr(kind error, code string, httpStatus int) error {
	return &fakeUpstreamError{kind: kind, text: fmt.Sprintf("provider \"cognito\": %s (%d): denied", code, httpStatus)}
}

// realThrottled is the real upstream error type, to keep the table and
// the upstream package in step.
var realThrottled = &upstream.Error{Kind: upstream.ErrThrottled, Provider: "cognito", Status: 429, Code: "TooManyRequestsException", RetryAfter: 3 * time.Second}

// leakyText is in errors the caller must never see verbatim.
const leakyText = "password=hunter2"

// TestGetTokenErrorTable drives every row of the error table through real
// gRPC.
func TestGetTokenErrorTable(t *testing.T) {
	var (
		mu        sync.Mutex
		brokerErr error
	)
	ts := startServer(t, Config{Broker: &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		mu.Lock()
		defer mu.Unlock()
		return broker.Token{}, brokerErr
	}}})

	for _, tt := range []struct {
		name        string
		err         error
		passthrough bool
		expectCode  codes.Code
		expectMsg   string
		expectRetry time.Duration // RetryInfo delay; 0 means none expected
	}{
		{
			name:       "field error",
			err:        &broker.FieldError{Field: "selector.scopes[1]", Rule: "is not allowed", Kind: broker.ErrInvalidArgument},
			expectCode: codes.InvalidArgument,
			expectMsg:  "selector.scopes[1]: is not allowed",
		},
		{
			name:       "bare invalid argument",
			err:        fmt.Errorf("check %s: %w", leakyText, broker.ErrInvalidArgument),
			expectCode: codes.InvalidArgument,
			expectMsg:  "invalid argument",
		},
		{
			name:        "unknown provider field error",
			err:         fmt.Errorf("resolve: %w", &broker.FieldError{Field: "selector.client_credentials.provider", Rule: "is not configured", Kind: broker.ErrUnknownProvider}),
			passthrough: true,
			expectCode:  codes.InvalidArgument,
			expectMsg:   "selector.client_credentials.provider: is not configured",
		},
		{
			name:        "bare unknown provider",
			err:         broker.ErrUnknownProvider,
			passthrough: true,
			expectCode:  codes.InvalidArgument,
			expectMsg:   "selector.client_credentials.provider: unknown provider",
		},
		{
			name:       "unknown client",
			err:        fmt.Errorf("client %q: %w", "nope", broker.ErrUnknownClient),
			expectCode: codes.NotFound,
			expectMsg:  "selector.client: unknown client",
		},
		{
			name:        "pass-through disabled",
			err:         broker.ErrPassthroughDisabled,
			passthrough: true,
			expectCode:  codes.PermissionDenied,
			expectMsg:   "pass-through credentials are not accepted",
		},
		{
			name:       "token too short",
			err:        fmt.Errorf("lifetime 5m: %w", broker.ErrTokenTooShort),
			expectCode: codes.FailedPrecondition,
			expectMsg:  "the token endpoint issues tokens with less life than the broker may serve (min_remaining)",
		},
		{
			name:       "invalid_client broker-held",
			err:        fmt.Errorf("fetch %s: %w", leakyText, upErr(upstream.ErrInvalidClient, "invalid_client", 401)),
			expectCode: codes.FailedPrecondition,
			expectMsg:  `token endpoint rejected the broker-held client's credentials (invalid_client): provider "cognito": invalid_client (401): denied`,
		},
		{
			name:        "invalid_client pass-through",
			err:         upErr(upstream.ErrInvalidClient, "invalid_client", 401),
			passthrough: true,
			expectCode:  codes.Unauthenticated,
			expectMsg:   `token endpoint rejected the client credentials (invalid_client): provider "cognito": invalid_client (401): denied`,
		},
		{
			name:       "invalid_scope",
			err:        upErr(upstream.ErrInvalidScope, "invalid_scope", 400),
			expectCode: codes.InvalidArgument,
			expectMsg:  `token endpoint rejected the scopes (invalid_scope): provider "cognito": invalid_scope (400): denied`,
		},
		{
			name:       "unauthorized_client",
			err:        upErr(upstream.ErrUnauthorizedClient, "unauthorized_client", 400),
			expectCode: codes.PermissionDenied,
			expectMsg:  `client may not use the client-credentials grant (unauthorized_client): provider "cognito": unauthorized_client (400): denied`,
		},
		{
			name:        "throttled with delay",
			err:         fmt.Errorf("fetch: %w", &fakeUpstreamError{kind: upstream.ErrThrottled, text: `provider "cognito": throttled (429)`, delay: 7 * time.Second}),
			expectCode:  codes.ResourceExhausted,
			expectMsg:   `token endpoint is throttling requests: provider "cognito": throttled (429)`,
			expectRetry: 7 * time.Second,
		},
		{
			name:        "throttled without delay",
			err:         &fakeUpstreamError{kind: upstream.ErrThrottled, text: `provider "cognito": throttled (local budget)`},
			expectCode:  codes.ResourceExhausted,
			expectMsg:   `token endpoint is throttling requests: provider "cognito": throttled (local budget)`,
			expectRetry: time.Second,
		},
		{
			name:        "real upstream error",
			err:         fmt.Errorf("fetch: %w", realThrottled),
			expectCode:  codes.ResourceExhausted,
			expectMsg:   "token endpoint is throttling requests: " + realThrottled.Error(),
			expectRetry: 3 * time.Second,
		},
		{
			name:        "bare throttled",
			err:         upstream.ErrThrottled,
			expectCode:  codes.ResourceExhausted,
			expectMsg:   "token endpoint is throttling requests",
			expectRetry: time.Second,
		},
		{
			name:       "unavailable",
			err:        upErr(upstream.ErrUnavailable, "server_error", 503),
			expectCode: codes.Unavailable,
			expectMsg:  `token endpoint unavailable: provider "cognito": server_error (503): denied`,
		},
		{
			name:       "unavailable joined with an internal error",
			err:        errors.Join(errors.New(leakyText), upstream.ErrUnavailable),
			expectCode: codes.Unavailable,
			expectMsg:  "token endpoint unavailable",
		},
		{
			name:       "rejected",
			err:        upErr(upstream.ErrRejected, "invalid_request", 400),
			expectCode: codes.FailedPrecondition,
			expectMsg:  `token endpoint rejected the request: provider "cognito": invalid_request (400): denied`,
		},
		{
			name:       "upstream text is sanitised",
			err:        &fakeUpstreamError{kind: upstream.ErrRejected, text: "bad\r\nline\x00" + strings.Repeat("x", 1000)},
			expectCode: codes.FailedPrecondition,
			expectMsg:  "token endpoint rejected the request: badline" + strings.Repeat("x", 512-len("badline")),
		},
		{
			name:       "deadline exceeded",
			err:        fmt.Errorf("wait for fetch %s: %w", leakyText, context.DeadlineExceeded),
			expectCode: codes.DeadlineExceeded,
			expectMsg:  context.DeadlineExceeded.Error(),
		},
		{
			name:       "canceled",
			err:        fmt.Errorf("wait for fetch: %w", context.Canceled),
			expectCode: codes.Canceled,
			expectMsg:  context.Canceled.Error(),
		},
		{
			name:       "unknown error",
			err:        fmt.Errorf("redis: dial 10.0.0.1:6379 with %s: connection refused", leakyText),
			expectCode: codes.Internal,
			expectMsg:  "internal error",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			brokerErr = tt.err
			mu.Unlock()
			req := heldReq()
			if tt.passthrough {
				req = passReq()
			}
			_, err := ts.client.GetToken(rpcContext(t), req)
			st := status.Convert(err)
			if st.Code() != tt.expectCode {
				t.Errorf("code: got %v, want %v", st.Code(), tt.expectCode)
			}
			if st.Message() != tt.expectMsg {
				t.Errorf("message: got %q, want %q", st.Message(), tt.expectMsg)
			}
			if strings.Contains(st.Message(), "hunter2") {
				t.Errorf("message %q leaks internal error text", st.Message())
			}
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					retry = ri
				}
			}
			switch {
			case tt.expectRetry == 0 && retry != nil:
				t.Errorf("RetryInfo: got %v, want none", retry.GetRetryDelay().AsDuration())
			case tt.expectRetry != 0 && retry == nil:
				t.Errorf("RetryInfo: got none, want %v", tt.expectRetry)
			case tt.expectRetry != 0 && retry.GetRetryDelay().AsDuration() != tt.expectRetry:
				t.Errorf("RetryInfo delay: got %v, want %v", retry.GetRetryDelay().AsDuration(), tt.expectRetry)
			}
		})
	}
}

// TestStatusFromErrorNil checks the nil error.
func TestStatusFromErrorNil(t *testing.T) {
	if got := StatusFromError(nil, false); got.Code() != codes.OK {
		t.Fatalf("StatusFromError(nil): got %v, want OK", got.Code())
	}
}

// TestGetTokenResponse checks the conversion of a served token.
func TestGetTokenResponse(t *testing.T) {
	issued := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	tok := broker.Token{
		AccessToken: "eyJ.access.token",
		TokenType:   "Bearer",
		Scopes:      []string{"payments/read"},
		IssuedAt:    issued,
		ExpiresAt:   issued.Add(time.Hour),
		RefreshAt:   issued.Add(45 * time.Minute),
		KeyID:       "k-1234",
	}
	ts := startServer(t, Config{Broker: okBroker(tok)})
	resp, err := ts.client.GetToken(rpcContext(t), heldReq())
	if err != nil {
		t.Fatalf("GetToken: got error %v, want nil", err)
	}
	got := resp.GetToken()
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"access_token", got.GetAccessToken(), "eyJ.access.token"},
		{"token_type", got.GetTokenType(), "Bearer"},
		{"scopes", strings.Join(got.GetScopes(), ","), "payments/read"},
		{"issued_at", got.GetIssuedAt().AsTime(), issued},
		{"expires_at", got.GetExpiresAt().AsTime(), issued.Add(time.Hour)},
		{"refresh_at", got.GetRefreshAt().AsTime(), issued.Add(45 * time.Minute)},
		{"key_id", got.GetKeyId(), "k-1234"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}

	// Zero times stay unset.
	if p := toProtoToken(broker.Token{}); p.IssuedAt != nil || p.ExpiresAt != nil || p.RefreshAt != nil {
		t.Errorf("zero token times: got %v %v %v, want unset", p.IssuedAt, p.ExpiresAt, p.RefreshAt)
	}
}
