package access

import (
	"crypto/tls"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// fakeClock is a settable clock for the reloader.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// handshake runs a TLS handshake over an in-memory pipe between a server
// using serverCfg and a client trusting serverCA and presenting clientCert
// (nil: none). It returns the serial number of the server's certificate and
// the server's handshake error.
func handshake(t *testing.T, serverCfg *tls.Config, serverCA *testCA, clientCert *leaf) (*big.Int, error) {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	deadline := time.Now().Add(callTimeout)
	_ = c1.SetDeadline(deadline)
	_ = c2.SetDeadline(deadline)
	srv := tls.Server(c1, serverCfg)
	cli := tls.Client(c2, &tls.Config{RootCAs: serverCA.pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12})
	if clientCert != nil {
		cli = tls.Client(c2, &tls.Config{
			RootCAs: serverCA.pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &clientCert.tls, nil },
		})
	}
	srvErr := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			// Let the client finish reading: with TLS 1.3 the server's
			// verdict on the client certificate comes after the client's
			// handshake completes.
			_, err = srv.Write([]byte{1})
		}
		srvErr <- err
		_ = c1.Close()
	}()
	var serialNumber *big.Int
	if err := cli.Handshake(); err == nil {
		serialNumber = cli.ConnectionState().PeerCertificates[0].SerialNumber
		var b [1]byte
		_, _ = cli.Read(b[:])
	}
	_ = c2.Close()
	return serialNumber, <-srvErr
}

// tlsFiles writes a server certificate, its key and a client CA bundle.
type tlsFiles struct {
	dir                       string
	certFile, keyFile, caFile string
	mtime                     time.Time
}

func (f *tlsFiles) writeCert(t *testing.T, l leaf) {
	t.Helper()
	f.mtime = f.mtime.Add(time.Minute)
	f.certFile = writeFile(t, f.dir, "server.crt", l.certPEM, f.mtime)
	f.keyFile = writeFile(t, f.dir, "server.key", l.keyPEM, f.mtime)
}

func (f *tlsFiles) writeCA(t *testing.T, pem []byte) {
	t.Helper()
	f.mtime = f.mtime.Add(time.Minute)
	f.caFile = writeFile(t, f.dir, "clients.pem", pem, f.mtime)
}

func TestServerTLSConfigReload(t *testing.T) {
	t.Parallel()
	serverCA := newTestCA(t, "server CA")
	clientCA := newTestCA(t, "client CA")
	newClientCA := newTestCA(t, "new client CA")
	first := serverCA.issue(t, true, nil, []string{"localhost"})
	second := serverCA.issue(t, true, nil, []string{"localhost"})
	third := serverCA.issue(t, true, nil, []string{"localhost"})
	oldClient := clientCA.issue(t, false, []string{workerID}, nil)
	newClient := newClientCA.issue(t, false, []string{workerID}, nil)

	files := &tlsFiles{dir: t.TempDir(), mtime: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	files.writeCert(t, first)
	files.writeCA(t, clientCA.pem)
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	var logs testkit.LogBuffer
	r, err := newReloader(files.certFile, files.keyFile, files.caFile, tls.RequireAndVerifyClientCert,
		slog.New(slog.NewTextHandler(&logs, nil)), clock.Now)
	if err != nil {
		t.Fatalf("newReloader: %v", err)
	}
	cfg := r.serverConfig()

	expect := func(step string, client *leaf, wantSerial *big.Int, wantOK bool) {
		t.Helper()
		gotSerial, err := handshake(t, cfg, serverCA, client)
		if (err == nil) != wantOK {
			t.Fatalf("%s: server handshake error: got %v, want success %v", step, err, wantOK)
		}
		if gotSerial == nil || gotSerial.Cmp(wantSerial) != 0 {
			t.Fatalf("%s: server certificate serial: got %v, want %v", step, gotSerial, wantSerial)
		}
	}

	expect("initial", &oldClient, first.serial, true)
	expect("initial, client of another CA", &newClient, first.serial, false)

	files.writeCert(t, second)
	expect("changed files within a second", &oldClient, first.serial, true)
	clock.Advance(time.Second)
	expect("changed files after a second", &oldClient, second.serial, true)

	// A broken certificate file keeps the old material, logged once.
	files.mtime = files.mtime.Add(time.Minute)
	writeFile(t, files.dir, "server.crt", []byte("not a certificate"), files.mtime)
	clock.Advance(time.Second)
	expect("broken file", &oldClient, second.serial, true)
	clock.Advance(time.Second)
	expect("broken file, again", &oldClient, second.serial, true)
	if got := strings.Count(logs.String(), "TLS reload failed"); got != 1 {
		t.Errorf("reload failure log lines: got %d, want 1; logs:\n%s", got, logs.String())
	}

	files.writeCert(t, third)
	clock.Advance(time.Second)
	expect("repaired files", &oldClient, third.serial, true)

	// A new client CA takes effect on the next handshake after a second.
	files.writeCA(t, newClientCA.pem)
	clock.Advance(time.Second)
	expect("new client CA, new client", &newClient, third.serial, true)
	expect("new client CA, old client", &oldClient, third.serial, false)

	// A clock that went backwards does not stop reloading.
	files.writeCert(t, first)
	clock.Advance(-time.Hour)
	expect("clock went back", &newClient, first.serial, true)

	if got := strings.Count(logs.String(), "reloaded"); got != 4 {
		t.Errorf("reload log lines: got %d, want 4; logs:\n%s", got, logs.String())
	}
}

func TestServerTLSConfigMinVersion(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "server CA")
	srv := ca.issue(t, true, nil, []string{"localhost"})
	files := &tlsFiles{dir: t.TempDir(), mtime: time.Now()}
	files.writeCert(t, srv)
	cfg, stop, err := ServerTLSConfig(files.certFile, files.keyFile, "", tls.NoClientCert)
	if err != nil {
		t.Fatalf("ServerTLSConfig: %v", err)
	}
	defer stop()
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion: got %x, want %x", cfg.MinVersion, tls.VersionTLS12)
	}
	if got, err := handshake(t, cfg, ca, nil); err != nil || got.Cmp(srv.serial) != 0 {
		t.Fatalf("handshake: got (%v, %v), want (%v, nil)", got, err, srv.serial)
	}

	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	_ = c1.SetDeadline(time.Now().Add(callTimeout))
	_ = c2.SetDeadline(time.Now().Add(callTimeout))
	go func() {
		_ = tls.Server(c1, cfg).Handshake()
		_ = c1.Close()
	}()
	old := tls.Client(c2, &tls.Config{RootCAs: ca.pool(), ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}) //nolint:gosec // the point of the test
	if err := old.Handshake(); err == nil {
		t.Errorf("TLS 1.1 handshake: got success, want failure")
	}
}

