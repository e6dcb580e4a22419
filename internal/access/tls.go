package access

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// reloadInterval is the least time between two looks at the files.
const reloadInterval = time.Second

// ServerTLSConfig returns the TLS configuration of a gRPC listener serving
// the certificate in certFile and keyFile (PEM), with TLS 1.2 at least.
//
// clientAuth is tls.NoClientCert (no clientCAFile then),
// tls.VerifyClientCertIfGiven or tls.RequireAndVerifyClientCert (both need
// clientCAFile, a PEM bundle of the CAs that sign client certificates).
// Modes that accept unverified client certificates are refused: identities
// come only from verified certificates.
//
// The files are read now, and looked at again at most once per second
// during handshakes: when the modification time or size of any of them
// changed they are reloaded, and the next handshake uses the new
// certificate and CAs. A reload that fails keeps the previous material and
// is logged once (with slog.Default) until the files change again.
//
// No goroutine is started; the returned stop func does nothing and is
// there so callers need not change if that ever changes.
func ServerTLSConfig(certFile, keyFile, clientCAFile string, clientAuth tls.ClientAuthType) (*tls.Config, func(), error) {
	r, err := newReloader(certFile, keyFile, clientCAFile, clientAuth, nil, time.Now)
	if err != nil {
		return nil, nil, err
	}
	return r.serverConfig(), func() {}, nil
}

// fileStamp is what a reload check compares.
type fileStamp struct {
	ok      bool
	modTime int64
	size    int64
}

// reloader holds the current TLS material and reloads it.
type reloader struct {
	certFile, keyFile, caFile string
	clientAuth                tls.ClientAuthType
	logger                    *slog.Logger // nil: slog.Default() at log time
	now                       func() time.Time

	mu      sync.Mutex
	checked time.Time    // when the files were last looked at
	stamps  [3]fileStamp // of the last load attempt
	current *tls.Config
}

func newReloader(certFile, keyFile, caFile string, clientAuth tls.ClientAuthType, logger *slog.Logger, now func() time.Time) (*reloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("tls: the certificate file and the key file are both required")
	}
	switch clientAuth {
	case tls.NoClientCert:
		if caFile != "" {
			return nil, errors.New("tls: a client CA file needs client authentication (verify if given, or require and verify)")
		}
	case tls.VerifyClientCertIfGiven, tls.RequireAndVerifyClientCert:
		if caFile == "" {
			return nil, errors.New("tls: client certificate verification needs a client CA file")
		}
	case tls.RequestClientCert, tls.RequireAnyClientCert:
		return nil, errors.New("tls: client certificates must be verified against a client CA (verify if given, or require and verify)")
	default:
		return nil, fmt.Errorf("tls: unknown client authentication mode %d", int(clientAuth))
	}
	r := &reloader{certFile: certFile, keyFile: keyFile, caFile: caFile, clientAuth: clientAuth, logger: logger, now: now}
	r.stamps = r.stat()
	cfg, err := r.load()
	if err != nil {
		return nil, err
	}
	r.current = cfg
	r.checked = now()
	return r, nil
}

// serverConfig returns the listener's config; each handshake gets the
// current material from GetConfigForClient.
func (r *reloader) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2"},
		GetConfigForClient: r.configForClient,
	}
}

// configForClient returns the current config, reloading the files first
// when they changed and the last look is at least reloadInterval old.
func (r *reloader) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) < reloadInterval && !now.Before(r.checked) {
		return r.current, nil
	}
	r.checked = now
	stamps := r.stat()
	if stamps == r.stamps {
		return r.current, nil
	}
	r.stamps = stamps
	// The key file's mode rule (secret.CheckFileMode) holds for a
	// new key too.
	if err := secret.CheckFile(r.keyFile, r.log()); err != nil {
		r.log().Warn("TLS reload refused; keeping the previous certificate and client CAs", "error", err)
		return r.current, nil
	}
	cfg, err := r.load()
	if err != nil {
		r.log().Warn("TLS reload failed; keeping the previous certificate and client CAs", "error", err)
		return r.current, nil
	}
	r.current = cfg
	r.log().Info("TLS certificate and client CAs reloaded", "cert_file", r.certFile, "client_ca_file", r.caFile)
	return r.current, nil
}

func (r *reloader) log() *slog.Logger {
	if r.logger != nil {
		return r.logger
	}
	return slog.Default()
}

// stat looks at the certificate, key and CA files.
func (r *reloader) stat() [3]fileStamp {
	var out [3]fileStamp
	for i, name := range [3]string{r.certFile, r.keyFile, r.caFile} {
		if name == "" {
			continue
		}
		fi, err := os.Stat(name)
		if err != nil {
			continue
		}
		out[i] = fileStamp{ok: true, modTime: fi.ModTime().UnixNano(), size: fi.Size()}
	}
	return out
}

// load reads the files into a per-connection config.
func (r *reloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file %s and tls.key_file %s: cannot load the certificate and its key: %w", secret.AbsPath(r.certFile), secret.AbsPath(r.keyFile), err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{cert},
		ClientAuth:   r.clientAuth,
	}
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", secret.FileProblem(r.caFile, err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca_file %s: holds no PEM certificate", secret.AbsPath(r.caFile))
		}
		cfg.ClientCAs = pool
	}
	return cfg, nil
}
