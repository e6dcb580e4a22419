package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/api/tokensource"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// dial opens a client connection to -addr with the transport and the API
// key the global flags select. grpc.NewClient connects lazily: a broker
// that is down shows as Unavailable on the first call.
func (c *cli) dial() (*grpc.ClientConn, error) {
	tc, err := c.transport()
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(tc), grpc.WithUserAgent(progName)}
	saFile := c.g.saToken
	if saFile == "" {
		saFile = c.getenv(envSATokenFile)
	}
	key, err := c.apiKey()
	if err != nil {
		return nil, err
	}
	if saFile != "" {
		if key != "" {
			return nil, usagef("-sa-token-file: cannot be combined with an API key (-api-key-file or %s)", envAPIKey)
		}
		// -plaintext is the user's explicit choice of a connection
		// without transport security (a broker on loopback).
		sa, err := tokensource.NewServiceAccountToken(saFile, c.g.plaintext)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(sa))
	} else if key != "" {
		c.secrets = append(c.secrets, key)
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{key: key}))
	}
	opts = append(opts, c.dialOpts...)
	conn, err := grpc.NewClient(c.g.addr, opts...)
	if err != nil {
		return nil, usagef("-addr: %v", err)
	}
	return conn, nil
}

// transport returns plaintext or TLS (optionally mTLS) credentials.
func (c *cli) transport() (credentials.TransportCredentials, error) {
	g := c.g
	if g.plaintext {
		if g.cacert != "" || g.cert != "" || g.key != "" || g.serverName != "" {
			return nil, usagef("-plaintext: cannot be combined with -cacert, -cert, -key or -server-name")
		}
		return insecure.NewCredentials(), nil
	}
	if (g.cert == "") != (g.key == "") {
		return nil, usagef("-cert and -key: must be given together")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: g.serverName}
	if g.cacert != "" {
		pem, err := os.ReadFile(g.cacert)
		if err != nil {
			return nil, fmt.Errorf("-cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-cacert %s: no PEM certificate found", g.cacert)
		}
		cfg.RootCAs = pool
	}
	if g.cert != "" {
		pair, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, fmt.Errorf("-cert/-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}

// apiKey returns the API key from -api-key-file, else from the
// environment; "" when there is none.
func (c *cli) apiKey() (secret.String, error) {
	if c.g.apiKeyFile == "" {
		key := secret.String(strings.TrimSpace(c.getenv(envAPIKey)))
		if err := checkAPIKey(key); err != nil {
			return "", fmt.Errorf("%s: %w", envAPIKey, err)
		}
		return key, nil
	}
	key, err := readSecretFile(c.g.apiKeyFile)
	if err != nil {
		return "", fmt.Errorf("-api-key-file: %w", err)
	}
	if err := checkAPIKey(key); err != nil {
		return "", fmt.Errorf("-api-key-file %s: %w", c.g.apiKeyFile, err)
	}
	return key, nil
}

// checkAPIKey checks that key can travel in a metadata value: printable
// ASCII without spaces. The error never contains the key.
func checkAPIKey(key secret.String) error {
	for _, b := range []byte(key.Reveal()) {
		if b <= ' ' || b > '~' {
			return fmt.Errorf("the API key must be printable ASCII without spaces")
		}
	}
	return nil
}

// maxAPIKeyFileSize bounds an -api-key-file.
const maxAPIKeyFileSize = 64 << 10

// readSecretFile reads a secret from a file, without the trailing line
// break, through secret.ReadPrivateFile (the broker's own rule): a file
// that is not regular (a FIFO is refused without blocking), is larger than
// maxAPIKeyFileSize, is empty, or that group or others can write is an
// error; one that others can read is read with a warning on stderr. Errors
// name the file, never its content.
func readSecretFile(path string) (secret.String, error) {
	b, err := secret.ReadPrivateFile(path, maxAPIKeyFileSize, nil)
	if err != nil {
		return "", err
	}
	v := strings.TrimRight(string(b), "\r\n")
	clear(b)
	if v == "" {
		return "", fmt.Errorf("%q is empty", secret.AbsPath(path))
	}
	return secret.String(v), nil
}

// bearer sends the API key as "authorization: Bearer <key>" on every call.
type bearer struct{ key secret.String }

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key.Reveal()}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials. The
// key may travel over -plaintext: the broker allows plaintext only on
// loopback unless its operator chose otherwise.
func (bearer) RequireTransportSecurity() bool { return false }
