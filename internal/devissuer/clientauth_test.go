package devissuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestPrivateKeyJWT: the issuer accepts a well-formed assertion once and
// refuses every broken one with invalid_client and a reason.
func TestPrivateKeyJWT(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const id = "jwt-client"
	_, srv := newTestServer(t, Config{Clients: []Client{{ID: id, Scopes: []string{"a/read"},
		PublicKeys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1"}}}}})
	aud := srv.URL + TokenPath
	now := time.Now()
	type claims struct {
		iss, sub, aud, jti string
		iat, exp           time.Time
		kid                string
		signWith           *ecdsa.PrivateKey
	}
	good := func() claims {
		return claims{iss: id, sub: id, aud: aud, jti: rand.Text(), iat: now, exp: now.Add(time.Minute), kid: "k1", signWith: key}
	}
	sign := func(c claims) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: c.signWith, KeyID: c.kid}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		a, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: c.iss, Subject: c.sub, Audience: jwt.Audience{c.aud}, ID: c.jti,
			IssuedAt: jwt.NewNumericDate(c.iat), Expiry: jwt.NewNumericDate(c.exp)}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	send := func(a string) response {
		return do(t, srv.URL, tokenReq{form: url.Values{"grant_type": {"client_credentials"},
			"client_assertion_type": {AssertionType}, "client_assertion": {a}}})
	}
	ok := sign(good())
	if r := send(ok); r.status != 200 {
		t.Fatalf("good assertion: status %d %v", r.status, r.body)
	}
	if r := send(ok); r.status != 401 || !strings.Contains(r.str("error_description"), "replay") {
		t.Fatalf("replayed assertion: status %d %v, want 401 replay", r.status, r.body)
	}
	issuerAud := good()
	issuerAud.aud = srv.URL
	if r := send(sign(issuerAud)); r.status != 200 {
		t.Fatalf("assertion with the issuer as aud: status %d %v", r.status, r.body)
	}
	for _, tc := range []struct {
		name   string
		change func(*claims)
		want   string
	}{
		{"expired", func(c *claims) { c.iat, c.exp = now.Add(-2*time.Minute), now.Add(-time.Minute) }, "expired"},
		{"issued in the future", func(c *claims) { c.iat, c.exp = now.Add(time.Minute), now.Add(2*time.Minute) }, "iat"},
		{"lives too long", func(c *claims) { c.exp = now.Add(10 * time.Minute) }, "5 minutes"},
		{"wrong aud", func(c *claims) { c.aud = "https://elsewhere.example/token" }, "aud"},
		{"unknown kid", func(c *claims) { c.kid = "k9" }, "unknown kid"},
		{"wrong key", func(c *claims) { c.signWith = other }, "signature"},
		{"sub is not the client", func(c *claims) { c.sub = "someone" }, "iss and sub"},
		{"no jti", func(c *claims) { c.jti = "" }, "jti"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			a := sign(c)
			r := send(a)
			if r.status != 401 || r.str("error") != "invalid_client" || !strings.Contains(r.str("error_description"), tc.want) {
				t.Fatalf("got %d %v, want 401 invalid_client saying %q", r.status, r.body, tc.want)
			}
			if strings.Contains(r.str("error_description"), a) {
				t.Fatal("the answer quotes the assertion")
			}
		})
	}
	// A client registered without a secret never authenticates with an
	// empty one.
	if r := do(t, srv.URL, tokenReq{form: url.Values{"grant_type": {"client_credentials"}},
		authz: []string{basicHeader(id, "")}}); r.status != 401 {
		t.Fatalf("empty secret for a key-only client: status %d, want 401", r.status)
	}
}
