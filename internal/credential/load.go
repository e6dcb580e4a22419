// Package credential loads the client credentials the broker holds from
// their files and environment variables (client secrets; private_key_jwt
// signing keys in PEM or JWK form; client certificates and their keys for
// mutual TLS; client assertion files) and keeps them current: a Watcher
// re-reads a credential's files when they change (fsnotify events on
// their directories, and stat polling for file systems that give none,
// such as a Kubernetes secret volume's symlink swap) and hands the new
// material to the upstream.Credential, whose next request uses it.
//
// Every file holding secret material is read with secret.ReadPrivateFile
// (the file-mode rule of secret files). No error or log line holds a
// secret, a key or an assertion: they name the client, the file and the
// problem.
package credential

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Size limits of the files read.
const (
	// MaxSecretSize is the largest client secret file.
	MaxSecretSize = 512
	// MaxKeyFileSize is the largest key or certificate file.
	MaxKeyFileSize = 64 << 10
)

// Spec says where a client's credential comes from. It is built from the
// configuration (config.Client).
type Spec struct {
	// Name is the client's configured name.
	Name string
	// Method is the client authentication method.
	Method upstream.AuthMethod
	// SecretFile or SecretEnv hold the client secret (client_secret_*).
	SecretFile string
	// SecretEnv is the environment variable holding the client secret.
	SecretEnv string
	// KeyFile holds the private_key_jwt signing keys (PEM blocks or a JWK
	// or JWK set; the last key is the newest and signs), or the private
	// key of CertFile for mutual TLS.
	KeyFile string
	// KeyID is the kid of the signing key; "" keeps the JWK's own kid, or
	// sends none.
	KeyID string
	// Algorithm is the signing algorithm (RS256, PS256, ES256); "" means
	// the JWK's alg, else RS256 for RSA keys and ES256 for P-256 keys.
	Algorithm string
	// AssertionFile holds a ready client assertion (private_key_jwt
	// without KeyFile), read again for every request.
	AssertionFile string
	// CertFile is the PEM client certificate chain for mutual TLS.
	CertFile string
	// Audience is the aud of signed assertions ("" = the token URL).
	Audience string
	// AssertionLifetime is the lifetime of signed assertions (0 = the
	// default, 60s).
	AssertionLifetime time.Duration
}

