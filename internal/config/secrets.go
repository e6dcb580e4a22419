package config

import (
	"errors"
	"log/slog"

	"github.com/tokenbroker/tokenbroker/internal/credential"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// LoadSecrets fills each client's Credential (see clientauth.go: its
// secret, signing key, assertion file or certificate, by its auth
// method) and, for the secret methods, its Secret from its
// client_secret_file or client_secret_env, and shared.redis's Password from its password_file or
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
		if err := c.loadClientCredential(i, getenv, logger); err != nil {
			errs = append(errs, err)
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
	return credential.ReadSecretFile(path, logger)
}
