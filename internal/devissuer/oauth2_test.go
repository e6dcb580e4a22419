package devissuer

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// TestClientCredentialsLibrary checks RFC 6749 conformance with an
// independent client: golang.org/x/oauth2/clientcredentials.
func TestClientCredentialsLibrary(t *testing.T) {
	_, srv := newTestServer(t, testConfig())
	set := fetchJWKS(t, srv.URL)

	styles := []struct {
		name  string
		style oauth2.AuthStyle
	}{
		{"AuthStyleInHeader", oauth2.AuthStyleInHeader},
		{"AuthStyleInParams", oauth2.AuthStyleInParams},
	}
	tests := []struct {
		name      string
		client    Client
		scopes    []string
		wantScope string
	}{
		{"plain, all scopes", plainClient, nil, "orders/read orders/write"},
		{"plain, one scope", plainClient, []string{"orders/read"}, "orders/read"},
		{"odd characters", oddClient, []string{"api/admin", "api/read"}, "api/admin api/read"},
	}
	for _, st := range styles {
		for _, tt := range tests {
			t.Run(st.name+"/"+tt.name, func(t *testing.T) {
				cfg := clientcredentials.Config{
					ClientID:     tt.client.ID,
					ClientSecret: tt.client.Secret,
					TokenURL:     srv.URL + TokenPath,
					Scopes:       tt.scopes,
					AuthStyle:    st.style,
				}
				ctx, cancel := context.WithTimeout(context.WithValue(t.Context(), oauth2.HTTPClient, httpClient), testTimeout)
				defer cancel()
				start := time.Now()
				tok, err := cfg.Token(ctx)
				if err != nil {
					t.Fatalf("Token: got error %v, want nil", err)
				}
				if tok.TokenType != "Bearer" || !tok.Valid() {
					t.Errorf("token: got type %q valid %v, want a valid Bearer token", tok.TokenType, tok.Valid())
				}
				if got, _ := tok.Extra("expires_in").(float64); got != DefaultLifetime.Seconds() {
					t.Errorf("expires_in: got %v, want %v", tok.Extra("expires_in"), DefaultLifetime.Seconds())
				}
				if d := tok.Expiry.Sub(start); d < DefaultLifetime-time.Minute || d > DefaultLifetime+time.Minute {
					t.Errorf("Expiry: got %s from now, want about %s", d, DefaultLifetime)
				}
				if got, _ := tok.Extra("scope").(string); got != tt.wantScope {
					t.Errorf("scope: got %q, want %q", got, tt.wantScope)
				}
				c := verify(t, set, tok.AccessToken)
				if c.ClientID != tt.client.ID || c.Scope != tt.wantScope {
					t.Errorf("claims: got client_id %q scope %q, want %q and %q", c.ClientID, c.Scope, tt.client.ID, tt.wantScope)
				}
			})
		}
	}

	for _, st := range styles {
		t.Run(st.name+"/errors", func(t *testing.T) {
			for _, tc := range []struct {
				name     string
				secret   string
				scopes   []string
				wantCode string
				wantHTTP int
			}{
				{"wrong secret", "wrong", nil, "invalid_client", http.StatusUnauthorized},
				{"invalid scope", plainClient.Secret, []string{"orders/delete"}, "invalid_scope", http.StatusBadRequest},
			} {
				cfg := clientcredentials.Config{
					ClientID:     plainClient.ID,
					ClientSecret: tc.secret,
					TokenURL:     srv.URL + TokenPath,
					Scopes:       tc.scopes,
					AuthStyle:    st.style,
				}
				ctx, cancel := context.WithTimeout(context.WithValue(t.Context(), oauth2.HTTPClient, httpClient), testTimeout)
				_, err := cfg.Token(ctx)
				cancel()
				re, ok := errors.AsType[*oauth2.RetrieveError](err)
				if !ok {
					t.Fatalf("%s: got error %v, want *oauth2.RetrieveError", tc.name, err)
				}
				if re.ErrorCode != tc.wantCode || re.Response.StatusCode != tc.wantHTTP {
					t.Errorf("%s: got %q (HTTP %d), want %q (HTTP %d)", tc.name, re.ErrorCode, re.Response.StatusCode, tc.wantCode, tc.wantHTTP)
				}
			}
		})
	}
}
