package config

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// LoadSecrets fills each client's Secret from its client_secret_file or
// client_secret_env, and shared.redis's Password from its password_file or
// password_env, reading the environment through getenv (nil means an
// empty environment). A file must be a regular file of at most
// MaxSecretSize bytes that group and others cannot write (see
// secret.CheckFileMode; one others can read is logged as a warning to logger,
// nil meaning slog.Default()); one trailing newline ("\n" or "\r\n") is
// dropped, and what remains must not be empty. A variable must be set and
// not empty.
//
// It returns every problem, joined, each a *FieldError naming the key it
// concerns (clients[i].client_secret_file or clients[i].client_secret_env)
// and the file, made absolute. No error contains a secret or a part of
// one. A client whose secret cannot be read keeps its previous Secret.
func (c *Config) LoadSecrets(getenv func(string) string, logger *slog.Logger) error {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var errs []error
	for i := range c.Clients {
		cl := &c.Clients[i]
		key := fmt.Sprintf("clients[%d]", i)
		switch {
		case cl.ClientSecretFile != "" && cl.ClientSecretEnv != "":
			errs = append(errs, fieldErr(key, "exactly one of client_secret_file and client_secret_env must be set, got both"))
		case cl.ClientSecretFile != "":
			s, err := readSecretFile(cl.ClientSecretFile, logger)
			if err != nil {
				errs = append(errs, &FieldError{Key: key + ".client_secret_file", Err: err})
				continue
			}
			cl.Secret = s
		case cl.ClientSecretEnv != "":
			v := getenv(cl.ClientSecretEnv)
			if v == "" {
				errs = append(errs, fieldErr(key+".client_secret_env", "environment variable %q is not set or is empty", cl.ClientSecretEnv))
				continue
			}
			cl.Secret = secret.String(v)
		default:
			errs = append(errs, fieldErr(key, "exactly one of client_secret_file and client_secret_env must be set, got neither"))
		}
	}
	if err := c.loadRedisPassword(getenv, logger); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// readSecretFile reads a secret file. Its errors name the file (made
// absolute) and the problem, never the content.
func readSecretFile(path string, logger *slog.Logger) (secret.String, error) {
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
