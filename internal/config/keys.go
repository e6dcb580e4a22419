package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
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
// empty; a variable must be set and not empty. Every problem is returned,
// joined, each naming its key (for example "cache.hmac_key_env: ..."); no
// error contains key material. On error both results are nil.
func (c *Config) LoadKeys(getenv func(string) string) (sealingKeys []byte, hmacKey []byte, err error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var errs []error
	sealingKeys, err = readKeyText("sealing", "keys_file", c.Sealing.KeysFile, "keys_env", c.Sealing.KeysEnv, getenv)
	if err != nil {
		errs = append(errs, err)
	}
	hmacText, err := readKeyText("cache", "hmac_key_file", c.Cache.HMACKeyFile, "hmac_key_env", c.Cache.HMACKeyEnv, getenv)
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
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	if len(errs) > 0 {
		clear(sealingKeys)
		clear(hmacKey)
		return nil, nil, errors.Join(errs...)
	}
	return sealingKeys, hmacKey, nil
}

// readKeyText reads the key text named by the file or the environment
// variable of section; nil, nil when neither is set.
func readKeyText(section, fileKey, file, envKey, env string, getenv func(string) string) ([]byte, error) {
	switch {
	case file != "" && env != "":
		return nil, fmt.Errorf("%s: at most one of %s and %s may be set, got both", section, fileKey, envKey)
	case file != "":
		data, err := readKeyFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", section, fileKey, err)
		}
		return data, nil
	case env != "":
		v := getenv(env)
		if strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("%s.%s: environment variable %q is not set or is empty", section, envKey, env)
		}
		return []byte(v), nil
	}
	return nil, nil
}

// readKeyFile reads a key file. Its errors name the file and the problem,
// never the content.
func readKeyFile(path string) ([]byte, error) {
	// Stat first, so a FIFO or device cannot block or flood the read.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fileProblem(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%q is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fileProblem(path, err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxKeyFileSize+1))
	if err != nil {
		return nil, fileProblem(path, err)
	}
	if len(data) > MaxKeyFileSize {
		clear(data)
		return nil, fmt.Errorf("%q is larger than %d bytes", path, MaxKeyFileSize)
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil, fmt.Errorf("%q is empty", path)
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
