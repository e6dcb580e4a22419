package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

// TestCheck: -check validates and reads every file, reporting every
// problem at once with file and line; -check=online asks for one token
// per broker-held client and reports each (private_key_jwt and a secret
// client against the dev issuer over HTTP, one of them refused). No port
// is bound: the configuration's listen addresses are taken.
func TestCheck(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is, err := devissuer.New(devissuer.Config{Lifetime: 10 * time.Minute, Clients: []devissuer.Client{
		{ID: "jwt-client", PublicKeys: []jose.JSONWebKey{{Key: &key.PublicKey}}, Scopes: []string{"r/read"}},
		{ID: "secret-client", Secret: "the-right-secret", Scopes: []string{"r/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(is.Handler())
	defer srv.Close()
	// A port that is taken: -check must not bind the listen address.
	taken := strings.TrimPrefix(srv.URL, "http://")

	dir := t.TempDir()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("client.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	write("wrong.secret", "not-the-secret\n")
	cfg := write("config.yaml", fmt.Sprintf(`listen: %[1]s
http_listen: ""
auth:
  allow_unauthenticated: true
providers:
  - name: dev
    token_url: %[2]s/oauth2/token
clients:
  - name: signer
    provider: dev
    client_id: jwt-client
    auth_method: private_key_jwt
    client_key_file: client.key
  - name: wrong
    provider: dev
    client_id: secret-client
    client_secret_file: wrong.secret
`, taken, srv.URL))

	var out, errOut strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, []string{"-check", "-config", cfg}, nil, &out, &errOut); err != nil {
		t.Fatalf("-check = %v", err)
	}
	if !strings.Contains(out.String(), "configuration OK: 1 providers, 2 clients") {
		t.Fatalf("-check printed %q", out.String())
	}
	if is.Requests() != 0 {
		t.Fatalf("-check (offline) sent %d token requests", is.Requests())
	}

	out.Reset()
	err = run(ctx, []string{"-check=online", "-config", cfg}, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 clients failed") {
		t.Fatalf("-check=online = %v, want 1 of 2 clients failed", err)
	}
	got := out.String()
	for _, want := range []string{
		`client "signer" (provider "dev", private_key_jwt): ok: lifetime 10m0s, scopes r/read`,
		`client "wrong" (provider "dev", client_secret_basic): FAILED: provider "dev": invalid_client (401)`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("-check=online output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got+errOut.String(), "not-the-secret") || strings.Contains(got+errOut.String(), "eyJ") {
		t.Fatalf("-check=online output holds a secret or a token:\n%s\n%s", got, errOut.String())
	}

	// Every problem at once, located: a bad key and a missing file.
	bad := write("bad.yaml", fmt.Sprintf(`auth:
  allow_unauthenticated: true
providers:
  - name: dev
    token_url: %[1]s/oauth2/token
clients:
  - name: signer
    provider: dev
    client_id: jwt-client
    auth_method: private_key_jwt
    client_key_file: missing.key
    assertion_lifetime: 10m
  - name: mtls
    provider: dev
    client_id: m
    auth_method: tls_client_auth
    client_cert_file: c.pem
`, srv.URL))
	err = run(ctx, []string{"-check", "-config", bad}, nil, &out, &errOut)
	if err == nil {
		t.Fatal("-check of a bad configuration = nil")
	}
	for _, want := range []string{
		"bad.yaml:12: clients[0].assertion_lifetime: must be > 0 and at most 5m",
		"bad.yaml:13: clients[1]: auth_method tls_client_auth needs client_cert_file and client_key_file",
		"clients[0].client_key_file: cannot read",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("-check error lacks %q:\n%v", want, err)
		}
	}
	if _, _, err := checkFlag([]string{"-check=sometimes"}); err == nil {
		t.Error("-check=sometimes accepted")
	}
}
