package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestAccessLogCauseInternal: codes.Internal is also the fallback for an
// error of no known kind, whose text may carry anything (here a secret):
// its access-log cause is the fixed "internal error". An Internal call
// whose error is of a known kind, and the other failure codes, show the
// error's text.
func TestAccessLogCauseInternal(t *testing.T) {
	const secret = "hunter2-" + "s3cret"
	unknown := fmt.Errorf("dial db with password=%s: refused", secret)
	upstreamErr := fmt.Errorf("fetch: %w", &upstream.Error{
		Provider: "cognito", Kind: upstream.ErrUnavailable, Code: "server_error", Status: 503, Description: "down",
	})
	tests := []struct {
		name string
		// err is what the broker returned; status is the error the handler
		// returned (the one StatusFromError makes of err, unless set).
		err, status error
		want        string
	}{
		{name: "unknown error", err: unknown, want: internalCause},
		{name: "wrapped unknown error", err: fmt.Errorf("get: %w", unknown), want: internalCause},
		{
			name: "known kind forced to Internal", err: fmt.Errorf("fetch: %w", upstream.ErrRejected),
			status: StatusFromError(errors.New("x"), false).Err(), want: "fetch: " + upstream.ErrRejected.Error(),
		},
		{
			name: "broker kind forced to Internal", err: broker.ErrFleetNotTold,
			status: StatusFromError(errors.New("x"), false).Err(), want: broker.ErrFleetNotTold.Error(),
		},
		{name: "upstream failure", err: upstreamErr, want: `fetch: provider "cognito": server_error (503): down`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(slog.NewJSONHandler(&buf, nil))
			st := tc.status
			if st == nil {
				st = StatusFromError(tc.err, false).Err()
			}
			c := &callLog{cause: tc.err}
			c.write(context.Background(), l, false, "/tokenbroker.v1.TokenBrokerService/GetToken", time.Now(), st)
			if strings.Contains(buf.String(), secret) {
				t.Fatalf("access log quotes the secret: %s", buf.String())
			}
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("access log record %q: %v", buf.String(), err)
			}
			if got := rec[logCause]; got != tc.want {
				t.Errorf("cause: got %v, want %q (record %v)", got, tc.want, rec)
			}
		})
	}
}
