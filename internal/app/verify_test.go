package app

import (
	"context"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// TestVerifyThroughTheApp: the broker's own tokens verify through
// VerifyToken and ext_authz Check on its gRPC listener, and the policy's
// verify grant governs who may ask.
func TestVerifyThroughTheApp(t *testing.T) {
	for _, grant := range []bool{true, false} {
		s := startStackWith(t, func(c *config.Config, _ *devissuer.Issuer) {
			issuer := strings.TrimSuffix(c.Providers[0].TokenURL, devissuer.TokenPath)
			c.Providers[0].Verify = &config.ProviderVerify{Issuer: issuer}
			c.Policy = []config.PolicyRule{{Identity: "anonymous", Clients: []string{"held"}, Scopes: []string{"*"}, Verify: grant}}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tok, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
		if err != nil {
			t.Fatalf("GetToken: %v", err)
		}
		conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		resp, err := tokenbrokerv1.NewTokenVerifierServiceClient(conn).VerifyToken(ctx, &tokenbrokerv1.VerifyTokenRequest{Token: tok.GetToken().GetAccessToken(), RequiredScopes: []string{"api/read"}})
		check, cerr := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Path: "/", Headers: map[string]string{"authorization": "Bearer " + tok.GetToken().GetAccessToken()},
		}}}})
		if !grant {
			// Check refuses with a denied response (403), not an RPC error
			// that Envoy's failure_mode_allow could pass.
			if status.Code(err) != codes.PermissionDenied || cerr != nil || check.GetDeniedResponse().GetStatus().GetCode() != 403 {
				t.Fatalf("without verify: VerifyToken = %v, Check = %v, %v; want PermissionDenied and a 403 denied response", err, check, cerr)
			}
			continue
		}
		if err != nil || resp.GetClaims().GetProvider() != "test" || resp.GetClaims().GetClientId() != heldID {
			t.Fatalf("VerifyToken = %v, %v; want the claims of provider test", resp, err)
		}
		if cerr != nil || check.GetOkResponse() == nil {
			t.Fatalf("Check = %v, %v; want OK", check, cerr)
		}
	}
}
