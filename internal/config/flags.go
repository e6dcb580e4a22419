package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Environment variables Parse reads. An unset or empty variable is ignored.
const (
	// EnvConfig is the path of the configuration file; the -config flag
	// overrides it.
	EnvConfig = "TOKENBROKER_CONFIG"
	// EnvListen overrides the file's listen; the -listen flag overrides it.
	EnvListen = "TOKENBROKER_LISTEN"
	// EnvHTTPListen overrides the file's http_listen; -http-listen
	// overrides it.
	EnvHTTPListen = "TOKENBROKER_HTTP_LISTEN"
	// EnvLogLevel overrides the file's log.level; -log-level overrides it.
	EnvLogLevel = "TOKENBROKER_LOG_LEVEL"
	// EnvLogFormat overrides the file's log.format; -log-format overrides
	// it.
	EnvLogFormat = "TOKENBROKER_LOG_FORMAT"
	// EnvDevSecret holds the client secret of the -dev-issuer token
	// endpoint's client.
	EnvDevSecret = "TOKENBROKER_DEV_SECRET"
)

// Parse builds the configuration from the command line args (without the
// program name) and the environment that getenv reads (nil means an empty
// environment). The order of precedence is defaults < file < environment <
// flags:
//
//	-config PATH       configuration file (else $TOKENBROKER_CONFIG; else none)
//	-listen ADDR       listen ($TOKENBROKER_LISTEN)
//	-http-listen ADDR  http_listen ($TOKENBROKER_HTTP_LISTEN; "" turns it off)
//	-log-level LEVEL   log.level ($TOKENBROKER_LOG_LEVEL)
//	-log-format FORMAT log.format ($TOKENBROKER_LOG_FORMAT)
//	-passthrough       passthrough (-passthrough=false turns it off)
//	-dev               development mode (Config.Dev)
//	-dev-lifetime D    lifetime of -dev tokens (Config.DevLifetime)
//	-dev-issuer ADDR   serve only the development token endpoint (Config.DevIssuer)
//
// Without a file, the configuration is Default() plus the overrides. Parse
// neither validates nor loads secrets. With -h or -help it writes the usage
// to standard error and returns flag.ErrHelp. Other flag errors are
// returned, not printed.
func Parse(args []string, getenv func(string) string) (Config, error) {
	return parse(args, getenv, os.Stderr)
}

// parse is Parse writing the usage to out.
func parse(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	def := Default()
	fs := flag.NewFlagSet("tokenbroker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var (
		path        = fs.String("config", "", "configuration `file` (YAML); overrides $"+EnvConfig)
		dev         = fs.Bool("dev", false, "development mode: run an embedded token endpoint")
		devLifetime = fs.Duration("dev-lifetime", time.Duration(def.DevLifetime), "lifetime of the tokens the -dev token endpoint issues")
		devIssuer   = fs.String("dev-issuer", "", "serve only the development token endpoint on this loopback `address` (client demo-client, secret from $"+EnvDevSecret+"), for replicas to share")
		listen      = fs.String("listen", def.Listen, "gRPC listen `address` (host:port); overrides $"+EnvListen+" and the file")
		httpListen  = fs.String("http-listen", def.HTTPListen, "HTTP `address` of the drop-in token endpoint and /metrics (host:port, \"\" for none); overrides $"+EnvHTTPListen+" and the file")
		logLevel    = fs.String("log-level", def.Log.Level, "log `level`: debug, info, warn or error; overrides $"+EnvLogLevel+" and the file")
		logFormat   = fs.String("log-format", def.Log.Format, "log `format`: json or text; overrides $"+EnvLogFormat+" and the file")
		passthrough = fs.Bool("passthrough", def.Passthrough, "let callers present their own client credentials; overrides the file")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, out)
			return Config{}, flag.ErrHelp
		}
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("flags: unexpected argument %q (tokenbroker takes only flags)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	file := getenv(EnvConfig)
	if set["config"] {
		file = *path
	}
	cfg := def
	if file != "" {
		var err error
		if cfg, err = Load(file); err != nil {
			return Config{}, err
		}
	}

	for _, o := range []struct {
		env string
		dst *string
	}{
		{EnvListen, &cfg.Listen},
		{EnvHTTPListen, &cfg.HTTPListen},
		{EnvLogLevel, &cfg.Log.Level},
		{EnvLogFormat, &cfg.Log.Format},
	} {
		if v := getenv(o.env); v != "" {
			*o.dst = v
		}
	}

	if set["listen"] {
		cfg.Listen = *listen
	}
	if set["http-listen"] {
		cfg.HTTPListen = *httpListen
	}
	if set["log-level"] {
		cfg.Log.Level = *logLevel
	}
	if set["log-format"] {
		cfg.Log.Format = *logFormat
	}
	if set["passthrough"] {
		cfg.Passthrough = *passthrough
	}
	cfg.Dev = *dev
	cfg.DevLifetime = Duration(*devLifetime)
	cfg.DevIssuer = *devIssuer
	cfg.DevSecret = secret.String(getenv(EnvDevSecret))
	return cfg, nil
}

// printUsage writes the help text to out.
func printUsage(fs *flag.FlagSet, out io.Writer) {
	fs.SetOutput(out)
	_, _ = fmt.Fprintf(out, "Usage: tokenbroker [flags]\n\nFlags:\n")
	fs.PrintDefaults()
	_, _ = fmt.Fprintf(out, `
Environment (flags override it; it overrides the file):
  %s	configuration file, when -config is not given
  %s	listen address
  %s	log level
  %s	log format

Precedence: defaults < file < environment < flags. Client secrets, sealing
keys and the cache HMAC key are read from the files or environment
variables the configuration names.
`, EnvConfig, EnvListen, EnvLogLevel, EnvLogFormat)
}