// Files returns the files the credential is read from.
func (s Spec) Files() []string {
	var out []string
	for _, f := range []string{s.SecretFile, s.KeyFile, s.CertFile, s.AssertionFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// binding is the credential's source as the cache key binds it: the
// method and where the material comes from, each part length-prefixed so
// no two sources share an encoding. It holds no material.
func (s Spec) binding() string {
	var b strings.Builder
	for _, p := range []string{s.Name, string(s.Method), s.SecretFile, s.SecretEnv, s.KeyFile, s.KeyID, s.Algorithm, s.CertFile, s.AssertionFile} {
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// New loads spec's material and returns the upstream.Credential holding
// it. getenv reads the environment (nil: none); logger receives the
// file-mode warnings (nil: slog.Default()). Errors name the file or
// variable and the problem.
func New(spec Spec, getenv func(string) string, logger *slog.Logger) (*upstream.Credential, error) {
	m, err := Load(spec, getenv, logger)
	if err != nil {
		return nil, err
	}
	c := &upstream.Credential{
		Name:              spec.Name,
		Method:            spec.Method,
		Binding:           spec.binding(),
		Files:             spec.Files(),
		AssertionFile:     spec.AssertionFile,
		Audience:          spec.Audience,
		AssertionLifetime: spec.AssertionLifetime,
	}
	c.Set(m)
	return c, nil
}

// Load reads spec's material as it is now. For an assertion file, it
// checks that the file can be read (each request reads it again).
func Load(spec Spec, getenv func(string) string, logger *slog.Logger) (upstream.Material, error) {
	switch spec.Method {
	case upstream.AuthBasic, upstream.AuthPost:
		switch {
		case spec.SecretFile != "":
			s, err := ReadSecretFile(spec.SecretFile, logger)
			return upstream.Material{Secret: s}, err
		case spec.SecretEnv != "":
			if getenv == nil {
				getenv = func(string) string { return "" }
			}
			v := getenv(spec.SecretEnv)
			if v == "" {
				return upstream.Material{}, fmt.Errorf("environment variable %q is not set or is empty", spec.SecretEnv)
			}
			return upstream.Material{Secret: secret.String(v)}, nil
		}
		return upstream.Material{}, errors.New("no client secret source")
	case upstream.AuthPrivateKeyJWT:
		if spec.AssertionFile != "" {
			data, err := secret.ReadPrivateFile(spec.AssertionFile, upstream.MaxAssertionFileSize, logger)
			clear(data)
			return upstream.Material{}, err
		}
		k, err := LoadSigningKey(spec.KeyFile, spec.KeyID, spec.Algorithm, logger)
		if err != nil {
			return upstream.Material{}, err
		}
		return upstream.Material{Signer: k}, nil
	case upstream.AuthTLSClient, upstream.AuthSelfSignedTLSClient:
		cert, thumb, err := LoadCertificate(spec.CertFile, spec.KeyFile, logger)
		if err != nil {
			return upstream.Material{}, err
		}
		return upstream.Material{Certificate: cert, CertThumbprint: thumb}, nil
	}
	return upstream.Material{}, fmt.Errorf("unsupported auth method %q", spec.Method)
}

// ReadSecretFile reads a client secret file: secret.ReadPrivateFile with
// MaxSecretSize; one trailing newline ("\n" or "\r\n") is dropped, and
// what remains must not be empty. Errors name the file, never the content.
func ReadSecretFile(path string, logger *slog.Logger) (secret.String, error) {
	data, err := secret.ReadPrivateFile(path, MaxSecretSize, logger)
	if err != nil {
		return "", err
	}
	s := string(data)
	clear(data)
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		s, _ = strings.CutSuffix(t, "\r")
	}
	if s == "" {
		return "", fmt.Errorf("%q is empty", secret.AbsPath(path))
	}
	return secret.String(s), nil
}

// LoadSigningKey reads the private_key_jwt keys of path and returns the
// newest: the last PEM block of a PEM file, the last key of a JWK set (a
// file holding one JWK holds one key). During a rotation the file holds
// the old key and then the new one; the endpoint must know the new public
// key before it is appended. kid, when set, is the signing key's kid; alg
// ("" for the default) its algorithm. Errors name the file and the rule,
// never the key.
func LoadSigningKey(path, kid, alg string, logger *slog.Logger) (*upstream.SigningKey, error) {
	data, err := secret.ReadPrivateFile(path, MaxKeyFileSize, logger)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	abs := secret.AbsPath(path)
	var key any
	var jwkKid, jwkAlg string
	if t := strings.TrimSpace(string(data)); strings.HasPrefix(t, "{") {
		jwk, err := lastJWK([]byte(t))
		if err != nil {
			return nil, fmt.Errorf("%q: %v", abs, err)
		}
		if jwk.IsPublic() {
			return nil, fmt.Errorf("%q: the newest JWK is a public key; the file must hold private keys", abs)
		}
		key, jwkKid, jwkAlg = jwk.Key, jwk.KeyID, jwk.Algorithm
	} else {
		key, err = lastPEMKey(data)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", abs, err)
		}
	}
	if kid == "" {
		kid = jwkKid
	}
	if alg == "" {
		alg = jwkAlg
	}
	a, err := algorithmFor(key, alg)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", abs, err)
	}
	pub := jose.JSONWebKey{Key: publicOf(key)}
	thumb, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%q: cannot compute the key's thumbprint", abs)
	}
	return &upstream.SigningKey{Key: key, KeyID: kid, Algorithm: a, Thumbprint: b64(thumb)}, nil
}

// lastJWK parses a JWK set or a single JWK and returns its last key.
func lastJWK(data []byte) (jose.JSONWebKey, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return jose.JSONWebKey{}, errors.New("not a valid JSON JWK or JWK set")
	}
	if _, ok := probe["keys"]; ok {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(data, &set); err != nil {
			return jose.JSONWebKey{}, errors.New("not a valid JWK set (RFC 7517 section 5)")
		}
		if len(set.Keys) == 0 {
			return jose.JSONWebKey{}, errors.New("the JWK set holds no key")
		}
		return set.Keys[len(set.Keys)-1], nil
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(data, &k); err != nil {
		return jose.JSONWebKey{}, errors.New("not a valid JWK (RFC 7517)")
	}
	return k, nil
}

