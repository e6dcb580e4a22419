package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// TestStarPolicyExcludesAnonymous: a policy rule for "*" grants every
// authenticated caller, never the anonymous one, on gRPC and on the
// drop-in HTTP endpoint alike; an explicit "anonymous" rule admits it
// (with auth.allow_unauthenticated on), and naming "anonymous" without it
// is refused at startup.
func TestStarPolicyExcludesAnonymous(t *testing.T) {
	_, tokenURL := startIssuer(t, nil)
	star := config.PolicyRule{Identity: "*", Clients: []string{"held"}, Scopes: []string{"*"}, Passthrough: true}
	anonymous := config.PolicyRule{Identity: "anonymous", Clients: []string{"held"}, Scopes: []string{"*"}, Passthrough: true}

	for _, tc := range []struct {
		name   string
		policy []config.PolicyRule
		want   codes.Code
	}{
		{"star only", []config.PolicyRule{star}, codes.PermissionDenied},
		{"explicit anonymous", []config.PolicyRule{star, anonymous}, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := stackConfig(tokenURL) // allow_unauthenticated: true
			cfg.Policy = tc.policy
			addr, httpAddr, _ := serveAppHTTP(t, cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			_, err := (&stack{addr: addr}).dial(t).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
			if got := status.Code(err); got != tc.want {
				t.Errorf("gRPC, anonymous: got %v, want %v", err, tc.want)
			}

			oc := clientcredentials.Config{ClientID: passID, ClientSecret: passSecret, TokenURL: "http://" + httpAddr + "/oauth2/token"}
			_, err = oc.Token(ctx)
			var re *oauth2.RetrieveError
			switch {
			case tc.want == codes.OK && err != nil:
				t.Errorf("HTTP, anonymous: got %v, want a token", err)
			case tc.want != codes.OK && (!errors.As(err, &re) || re.Response.StatusCode != http.StatusForbidden):
				t.Errorf("HTTP, anonymous: got %v, want 403 access_denied", err)
			}
		})
	}

	t.Run("anonymous without allow_unauthenticated", func(t *testing.T) {
		cfg := stackConfig(tokenURL)
		cfg.Auth.AllowUnauthenticated = false
		cfg.Auth.APIKeys = []config.APIKey{{Identity: "worker", SHA256: strings.Repeat("ab", 32)}}
		cfg.Admin.Identities = nil
		cfg.Policy = []config.PolicyRule{star, anonymous}
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), `policy[1].identity: "anonymous" matches only unauthenticated callers`) {
			t.Errorf("Validate: got %v, want policy[1].identity refused", err)
		}
		if _, err := New(cfg, Keys{}, slog.New(slog.NewJSONHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "auth.allow_unauthenticated") {
			t.Errorf("New: got %v, want an error naming auth.allow_unauthenticated", err)
		}
	})
}