func TestServerTLSConfigErrors(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "server CA")
	srv := ca.issue(t, true, nil, []string{"localhost"})
	files := &tlsFiles{dir: t.TempDir(), mtime: time.Now()}
	files.writeCert(t, srv)
	files.writeCA(t, ca.pem)
	noPEM := writeFile(t, files.dir, "empty.pem", []byte("nothing here"), time.Now())
	tests := []struct {
		name                      string
		certFile, keyFile, caFile string
		auth                      tls.ClientAuthType
		want                      string
	}{
		{"no cert file", "", files.keyFile, "", tls.NoClientCert, "both required"},
		{"no key file", files.certFile, "", "", tls.NoClientCert, "both required"},
		{"CA without client auth", files.certFile, files.keyFile, files.caFile, tls.NoClientCert, "needs client authentication"},
		{"verification without CA", files.certFile, files.keyFile, "", tls.RequireAndVerifyClientCert, "needs a client CA file"},
		{"unverified client certs", files.certFile, files.keyFile, files.caFile, tls.RequireAnyClientCert, "must be verified"},
		{"request client certs", files.certFile, files.keyFile, files.caFile, tls.RequestClientCert, "must be verified"},
		{"unknown mode", files.certFile, files.keyFile, files.caFile, tls.ClientAuthType(99), "unknown client authentication mode"},
		{"missing cert file", files.dir + "/missing.crt", files.keyFile, "", tls.NoClientCert, "tls.cert_file "},
		{"key of another cert", files.certFile, noPEM, "", tls.NoClientCert, "cannot load the certificate and its key: tls: failed to find any PEM data in key input"},
		{"CA file without certificates", files.certFile, files.keyFile, noPEM, tls.VerifyClientCertIfGiven, "holds no PEM certificate"},
		{"missing CA file", files.certFile, files.keyFile, files.dir + "/missing.pem", tls.VerifyClientCertIfGiven, "tls.client_ca_file: cannot read"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, stop, err := ServerTLSConfig(tc.certFile, tc.keyFile, tc.caFile, tc.auth)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got (%v, %v), want an error containing %q", cfg, err, tc.want)
			}
			if stop != nil {
				t.Errorf("stop func: got non-nil with an error, want nil")
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error %q contains key material", err)
			}
		})
	}
}