// lastPEMKey returns the private key of the last PEM block of data.
func lastPEMKey(data []byte) (any, error) {
	var last *pem.Block
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			last = b
		}
	}
	if last == nil {
		return nil, errors.New("holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block) and no JWK")
	}
	defer clear(last.Bytes)
	switch last.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(last.Bytes)
		if err != nil {
			return nil, errors.New("its last PRIVATE KEY block is not a valid PKCS #8 key")
		}
		return k, nil
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(last.Bytes)
		if err != nil {
			return nil, errors.New("its last RSA PRIVATE KEY block is not a valid PKCS #1 key")
		}
		return k, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(last.Bytes)
		if err != nil {
			return nil, errors.New("its last EC PRIVATE KEY block is not a valid SEC 1 key")
		}
		return k, nil
	}
	return nil, fmt.Errorf("its last private key block has the unsupported type %q", last.Type)
}

// algorithmFor checks that key can sign with alg ("" for its default).
func algorithmFor(key any, alg string) (jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("the RSA key has %d bits; at least 2048 are required", k.N.BitLen())
		}
		switch alg {
		case "", string(jose.RS256):
			return jose.RS256, nil
		case string(jose.PS256):
			return jose.PS256, nil
		}
		return "", fmt.Errorf("an RSA key signs with RS256 or PS256, not %q", alg)
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("an EC key must be on curve P-256 (ES256)")
		}
		if alg != "" && alg != string(jose.ES256) {
			return "", fmt.Errorf("a P-256 key signs with ES256, not %q", alg)
		}
		return jose.ES256, nil
	}
	return "", fmt.Errorf("unsupported key type %T: use an RSA (RS256, PS256) or P-256 EC (ES256) key", key)
}

// publicOf returns the public half of a private key.
func publicOf(key any) any {
	if s, ok := key.(crypto.Signer); ok {
		return s.Public()
	}
	return nil
}

// LoadCertificate reads a PEM client certificate chain (certFile) and its
// private key (keyFile, read under the file-mode rule), checks that they
// match, and returns the pair with the leaf's RFC 8705 thumbprint. A
// certificate past its NotAfter is an error; one not yet valid is logged.
func LoadCertificate(certFile, keyFile string, logger *slog.Logger) (*tls.Certificate, string, error) {
	certPEM, err := readPublicFile(certFile)
	if err != nil {
		return nil, "", err
	}
	keyPEM, err := secret.ReadPrivateFile(keyFile, MaxKeyFileSize, logger)
	if err != nil {
		return nil, "", err
	}
	defer clear(keyPEM)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, "", fmt.Errorf("certificate %q does not match its key %q", secret.AbsPath(certFile), secret.AbsPath(keyFile))
		}
		return nil, "", fmt.Errorf("certificate %q and key %q: cannot be used as a pair (PEM certificate chain and its PEM private key expected)", secret.AbsPath(certFile), secret.AbsPath(keyFile))
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, "", fmt.Errorf("certificate %q: not a valid X.509 certificate", secret.AbsPath(certFile))
	}
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return nil, "", fmt.Errorf("certificate %q expired at %s", secret.AbsPath(certFile), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		if logger == nil {
			logger = slog.Default()
		}
		logger.Warn("client certificate is not valid yet", "file", secret.AbsPath(certFile), "not_before", leaf.NotBefore)
	}
	pair.Leaf = leaf
	return &pair, upstream.CertThumbprint(pair.Certificate[0]), nil
}

// readPublicFile reads a certificate file (no secret in it): a regular
// file of at most MaxKeyFileSize bytes.
func readPublicFile(path string) ([]byte, error) {
	f, _, err := secret.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxKeyFileSize+1))
	if err != nil {
		return nil, secret.FileProblem(path, err)
	}
	if len(data) > MaxKeyFileSize {
		return nil, fmt.Errorf("%q is larger than %d bytes", secret.AbsPath(path), MaxKeyFileSize)
	}
	return data, nil
}

// statFile is os.Stat, for the watcher.
var statFile = os.Stat

// b64 is unpadded base64url.
func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
