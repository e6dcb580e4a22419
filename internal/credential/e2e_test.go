package credential_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/internal/credential"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }

const clientID = "jwt-client"

// issuer starts a dev issuer over real HTTP; tls makes it HTTPS asking
// for (any) client certificate.
func issuer(t *testing.T, useTLS bool, clients ...devissuer.Client) (*devissuer.Issuer, *httptest.Server) {
	t.Helper()
	is, err := devissuer.New(devissuer.Config{Clients: clients})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(is.Handler())
	if useTLS {
		srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return is, srv
}

// client returns an upstream client of srv's token endpoint.
func client(t *testing.T, srv *httptest.Server, logger *slog.Logger, attempts int) *upstream.Client {
	t.Helper()
	c, err := upstream.New(upstream.Provider{
		Name: "dev", TokenURL: srv.URL + devissuer.TokenPath, AuthMethod: upstream.AuthBasic,
		Timeout: 5 * time.Second, RateLimit: 1000, Burst: 100, DefaultLifetime: time.Hour,
		PassthroughShare: 1, PassthroughCallerShare: 1, PassthroughClientShare: 1,
	}, upstream.Options{HTTPClient: srv.Client(), Logger: logger, MaxAttempts: attempts, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fetch(t *testing.T, c *upstream.Client, cr *upstream.Credential) (upstream.Token, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Fetch(ctx, upstream.Request{ClientID: clientID, Credential: cr})
}

// writeFile writes a private file.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil { // atomic, as a rotation does
		t.Fatal(err)
	}
	return p
}

func pemKey(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub(k crypto.Signer, kid string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.Public(), KeyID: kid}
}

// TestPrivateKeyJWTEndToEnd: every algorithm, PEM and JWK files, against
// the dev issuer over HTTP; two fetches in a row (a new jti each).
func TestPrivateKeyJWTEndToEnd(t *testing.T) {
	rk, ek := rsaKey(t), ecKey(t)
	jwkFile := func(k crypto.Signer, kid, alg string) []byte {
		b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k, KeyID: kid, Algorithm: alg}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name, alg, kid string
		key            crypto.Signer
		file           []byte
	}{
		{"RS256 PEM", "", "", rk, pemKey(t, rk)},
		{"PS256 PEM with kid", "PS256", "k1", rk, pemKey(t, rk)},
		{"ES256 PEM", "", "e1", ek, pemKey(t, ek)},
		{"ES256 JWK set", "", "", ek, jwkFile(ek, "jwk-e", "ES256")},
		{"PS256 JWK set", "", "", rk, jwkFile(rk, "jwk-r", "PS256")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kid := tc.kid
			if kid == "" && strings.HasPrefix(tc.name, "ES256 JWK") {
				kid = "jwk-e"
			} else if kid == "" && strings.HasPrefix(tc.name, "PS256 JWK") {
				kid = "jwk-r"
			}
			_, srv := issuer(t, false, devissuer.Client{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(tc.key, kid)}, Scopes: []string{"a/b"}})
			path := writeFile(t, t.TempDir(), "key", tc.file)
			cr, err := credential.New(credential.Spec{Name: "c", Method: upstream.AuthPrivateKeyJWT, KeyFile: path, KeyID: tc.kid, Algorithm: tc.alg}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := client(t, srv, nil, 1)
			for range 2 {
				tok, err := fetch(t, c, cr)
				if err != nil {
					t.Fatalf("Fetch = %v", err)
				}
				if tok.AccessToken == "" {
					t.Fatal("no token")
				}
			}
		})
	}
}

// TestRetryGetsNewAssertion: the endpoint consumes the first assertion and
// answers 503; the retry must carry a new jti or the issuer refuses it as
// a replay.
func TestRetryGetsNewAssertion(t *testing.T) {
	k := ecKey(t)
	is, err := devissuer.New(devissuer.Config{Clients: []devissuer.Client{{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(k, "")}}}})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	h := is.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			h.ServeHTTP(httptest.NewRecorder(), r) // the issuer sees (and remembers) the jti
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	path := writeFile(t, t.TempDir(), "key", pemKey(t, k))
	cr, err := credential.New(credential.Spec{Name: "c", Method: upstream.AuthPrivateKeyJWT, KeyFile: path}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := fetch(t, client(t, srv, nil, 2), cr)
	if err != nil {
		t.Fatalf("Fetch = %v, want a token from the retry", err)
	}
	if tok.Requests != 2 {
		t.Fatalf("Requests = %d, want 2", tok.Requests)
	}
}

