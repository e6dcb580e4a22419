package app

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const rotID = "rotating-client"

// rotKind is one credential kind under rotation: setup writes the first
// credential and registers it with the issuer; rotate writes the second
// and registers it in place of the first (the old one stops working).
type rotKind struct {
	name    string
	tls     bool
	reloads bool // the watcher logs a reload (an assertion file is read per request)
	setup   func(t *testing.T, dir string, cl *config.Client, is *devissuer.Issuer, tokenURL string)
	rotate  func(t *testing.T, dir string, is *devissuer.Issuer, tokenURL string)
	secrets func() []string // what must never be logged
}

func writePrivate(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	return p
}

func genKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyPEM(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func certPair(t *testing.T) (certPEM, kPEM []byte, thumb string) {
	t.Helper()
	k := genKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: rotID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM(t, k), upstream.CertThumbprint(der)
}

func signedAssertion(t *testing.T, k crypto.Signer, aud string) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: rotID, Subject: rotID, Audience: jwt.Audience{aud}, ID: rand.Text(),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func rotKinds() []rotKind {
	var secrets []string
	var mu sync.Mutex
	keep := func(s ...string) {
		mu.Lock()
		secrets = append(secrets, s...)
		mu.Unlock()
	}
	all := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), secrets...) }
	kinds := []rotKind{
		{
			name: "client_secret_file", reloads: true,
			setup: func(t *testing.T, dir string, cl *config.Client, is *devissuer.Issuer, _ string) {
				keep("first-rotating-secret", "second-rotating-secret")
				cl.ClientSecretFile = writePrivate(t, dir, "secret", []byte("first-rotating-secret\n"))
				is.AddClient(devissuer.Client{ID: rotID, Secret: "first-rotating-secret"})
			},
			rotate: func(t *testing.T, dir string, is *devissuer.Issuer, _ string) {
				writePrivate(t, dir, "secret", []byte("second-rotating-secret\n"))
				is.AddClient(devissuer.Client{ID: rotID, Secret: "second-rotating-secret"})
			},
		},
		{
			name: "client_key_file", reloads: true,
			setup: func(t *testing.T, dir string, cl *config.Client, is *devissuer.Issuer, _ string) {
				k := genKey(t)
				p := keyPEM(t, k)
				keep(string(p[30:90]))
				cl.AuthMethod, cl.ClientKeyFile = config.AuthPrivateKeyJWT, writePrivate(t, dir, "key.pem", p)
				is.AddClient(devissuer.Client{ID: rotID, PublicKeys: []jose.JSONWebKey{{Key: k.Public()}}})
			},
			rotate: func(t *testing.T, dir string, is *devissuer.Issuer, _ string) {
				old, err := os.ReadFile(filepath.Join(dir, "key.pem"))
				if err != nil {
					t.Fatal(err)
				}
				k := genKey(t)
				p := keyPEM(t, k)
				keep(string(p[30:90]))
				// The newest key is the last: old, then new.
				writePrivate(t, dir, "key.pem", append(old, p...))
				is.AddClient(devissuer.Client{ID: rotID, PublicKeys: []jose.JSONWebKey{{Key: k.Public()}}})
			},
		},
		{
			name: "client_assertion_file",
			setup: func(t *testing.T, dir string, cl *config.Client, is *devissuer.Issuer, tokenURL string) {
				k := genKey(t)
				// A platform renews the file often; each request reads it.
				a := signedAssertion(t, k, tokenURL)
				keep(a)
				cl.AuthMethod, cl.ClientAssertionFile = config.AuthPrivateKeyJWT, writePrivate(t, dir, "assertion", []byte(a))
				is.AddClient(devissuer.Client{ID: rotID, PublicKeys: []jose.JSONWebKey{{Key: k.Public()}}})
				renewAssertions(t, dir, k, tokenURL, keep)
			},
			rotate: func(t *testing.T, dir string, is *devissuer.Issuer, tokenURL string) {
				k := genKey(t)
				is.AddClient(devissuer.Client{ID: rotID, PublicKeys: []jose.JSONWebKey{{Key: k.Public()}}})
				renewAssertions(t, dir, k, tokenURL, keep)
			},
		},
		{
			name: "client_cert_file", tls: true, reloads: true,
			setup: func(t *testing.T, dir string, cl *config.Client, is *devissuer.Issuer, _ string) {
				c, k, thumb := certPair(t)
				keep(string(k[30:90]))
				cl.AuthMethod = config.AuthSelfSignedTLSClient
				cl.ClientCertFile, cl.ClientKeyFile = writePrivate(t, dir, "c.pem", c), writePrivate(t, dir, "k.pem", k)
				is.AddClient(devissuer.Client{ID: rotID, CertThumbprints: []string{thumb}})
			},
			rotate: func(t *testing.T, dir string, is *devissuer.Issuer, _ string) {
				c, k, thumb := certPair(t)
				keep(string(k[30:90]))
				// Key first, then certificate: a reload between the two
				// fails (no match) and keeps the old pair.
				writePrivate(t, dir, "k.pem", k)
				writePrivate(t, dir, "c.pem", c)
				is.AddClient(devissuer.Client{ID: rotID, CertThumbprints: []string{thumb}})
			},
		},
	}
	for i := range kinds {
		kinds[i].secrets = all
	}
	return kinds
}

