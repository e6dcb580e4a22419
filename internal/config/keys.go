package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// LoadKeys reads the key material the configuration names, through getenv
// for environment variables (nil means an empty environment):
//
//   - sealingKeys is the raw text of sealing.keys_file or sealing.keys_env
//     (lines "ID:BASE64", parsed by whoever seals), or nil when neither is
//     set;
//   - hmacKey is cache.hmac_key_file or cache.hmac_key_env decoded from
//     base64 (standard or URL-safe alphabet, padding optional, surrounding
//     white space ignored), at least MinHMACKeySize bytes, or nil when
//     neither is set.
//
// A file must be a regular file of at most MaxKeyFileSize bytes and not
// empty; a variable must be set and not empty. LoadKeys also looks at the
// TLS files (tls.cert_file, tls.key_file, tls.client_ca_file and those of
// shared.redis.tls), which others read later: each must be a regular file
// that can be opened. Key files and TLS private keys must pass
// secret.CheckFileMode: group or others may not write them, and one others
// can read is logged as a warning to logger (nil: slog.Default()).
//
// Every problem is returned, joined, each a *FieldError naming its key
// (for example "cache.hmac_key_env: ...") and the file, made absolute; no
// error contains key material. On error both results are nil.
func (c *Config) LoadKeys(getenv func(string) string, logger *slog.Logger) (sealingKeys []byte, hmacKey []byte, err error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var errs []error
	sealingKeys, err = readKeyText("sealing", "keys_file", c.Sealing.KeysFile, "keys_env", c.Sealing.KeysEnv, getenv, logger)
	if err != nil {
		errs = append(errs, err)
	}
	hmacText, err := readKeyText("cache", "hmac_key_file", c.Cache.HMACKeyFile, "hmac_key_env", c.Cache.HMACKeyEnv, getenv, logger)
	if err != nil {
		errs = append(errs, err)
	} else if hmacText != nil {
		key := "cache.hmac_key_file"
		if c.Cache.HMACKeyFile == "" {
			key = "cache.hmac_key_env"
		}
		hmacKey, err = decodeHMACKey(hmacText)
		clear(hmacText)
		if err != nil {
			errs = append(errs, &FieldError{Key: key, Err: err})
		}
	}
	errs = append(errs, c.checkTLSFiles(logger)...)
	if len(errs) > 0 {
		clear(sealingKeys)
		clear(hmacKey)
		return nil, nil, errors.Join(errs...)
	}
	return sealingKeys, hmacKey, nil
}

// checkTLSFiles returns the problems of the TLS files the configuration
// names: each must be a regular file that can be opened, and a private key
// must pass secret.CheckFileMode.
func (c *Config) checkTLSFiles(logger *slog.Logger) []error {
	rt := c.Shared.Redis.TLS
	files := []struct {
		key, path string
		private   bool
	}{
		{"tls.cert_file", c.TLS.CertFile, false},
		{"tls.key_file", c.TLS.KeyFile, true},
		{"tls.client_ca_file", c.TLS.ClientCAFile, false},
	}
	if c.Shared.Redis.Enabled() && rt.Enabled {
		files = append(files, []struct {
			key, path string
			private   bool
		}{
			{"shared.redis.tls.ca_file", rt.CAFile, false},
			{"shared.redis.tls.cert_file", rt.CertFile, false},
			{"shared.redis.tls.key_file", rt.KeyFile, true},
		}...)
	}
	var errs []error
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := checkReadable(f.path, f.private, logger); err != nil {
			errs = append(errs, &FieldError{Key: f.key, Err: err})
		}
	}
	return errs
}

// checkReadable checks that path is a regular file that can be opened
// and, when private, that the opened file's mode passes
// secret.CheckFileMode.
func checkReadable(path string, private bool, logger *slog.Logger) error {
	f, fi, err := secret.OpenRegular(path)
	if err != nil {
		return err
	}
	_ = f.Close()
	if private {
		return secret.CheckMode(path, fi.Mode(), logger)
	}
	return nil
}

// readKeyText reads the key text named by the file or the environment
// variable of section; nil, nil when neither is set.
func readKeyText(section, fileKey, file, envKey, env string, getenv func(string) string, logger *slog.Logger) ([]byte, error) {
	switch {
	case file != "" && env != "":
		return nil, fieldErr(section, "at most one of %s and %s may be set, got both", fileKey, envKey)
	case file != "":
		data, err := readKeyFile(file, logger)
		if err != nil {
			return nil, &FieldError{Key: section + "." + fileKey, Err: err}
		}
		return data, nil
	case env != "":
		v := getenv(env)
		if strings.TrimSpace(v) == "" {
			return nil, fieldErr(section+"."+envKey, "environment variable %q is not set or is empty", env)
		}
		return []byte(v), nil
	}
	return nil, nil
}

// readKeyFile reads a key file. Its errors name the file and the problem,
// never the content.
func readKeyFile(path string, logger *slog.Logger) ([]byte, error) {
	data, err := secret.ReadPrivateFile(path, MaxKeyFileSize, logger)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil, fmt.Errorf("%q is empty", secret.AbsPath(path))
	}
	return data, nil
}

// decodeHMACKey decodes base64 text to a key of at least MinHMACKeySize
// bytes. Its errors never quote the text: the decoder's own errors, which
// tell where a bad byte is, are not passed on either.
func decodeHMACKey(text []byte) ([]byte, error) {
	s := strings.TrimSpace(string(text))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		key, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(key) < MinHMACKeySize {
			n := len(key)
			clear(key)
			return nil, fmt.Errorf("key must decode to at least %d bytes, got %d", MinHMACKeySize, n)
		}
		return key, nil
	}
	return nil, errors.New("key must be base64 (standard or URL-safe alphabet, padding optional)")
}
