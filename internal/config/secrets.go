package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// LoadSecrets fills each client's Secret from its client_secret_file or
// client_secret_env, and shared.redis's Password from its password_file or
// password_env, reading the environment through getenv (nil means an
// empty environment). A file must be a regular file of at most
// MaxSecretSize bytes; one trailing newline ("\n" or "\r\n") is dropped, and
// what remains must not be empty. A variable must be set and not empty.
//
// It returns every problem, joined, each naming the key it concerns
// (clients[i].client_secret_file or clients[i].client_secret_env). No error
// contains a secret or a part of one. A client whose secret cannot be read
// keeps its previous Secret.
func (c *Config) LoadSecrets(getenv func(string) string) error {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var errs []error
	for i := range c.Clients {
		cl := &c.Clients[i]
		key := fmt.Sprintf("clients[%d]", i)
		switch {
		case cl.ClientSecretFile != "" && cl.ClientSecretEnv != "":
			errs = append(errs, fmt.Errorf("%s: exactly one of client_secret_file and client_secret_env must be set, got both", key))
		case cl.ClientSecretFile != "":
			s, err := readSecretFile(cl.ClientSecretFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.client_secret_file: %w", key, err))
				continue
			}
			cl.Secret = s
		case cl.ClientSecretEnv != "":
			v := getenv(cl.ClientSecretEnv)
			if v == "" {
				errs = append(errs, fmt.Errorf("%s.client_secret_env: environment variable %q is not set or is empty", key, cl.ClientSecretEnv))
				continue
			}
			cl.Secret = secret.String(v)
		default:
			errs = append(errs, fmt.Errorf("%s: exactly one of client_secret_file and client_secret_env must be set, got neither", key))
		}
	}
	if err := c.loadRedisPassword(getenv); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// readSecretFile reads a secret file. Its errors name the file and the
// problem, never the content.
func readSecretFile(path string) (secret.String, error) {
	// Stat first, so a FIFO or device cannot block or flood the read.
	fi, err := os.Stat(path)
	if err != nil {
		return "", fileProblem(path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%q is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fileProblem(path, err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxSecretSize+1))
	if err != nil {
		return "", fileProblem(path, err)
	}
	if len(data) > MaxSecretSize {
		return "", fmt.Errorf("%q is larger than %d bytes", path, MaxSecretSize)
	}
	s := string(data)
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		s, _ = strings.CutSuffix(t, "\r")
	}
	if s == "" {
		return "", fmt.Errorf("%q is empty", path)
	}
	return secret.String(s), nil
}

// fileProblem describes an error of the file system as "cannot read PATH:
// reason", without repeating the operation and path the error already holds.
func fileProblem(path string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot read %q: %w", path, err)
}