// TestKeyRotation: the key file gains a new key (the last one signs);
// once the watcher saw it, the issuer that knows only the new key
// accepts the assertions.
func TestKeyRotation(t *testing.T) {
	oldK, newK := ecKey(t), ecKey(t)
	is, srv := issuer(t, false, devissuer.Client{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(oldK, "")}})
	dir := t.TempDir()
	path := writeFile(t, dir, "key", pemKey(t, oldK))
	spec := credential.Spec{Name: "c", Method: upstream.AuthPrivateKeyJWT, KeyFile: path}
	cr, err := credential.New(spec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	w := credential.NewWatcher([]credential.Source{{Spec: spec, Credential: cr}}, time.Hour, nil, slog.New(slog.NewJSONHandler(&logs, nil)))
	c := client(t, srv, nil, 1)
	if _, err := fetch(t, c, cr); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "key", append(pemKey(t, oldK), pemKey(t, newK)...))
	is.AddClient(devissuer.Client{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(newK, "")}})
	w.Check()
	if _, err := fetch(t, c, cr); err != nil {
		t.Fatalf("Fetch after rotation = %v", err)
	}
	if !strings.Contains(logs.String(), "client credential reloaded") {
		t.Fatalf("no reload logged: %s", logs.String())
	}
}

// TestWatcherSeesEvents: Run notices a rewritten secret file by its
// fsnotify event (the poll interval is an hour), and a broken file keeps
// the previous secret.
func TestWatcherSeesEvents(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "secret", []byte("first-secret-value\n"))
	spec := credential.Spec{Name: "c", Method: upstream.AuthBasic, SecretFile: path}
	cr, err := credential.New(spec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	w := credential.NewWatcher([]credential.Source{{Spec: spec, Credential: cr}}, time.Hour, nil, slog.New(slog.NewJSONHandler(&logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitLog := func(substr string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !strings.Contains(logs.String(), substr) {
			select {
			case <-logs.Wrote():
			case <-deadline:
				t.Fatalf("no %q in the log: %s", substr, logs.String())
			}
		}
	}
	// The watch starts asynchronously: rewrite until the event is seen.
	writeFile(t, dir, "secret", []byte("second-secret-value\n"))
	for i := 0; !strings.Contains(logs.String(), "reloaded"); i++ {
		select {
		case <-logs.Wrote():
		case <-time.After(100 * time.Millisecond):
			writeFile(t, dir, "secret", []byte("second-secret-value\n"+strings.Repeat("\n", i%2)))
		}
		if i > 100 {
			t.Fatal("reload never seen")
		}
	}
	if got := cr.Current().Secret.Reveal(); got != "second-secret-value" {
		t.Fatalf("secret = %q after reload", got)
	}
	writeFile(t, dir, "secret", []byte("\n"))
	waitLog("cannot be reloaded")
	if got := cr.Current().Secret.Reveal(); got != "second-secret-value" {
		t.Fatalf("secret = %q after a failed reload, want the previous one", got)
	}
	for _, s := range []string{"first-secret-value", "second-secret-value"} {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("log holds the secret: %s", logs.String())
		}
	}
}

// selfSigned returns a self-signed client certificate and its key, PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte, thumb string) {
	t.Helper()
	k := ecKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: clientID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pemKey(t, k), upstream.CertThumbprint(der)
}

// TestMutualTLSEndToEnd: self_signed_tls_client_auth against the dev
// issuer over HTTPS; the token is bound to the certificate and says so;
// a new certificate is used once the watcher saw it.
func TestMutualTLSEndToEnd(t *testing.T) {
	for _, method := range []upstream.AuthMethod{upstream.AuthSelfSignedTLSClient, upstream.AuthTLSClient} {
		t.Run(string(method), func(t *testing.T) {
			certPEM, keyPEM, thumb := selfSigned(t)
			is, srv := issuer(t, true, devissuer.Client{ID: clientID, CertThumbprints: []string{thumb}})
			dir := t.TempDir()
			spec := credential.Spec{Name: "m", Method: method,
				CertFile: writeFile(t, dir, "cert.pem", certPEM), KeyFile: writeFile(t, dir, "key.pem", keyPEM)}
			cr, err := credential.New(spec, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := client(t, srv, nil, 1)
			tok, err := fetch(t, c, cr)
			if err != nil {
				t.Fatalf("Fetch = %v", err)
			}
			if tok.CertThumbprint != thumb {
				t.Fatalf("CertThumbprint = %q, want %q", tok.CertThumbprint, thumb)
			}
			// Rotation: a new certificate, registered in place of the old.
			cert2, key2, thumb2 := selfSigned(t)
			writeFile(t, dir, "cert.pem", cert2)
			writeFile(t, dir, "key.pem", key2)
			is.AddClient(devissuer.Client{ID: clientID, CertThumbprints: []string{thumb2}})
			credential.NewWatcherForTest(spec, cr).Check()
			tok, err = fetch(t, c, cr)
			if err != nil {
				t.Fatalf("Fetch after rotation = %v", err)
			}
			if tok.CertThumbprint != thumb2 {
				t.Fatalf("CertThumbprint = %q, want the new %q", tok.CertThumbprint, thumb2)
			}
		})
	}
}

// assertionFor signs a client assertion as a platform would.
func assertionFor(t *testing.T, k crypto.Signer, aud string, iat, exp time.Time) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: clientID, Subject: clientID, Audience: jwt.Audience{aud},
		ID: rand.Text(), IssuedAt: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAssertionFile: a ready assertion is read for every request; a
// renewed one is used at once; an expired one and a vanished file are
// refused locally, naming the file, never quoting the assertion.
func TestAssertionFile(t *testing.T) {
	k := ecKey(t)
	_, srv := issuer(t, false, devissuer.Client{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(k, "")}})
	aud := srv.URL + devissuer.TokenPath
	dir := t.TempDir()
	now := time.Now()
	a1 := assertionFor(t, k, aud, now, now.Add(time.Minute))
	path := writeFile(t, dir, "assertion", []byte(a1+"\n"))
	cr, err := credential.New(credential.Spec{Name: "w", Method: upstream.AuthPrivateKeyJWT, AssertionFile: path}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, srv, nil, 1)
	if _, err := fetch(t, c, cr); err != nil {
		t.Fatalf("Fetch = %v", err)
	}
	// The same assertion again is a replay: the platform renews it.
	a2 := assertionFor(t, k, aud, now, now.Add(time.Minute))
	writeFile(t, dir, "assertion", []byte(a2))
	if _, err := fetch(t, c, cr); err != nil {
		t.Fatalf("Fetch with the renewed assertion = %v", err)
	}
	expired := assertionFor(t, k, aud, now.Add(-2*time.Minute), now.Add(-time.Minute))
	writeFile(t, dir, "assertion", []byte(expired))
	_, err = fetch(t, c, cr)
	checkLocal(t, err, "expired", path, expired)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = fetch(t, c, cr)
	checkLocal(t, err, "no such file", path, a2)
}

// TestReadableAssertionFileWarnedOnce: an assertion file others may read
// (a projected volume's 0644) is read for every request but warned about
// once, not on every token request.
func TestReadableAssertionFileWarnedOnce(t *testing.T) {
	k := ecKey(t)
	_, srv := issuer(t, false, devissuer.Client{ID: clientID, PublicKeys: []jose.JSONWebKey{pub(k, "")}})
	aud := srv.URL + devissuer.TokenPath
	dir := t.TempDir()
	path := filepath.Join(dir, "assertion")
	cr, err := credential.New(credential.Spec{Name: "w", Method: upstream.AuthPrivateKeyJWT, AssertionFile: writeFile(t, dir, "assertion", []byte("x"))}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	c := client(t, srv, testkit.TextLogger(&logs), 1)
	for range 3 {
		now := time.Now()
		writeFile(t, dir, "assertion", []byte(assertionFor(t, k, aud, now, now.Add(time.Minute))))
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := fetch(t, c, cr); err != nil {
			t.Fatalf("Fetch = %v", err)
		}
	}
	if n := strings.Count(logs.String(), "readable by others"); n != 1 {
		t.Errorf("got %d 'readable by others' warnings for 3 requests, want 1:\n%s", n, logs.String())
	}
}

func checkLocal(t *testing.T, err error, want, path, assertion string) {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) || !ue.Local || ue.Requests != 0 {
		t.Fatalf("Fetch = %v, want a Local error with no request sent", err)
	}
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not say %q and name %s", err, want, path)
	}
	if strings.Contains(err.Error(), assertion) {
		t.Fatal("error holds the assertion")
	}
}