// renewAssertions writes a fresh assertion signed by k into the file
// (one per request is read; the issuer refuses a replayed jti, so the
// test writes a new one whenever the file was read: here, simply a new
// one for each of the next requests, by a goroutine until the test ends).
func renewAssertions(t *testing.T, dir string, k crypto.Signer, aud string, keep func(...string)) {
	t.Helper()
	a := signedAssertion(t, k, aud)
	keep(a)
	writePrivate(t, dir, "assertion", []byte(a))
	assertionSigner.Store(&signerFor{k: k, aud: aud, dir: dir})
}

// signerFor is what the renewing hook signs with.
type signerFor struct {
	k   crypto.Signer
	aud string
	dir string
}

var assertionSigner atomicSigner

type atomicSigner struct {
	mu sync.Mutex
	s  *signerFor
}

func (a *atomicSigner) Store(s *signerFor) { a.mu.Lock(); a.s = s; a.mu.Unlock() }
func (a *atomicSigner) Load() *signerFor   { a.mu.Lock(); defer a.mu.Unlock(); return a.s }

// TestCredentialRotationUnderTraffic: for each credential kind, a
// broker-held client serves GetToken and WatchToken traffic over gRPC
// while its credential rotates; the issuer stops accepting the old one.
// The token obtained before stays served (same access token) until the
// next fetch, which an invalidation forces: the watcher gets the new
// token, obtained with the new credential. No caller sees an error, and
// no secret, key or assertion is logged.
func TestCredentialRotationUnderTraffic(t *testing.T) {
	for _, kind := range rotKinds() {
		t.Run(kind.name, func(t *testing.T) {
			assertionSigner.Store(nil)
			is, err := devissuer.New(devissuer.Config{Lifetime: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			h := is.Handler()
			if kind.name == "client_assertion_file" {
				// The platform's renewal: after each request, a new
				// assertion (new jti) is in the file.
				inner := h
				h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					inner.ServeHTTP(w, r)
					if s := assertionSigner.Load(); s != nil {
						writePrivate(t, s.dir, "assertion", []byte(signedAssertion(t, s.k, s.aud)))
					}
				})
			}
			srv := httptest.NewUnstartedServer(h)
			if kind.tls {
				srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			tokenURL := srv.URL + devissuer.TokenPath
			dir := t.TempDir()
			cfg := stackConfig(tokenURL)
			cl := config.Client{Name: "rot", Provider: "test", ClientID: rotID}
			kind.setup(t, dir, &cl, is, tokenURL)
			cfg.Clients = []config.Client{cl}
			cfg.HTTPListen = ""
			var logs testkit.LogBuffer
			logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if err := cfg.LoadSecrets(nil, logger); err != nil {
				t.Fatal(err)
			}
			if kind.tls {
				restore := setTestRoots(srv)
				defer restore()
			}
			addr, _ := serveApp(t, cfg, Keys{}, logger)
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
			admin := tokenbrokerv1.NewAdminServiceClient(conn)
			sel := &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "rot"}}

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			stream, err := c.WatchToken(wctx, &tokenbrokerv1.WatchTokenRequest{Selector: sel})
			if err != nil {
				t.Fatal(err)
			}
			first, err := stream.Recv()
			if err != nil {
				t.Fatalf("WatchToken initial: %v", err)
			}
			before := first.GetToken().GetAccessToken()

			// GetToken traffic throughout.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var errsMu sync.Mutex
			var errs []error
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel}); err != nil {
							errsMu.Lock()
							errs = append(errs, err)
							errsMu.Unlock()
							return
						}
					}
				})
			}

			kind.rotate(t, dir, is, tokenURL)
			if kind.reloads {
				deadline := time.After(20 * time.Second)
				for !strings.Contains(logs.String(), "client credential reloaded") {
					select {
					case <-logs.Wrote():
					case <-deadline:
						t.Fatalf("the rotation was not noticed: %s", logs.String())
					}
				}
			}
			// Served until its refresh point: the same token.
			got, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel})
			if err != nil {
				t.Fatalf("GetToken after the rotation: %v", err)
			}
			if got.GetToken().GetAccessToken() != before {
				t.Fatal("the rotation replaced the cached token before its refresh point")
			}
			// The next fetch uses the new credential (the old one is
			// refused by now).
			if _, err := admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{
				Selector: &tokenbrokerv1.InvalidateTokensRequest_Client{Client: "rot"}}); err != nil {
				t.Fatal(err)
			}
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("WatchToken after the rotation: %v", err)
			}
			if ev.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED || ev.GetToken().GetAccessToken() == before {
				t.Fatalf("watch event %v (new token: %v), want an invalidation with a new token", ev.GetEvent(), ev.GetToken().GetAccessToken() != before)
			}
			if kind.tls && ev.GetToken().GetCertThumbprint() == "" {
				t.Fatal("a certificate-bound token does not report its certificate")
			}
			close(stop)
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("callers saw errors during the rotation: %v", errs)
			}
			wcancel()
			for _, s := range kind.secrets() {
				if strings.Contains(logs.String(), s) {
					t.Fatal("a secret, key or assertion is in the log")
				}
			}
		})
	}
}

// setTestRoots makes Go's default transport (which the broker's upstream
// clients use, and clone for client certificates) trust srv's
// certificate, until restore is called.
func setTestRoots(srv *httptest.Server) (restore func()) {
	old := http.DefaultTransport
	http.DefaultTransport = srv.Client().Transport
	return func() { http.DefaultTransport = old }
}
