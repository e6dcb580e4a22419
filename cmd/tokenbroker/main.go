// Command tokenbroker is the token broker's server: it hands out cached
// OAuth 2.0 client-credentials access tokens over gRPC.
//
// Usage:
//
//	tokenbroker -config /etc/tokenbroker/config.yaml
//	tokenbroker -dev      # embedded token endpoint, no configuration needed
//	tokenbroker -dev-issuer 127.0.0.1:7080   # only a token endpoint, for replicas to share
//	tokenbroker -check -config FILE          # validate the configuration and its files, then exit
//	tokenbroker -check=online -config FILE   # and ask for one token per broker-held client
//	tokenbroker -version                     # print the version and commit, then exit
//
// It runs until SIGINT or SIGTERM, then shuts down gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/app"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "tokenbroker:", err)
		os.Exit(1)
	}
}

// version and commit are set at link time by make image and the
// Dockerfile (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "devel"
	commit  = "unknown"
)

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if versionFlag(args) {
		fmt.Fprintf(stdout, "tokenbroker %s (commit %s, %s)\n", version, commit, runtime.Version())
		return nil
	}
	check, args, err := checkFlag(args)
	if err != nil {
		return err
	}
	cfg, src, err := config.ParseSources(args, getenv)
	if err != nil {
		return err
	}
	if cfg.DevIssuer != "" {
		if err := src.Err(); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
		logger, err := newLogger(cfg.Log, stderr)
		if err != nil {
			return err
		}
		return app.ServeDevIssuer(ctx, cfg.DevIssuer, cfg.DevSecret, time.Duration(cfg.DevLifetime), logger)
	}
	// Every problem at once: the file's values that could not be read, the
	// rules the others break, and the secret and key files' problems, each
	// with where its key came from. The files are read even when a rule is
	// broken, so a fix never reveals a second round of problems.
	validErr := errors.Join(src.Err(), src.Locate(cfg.Validate()))
	logger, logErr := newLogger(cfg.Log, stderr)
	if logErr != nil {
		// Validate has reported the log settings; the files' warnings
		// still need a logger.
		logger = slog.New(slog.NewJSONHandler(stderr, nil))
		if validErr == nil {
			validErr = logErr
		}
	}
	secretsErr := cfg.LoadSecrets(getenv, logger)
	sealing, hmacKey, keysErr := cfg.LoadKeys(getenv, logger)
	if err := distinct(validErr, src.Locate(errors.Join(secretsErr, keysErr))); err != nil {
		clear(sealing)
		clear(hmacKey)
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	switch check {
	case checkOffline:
		clear(sealing)
		clear(hmacKey)
		fmt.Fprintf(stdout, "configuration OK: %d providers, %d clients; their secret, key, certificate and assertion files are readable\n", len(cfg.Providers), len(cfg.Clients))
		return nil
	case checkOnline:
		clear(sealing)
		clear(hmacKey)
		return app.CheckOnline(ctx, cfg, logger, stdout)
	}
	return app.Run(ctx, cfg, app.Keys{Sealing: sealing, HMAC: hmacKey}, logger, stdout)
}

// distinct joins the problems of errs, each once: Validate and the file
// loaders both report, in the same words, a secret or key set both ways or
// not at all. A problem is a leaf of errors.Join trees (an error whose
// text is its parts' texts, one a line); other errors are kept whole.
func distinct(errs ...error) error {
	seen := map[string]bool{}
	var out []error
	var add func(error)
	add = func(err error) {
		if err == nil {
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			parts := j.Unwrap()
			texts := make([]string, 0, len(parts))
			for _, p := range parts {
				texts = append(texts, p.Error())
			}
			if strings.Join(texts, "\n") == err.Error() {
				for _, p := range parts {
					add(p)
				}
				return
			}
		}
		if !seen[err.Error()] {
			seen[err.Error()] = true
			out = append(out, err)
		}
	}
	for _, err := range errs {
		add(err)
	}
	return errors.Join(out...)
}

// newLogger builds the process logger from the log settings.
func newLogger(c config.Log, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// The modes of -check.
const (
	checkNone    = ""
	checkOffline = "offline"
	checkOnline  = "online"
)

// checkFlag takes -check (or -check=offline, -check=true) and
// -check=online out of args: the configuration is then validated, its
// files read, and, online, one token requested per broker-held client;
// no port is bound. Arguments after "--" are left alone.
func checkFlag(args []string) (mode string, rest []string, err error) {
	for i, a := range args {
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "check" {
			rest = append(rest, a)
			continue
		}
		switch {
		case !hasValue, value == "offline", value == "true":
			mode = checkOffline
		case value == "online":
			mode = checkOnline
		case value == "false":
			mode = checkNone
		default:
			return "", nil, fmt.Errorf("invalid value %q for flag -check: must be offline (the default) or online", value)
		}
	}
	return mode, rest, nil
}

// versionFlag reports whether args ask for the version (-version,
// --version, -version=true) before any "--".
func versionFlag(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		switch strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-") {
		case "version", "version=true":
			if strings.HasPrefix(a, "-") {
				return true
			}
		}
	}
	return false
}