// TestLoadRefusals: the rules of key and certificate files.
func TestLoadRefusals(t *testing.T) {
	dir := t.TempDir()
	k := ecKey(t)
	keyPEM := pemKey(t, k)
	certPEM, _, _ := selfSigned(t)
	otherCert, otherKey, _ := selfSigned(t)
	_ = otherCert

	writable := filepath.Join(dir, "writable.pem")
	if err := os.WriteFile(writable, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(writable, 0o620); err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(dir, "readable.pem")
	if err := os.WriteFile(readable, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, tc := range []struct {
		name string
		spec credential.Spec
		want string
	}{
		{"key file writable by group", credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: writable}, "group or others can write it"},
		{"wrong algorithm for the key", credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: writeFile(t, dir, "ec.pem", keyPEM), Algorithm: "RS256"}, "a P-256 key signs with ES256"},
		{"short RSA key", credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: writeFile(t, dir, "small.pem", pemKey(t, small))}, "at least 2048"},
		{"public JWK", credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: writeFile(t, dir, "pub.json", mustJSON(t, pub(k, "x")))}, "public key"},
		{"not a key", credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: writeFile(t, dir, "junk", []byte("hello"))}, "holds no PEM private key"},
		{"certificate not matching its key", credential.Spec{Method: upstream.AuthTLSClient, CertFile: writeFile(t, dir, "c.pem", certPEM), KeyFile: writeFile(t, dir, "k.pem", otherKey)}, "does not match its key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := credential.New(tc.spec, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), string(keyPEM[40:70])) {
				t.Fatalf("error quotes the key: %v", err)
			}
		})
	}
	var logs testkit.LogBuffer
	if _, err := credential.New(credential.Spec{Method: upstream.AuthPrivateKeyJWT, KeyFile: readable}, nil, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
		t.Fatalf("a key file readable by others is allowed with a warning, got %v", err)
	}
	if !strings.Contains(logs.String(), "readable by others") {
		t.Fatalf("no warning for a key file readable by others: %s", logs.String())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRejectedRotatedSecretIsLogged: a rotated secret the endpoint
// refuses is logged with the client's name and file, never the secret;
// the form carries the request's parameters.
func TestRejectedRotatedSecretIsLogged(t *testing.T) {
	is, err := devissuer.New(devissuer.Config{Clients: []devissuer.Client{{ID: clientID, Secret: "good-secret-123"}}})
	if err != nil {
		t.Fatal(err)
	}
	var gotForm atomic.Value
	h := is.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err == nil {
			gotForm.Store(r.PostForm.Encode())
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	path := writeFile(t, dir, "secret", []byte("good-secret-123\n"))
	spec := credential.Spec{Name: "orders", Method: upstream.AuthPost, SecretFile: path}
	cr, err := credential.New(spec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	c := client(t, srv, logger, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Fetch(ctx, upstream.Request{ClientID: clientID, Credential: cr, Params: [][2]string{{"tenant", "t1"}}}); err != nil {
		t.Fatal(err)
	}
	if f, _ := gotForm.Load().(string); !strings.Contains(f, "tenant=t1") {
		t.Fatalf("form %q lacks the parameter", f)
	}
	writeFile(t, dir, "secret", []byte("wrong-secret-456\n"))
	credential.NewWatcherForTest(spec, cr).Check()
	_, err = c.Fetch(ctx, upstream.Request{ClientID: clientID, Credential: cr})
	if !errors.Is(err, upstream.ErrInvalidClient) {
		t.Fatalf("Fetch = %v, want invalid_client", err)
	}
	l := logs.String()
	if !strings.Contains(l, "rotated credential") || !strings.Contains(l, `"client":"orders"`) || !strings.Contains(l, path) {
		t.Fatalf("the rejection is not logged with the client and file: %s", l)
	}
	if strings.Contains(l+err.Error(), "wrong-secret-456") || strings.Contains(l, "good-secret-123") {
		t.Fatal("a secret is in the log or the error")
	}
	if _, err := c.Fetch(ctx, upstream.Request{ClientID: clientID, Credential: cr, Params: [][2]string{{"client_secret", "x"}}}); err == nil || !strings.Contains(err.Error(), "Params[0]") {
		t.Fatalf("a reserved parameter: Fetch = %v, want a Params[0] error", err)
	}
}
