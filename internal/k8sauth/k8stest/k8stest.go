// Package k8stest is a test Kubernetes service-account issuer: an
// httptest server serving OpenID discovery and a JWKS the way an API
// server does, and tokens shaped like the kubelet's projected
// service-account tokens. It is for tests only.
package k8stest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Issuer is a test service-account issuer.
type Issuer struct {
	// URL is the issuer ("iss") and discovery base.
	URL string
	srv *httptest.Server

	mu   sync.Mutex
	keys []jose.JSONWebKey // private; the JWKS serves their public halves
	n    int
	// JWKSFetches counts the JWKS requests served.
	JWKSFetches atomic.Int64
}

// NewIssuer starts an issuer with one RS256 key; it stops with the test.
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	iss := &Issuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss.URL,
			"jwks_uri":                              iss.URL + "/openid/v1/jwks",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		iss.JWKSFetches.Add(1)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(iss.JWKS())
	})
	iss.srv = httptest.NewServer(mux)
	iss.URL = iss.srv.URL
	t.Cleanup(iss.srv.Close)
	iss.AddKey(t, jose.RS256)
	return iss
}

// AddKey adds a signing key of alg (RS256 or ES256) and makes it the one
// Mint signs with; it returns its key id.
func (iss *Issuer) AddKey(t testing.TB, alg jose.SignatureAlgorithm) string {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	iss.mu.Lock()
	defer iss.mu.Unlock()
	iss.n++
	kid := "key-" + strconv.Itoa(iss.n)
	iss.keys = append(iss.keys, jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: string(alg), Use: "sig"})
	return kid
}

// JWKS returns the public key set.
func (iss *Issuer) JWKS() []byte {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	set := jose.JSONWebKeySet{}
	for _, k := range iss.keys {
		set.Keys = append(set.Keys, k.Public())
	}
	b, _ := json.Marshal(set)
	return b
}

// Token describes a token to mint. Zero fields take the defaults of a
// projected token for audience "tokenbroker", valid for an hour from now.
type Token struct {
	Namespace, ServiceAccount, Pod string
	// Audience: default ["tokenbroker"].
	Audience []string
	// Issuer: default the Issuer's URL.
	Issuer string
	// IssuedAt, NotBefore, Expiry: default now, now, now+1h.
	IssuedAt, NotBefore, Expiry time.Time
	// NoPod leaves the pod out of the kubernetes.io claim.
	NoPod bool
	// Subject overrides "system:serviceaccount:NS:SA".
	Subject string
	// Key signs with another key than the newest (for unknown-key tests).
	Key *jose.JSONWebKey
}

// Mint signs a token shaped like a kubelet-projected service-account
// token with the newest key (or tok.Key).
func (iss *Issuer) Mint(t testing.TB, tok Token) string {
	t.Helper()
	now := time.Now()
	if tok.Audience == nil {
		tok.Audience = []string{"tokenbroker"}
	}
	if tok.Issuer == "" {
		tok.Issuer = iss.URL
	}
	if tok.IssuedAt.IsZero() {
		tok.IssuedAt = now
	}
	if tok.NotBefore.IsZero() {
		tok.NotBefore = now
	}
	if tok.Expiry.IsZero() {
		tok.Expiry = now.Add(time.Hour)
	}
	if tok.Pod == "" {
		tok.Pod = tok.ServiceAccount + "-7d4b9c-x2x9z"
	}
	if tok.Subject == "" {
		tok.Subject = "system:serviceaccount:" + tok.Namespace + ":" + tok.ServiceAccount
	}
	key := tok.Key
	if key == nil {
		iss.mu.Lock()
		k := iss.keys[len(iss.keys)-1]
		iss.mu.Unlock()
		key = &k
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(key.Algorithm), Key: key},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	k8s := map[string]any{
		"namespace":      tok.Namespace,
		"serviceaccount": map[string]any{"name": tok.ServiceAccount, "uid": "1b6c7e0a-5b0e-4a39-9f5d-3f2f0a4c8b11"},
	}
	if !tok.NoPod {
		k8s["pod"] = map[string]any{"name": tok.Pod, "uid": "7e1b2f4d-0c3a-4a8e-9b1f-2d6c5a4e3b21"}
	}
	raw, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer:    tok.Issuer,
		Subject:   tok.Subject,
		Audience:  jwt.Audience(tok.Audience),
		Expiry:    jwt.NewNumericDate(tok.Expiry),
		NotBefore: jwt.NewNumericDate(tok.NotBefore),
		IssuedAt:  jwt.NewNumericDate(tok.IssuedAt),
	}).Claims(map[string]any{"kubernetes.io": k8s}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// ForeignKey returns a key the issuer does not publish (RS256, key id
// "foreign-1").
func ForeignKey(t testing.TB) *jose.JSONWebKey {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &jose.JSONWebKey{Key: priv, KeyID: "foreign-1", Algorithm: string(jose.RS256), Use: "sig"}
}

// KeyAs returns a key the issuer does not publish but carrying the key id
// of the issuer's newest key (for bad-signature tests).
func (iss *Issuer) KeyAs(t testing.TB) *jose.JSONWebKey {
	t.Helper()
	k := ForeignKey(t)
	iss.mu.Lock()
	k.KeyID = iss.keys[len(iss.keys)-1].KeyID
	iss.mu.Unlock()
	return k
}
