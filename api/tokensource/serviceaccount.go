package tokensource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultServiceAccountTokenFile is where a pod's projected
// service-account token for the broker is mounted by the README's volume
// snippet (audience "tokenbroker").
const DefaultServiceAccountTokenFile = "/var/run/secrets/tokens/tokenbroker"

// maxServiceAccountTokenSize bounds a token file.
const maxServiceAccountTokenSize = 16 << 10

// ServiceAccountToken is gRPC PerRPCCredentials that prove the caller's
// Kubernetes identity to the broker: every call carries the projected
// service-account token of a file as "authorization: Bearer <token>".
// The kubelet rotates the file (an atomic swap of the volume's "..data"
// symlink); the file is looked at (stat) on every call and read again
// when its identity, size or time changed, so a rotated token is sent
// from the next call on. A failed read keeps sending the previous token
// and returns the error only while there is none. The token is never
// logged.
type ServiceAccountToken struct {
	path     string
	insecure bool

	mu    sync.Mutex
	token string
	stamp fileStamp
}

// fileStamp tells a file changed.
type fileStamp struct {
	ino, dev uint64
	size     int64
	mod      time.Time
}

// NewServiceAccountToken returns credentials reading path ("":
// DefaultServiceAccountTokenFile). With insecure set they may travel on
// connections without transport security (a broker on loopback); by
// default gRPC refuses to send them there. It reads the file once, so a
// missing or empty file is an error now rather than on the first call.
func NewServiceAccountToken(path string, insecure bool) (*ServiceAccountToken, error) {
	if path == "" {
		path = DefaultServiceAccountTokenFile
	}
	t := &ServiceAccountToken{path: path, insecure: insecure}
	if _, err := t.current(); err != nil {
		return nil, err
	}
	return t, nil
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t *ServiceAccountToken) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok && !t.insecure {
		if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
			return nil, fmt.Errorf("tokensource: service-account token needs transport security: %w", err)
		}
	}
	tok, err := t.current()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t *ServiceAccountToken) RequireTransportSecurity() bool { return !t.insecure }

// current returns the token, reading the file again when it changed.
func (t *ServiceAccountToken) current() (string, error) {
	fi, err := os.Stat(t.path)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		if t.token != "" {
			return t.token, nil
		}
		return "", fmt.Errorf("tokensource: service-account token file: %w", err)
	}
	st := stampOf(fi)
	if t.token != "" && st == t.stamp {
		return t.token, nil
	}
	tok, err := readToken(t.path)
	if err != nil {
		if t.token != "" {
			return t.token, nil
		}
		return "", err
	}
	t.token, t.stamp = tok, st
	return tok, nil
}

// stampOf returns what tells fi's file changed.
func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{size: fi.Size(), mod: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino, s.dev = uint64(sys.Ino), uint64(sys.Dev) //nolint:unconvert // types differ by platform
	}
	return s
}

// readToken reads a token file: at most maxServiceAccountTokenSize bytes,
// trimmed, non-empty, one line of printable ASCII. Errors name the file,
// never its content.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("tokensource: service-account token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxServiceAccountTokenSize+1))
	if err != nil {
		return "", fmt.Errorf("tokensource: service-account token file %s: %w", path, err)
	}
	if len(b) > maxServiceAccountTokenSize {
		return "", fmt.Errorf("tokensource: service-account token file %s: larger than %d bytes", path, maxServiceAccountTokenSize)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("tokensource: service-account token file %s: empty", path)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return "", errors.New("tokensource: service-account token file " + path + ": not a single line of printable ASCII")
		}
	}
	return tok, nil
}
