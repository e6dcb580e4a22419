package config

import (
	"strings"
	"testing"
)

// TestVerifyIntrospectionClientNeedsSecret: introspection authenticates
// with a client secret, so introspection_client must name a client of a
// secret method; a private_key_jwt or mTLS client is refused.
func TestVerifyIntrospectionClientNeedsSecret(t *testing.T) {
	for _, tc := range []struct {
		method string
		ok     bool
	}{
		{"", true},
		{AuthClientSecretBasic, true},
		{AuthClientSecretPost, true},
		{AuthPrivateKeyJWT, false},
		{AuthTLSClient, false},
	} {
		c := validConfig()
		c.Providers[1].Verify = &ProviderVerify{Issuer: "http://127.0.0.1:9/", Audiences: []string{"api"},
			IntrospectionURL: "http://127.0.0.1:9/introspect", IntrospectionClient: "billing"}
		c.Clients[1].AuthMethod = tc.method
		want := `providers[1].verify.introspection_client: must name a client that uses client_secret_basic or client_secret_post, got "billing"`
		found := false
		for _, p := range problems(c.Validate()) {
			found = found || strings.Contains(p, want)
		}
		if found == tc.ok {
			t.Errorf("auth_method %q: problems %q; want the introspection_client problem: %v", tc.method, problems(c.Validate()), !tc.ok)
		}
	}
}

// TestVerifyOAuth2NeedsAudiencesOrClientIDs: flavour oauth2 without
// audiences and client_ids would accept the provider's tokens for any
// resource server; it is a configuration error naming the verify key.
func TestVerifyOAuth2NeedsAudiencesOrClientIDs(t *testing.T) {
	for _, tc := range []struct {
		name string
		pv   ProviderVerify
		ok   bool
	}{
		{"neither", ProviderVerify{Issuer: "https://idp.example"}, false},
		{"neither, explicit oauth2", ProviderVerify{Issuer: "https://idp.example", Flavour: FlavourOAuth2}, false},
		{"audiences", ProviderVerify{Issuer: "https://idp.example", Audiences: []string{"api"}}, true},
		{"client_ids", ProviderVerify{Issuer: "https://idp.example", ClientIDs: []string{"abc"}}, true},
		{"cognito", ProviderVerify{Issuer: "https://idp.example", Flavour: FlavourCognito}, true},
	} {
		c := validConfig()
		c.Providers[0].Verify = &tc.pv
		want := "providers[0].verify: flavour oauth2 needs audiences or client_ids"
		found := false
		for _, p := range problems(c.Validate()) {
			found = found || strings.Contains(p, want)
		}
		if found == tc.ok {
			t.Errorf("%s: problems %q; want the audiences problem: %v", tc.name, problems(c.Validate()), !tc.ok)
		}
	}
}
