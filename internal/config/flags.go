package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

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
	// EnvLogAccess overrides the file's log.access; -log-access overrides
	// it.
	EnvLogAccess = "TOKENBROKER_LOG_ACCESS"
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
//	-log-access WHICH  log.access ($TOKENBROKER_LOG_ACCESS)
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

// ParseSources is Parse that goes on past problems of single values in the
// file, so that they can be reported together with Validate's: it returns
// the configuration (holding every value that could be read) with its
// Sources, whose Err holds those problems, and whose Locate tells where the
// key of each of Validate's problems came from. Its error is that of a flag,
// or of a file that cannot be read or parsed at all.
func ParseSources(args []string, getenv func(string) string) (Config, *Sources, error) {
	return parseSources(args, getenv, os.Stderr)
}

// parse is Parse writing the usage to out.
func parse(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	cfg, src, err := parseSources(args, getenv, out)
	if err == nil {
		err = src.Err()
	}
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// parseSources is ParseSources writing the usage to out.
func parseSources(args []string, getenv func(string) string, out io.Writer) (Config, *Sources, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	def := Default()
	fs := flag.NewFlagSet("tokenbroker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	devLifetime := durationFlag(def.DevLifetime)
	fs.Var(&devLifetime, "dev-lifetime", "lifetime of the tokens the -dev token endpoint issues (a Go duration such as 5m or 90s)")
	var (
		path        = fs.String("config", "", "configuration `file` (YAML); overrides $"+EnvConfig)
		dev         = fs.Bool("dev", false, "development mode: run an embedded token endpoint (loopback addresses only)")
		devIssuer   = fs.String("dev-issuer", "", "serve only the development token endpoint on this loopback `address` (client demo-client, secret from $"+EnvDevSecret+"), for replicas to share")
		listen      = fs.String("listen", def.Listen, "gRPC listen `address` (host:port); overrides $"+EnvListen+" and the file")
		httpListen  = fs.String("http-listen", def.HTTPListen, "HTTP `address` of the drop-in token endpoint and /metrics (host:port, \"\" for none); overrides $"+EnvHTTPListen+" and the file")
		logLevel    = fs.String("log-level", def.Log.Level, "log `level`: debug, info, warn or error; overrides $"+EnvLogLevel+" and the file")
		logFormat   = fs.String("log-format", def.Log.Format, "log `format`: json or text; overrides $"+EnvLogFormat+" and the file")
		logAccess   = fs.String("log-access", def.Log.Access, "which calls get an access-log `line`: failures (successes at debug) or all; overrides $"+EnvLogAccess+" and the file")
		passthrough = fs.Bool("passthrough", def.Passthrough, "let callers present their own client credentials; overrides the file")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, out)
			return Config{}, nil, flag.ErrHelp
		}
		return Config{}, nil, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, nil, fmt.Errorf("flags: unexpected argument %q (tokenbroker takes only flags)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	file := getenv(EnvConfig)
	if set["config"] {
		file = *path
	}
	cfg, src := def, newSources("")
	if file != "" {
		var err error
		if cfg, src, err = loadFile(file); err != nil {
			return Config{}, nil, err
		}
	}

	for _, o := range []struct {
		env, key string
		dst      *string
	}{
		{EnvListen, "listen", &cfg.Listen},
		{EnvHTTPListen, "http_listen", &cfg.HTTPListen},
		{EnvLogLevel, "log.level", &cfg.Log.Level},
		{EnvLogFormat, "log.format", &cfg.Log.Format},
		{EnvLogAccess, "log.access", &cfg.Log.Access},
	} {
		if v := getenv(o.env); v != "" {
			*o.dst = v
			src.setBy(o.key, "env "+o.env)
		}
	}

	for _, o := range []struct {
		flag, key string
		dst, val  *string
	}{
		{"listen", "listen", &cfg.Listen, listen},
		{"http-listen", "http_listen", &cfg.HTTPListen, httpListen},
		{"log-level", "log.level", &cfg.Log.Level, logLevel},
		{"log-format", "log.format", &cfg.Log.Format, logFormat},
		{"log-access", "log.access", &cfg.Log.Access, logAccess},
	} {
		if set[o.flag] {
			*o.dst = *o.val
			src.setBy(o.key, "flag -"+o.flag)
		}
	}
	if set["passthrough"] {
		cfg.Passthrough = *passthrough
		src.setBy("passthrough", "flag -passthrough")
	}
	cfg.Dev = *dev
	cfg.DevLifetime = Duration(devLifetime)
	cfg.DevIssuer = *devIssuer
	cfg.DevSecret = secret.String(getenv(EnvDevSecret))
	return cfg, src, nil
}

// durationFlag is a flag.Value read by ParseDuration, so that a duration
// flag gives the hints a duration in the file gives ("missing unit; write
// e.g. "10s"").
type durationFlag Duration

// String implements flag.Value.
func (d *durationFlag) String() string { return Duration(*d).String() }

// Set implements flag.Value.
func (d *durationFlag) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}

// printUsage writes the help text to out.
func printUsage(fs *flag.FlagSet, out io.Writer) {
	fs.SetOutput(out)
	_, _ = fmt.Fprintf(out, "Usage: tokenbroker [flags]\n\nFlags:\n")
	fs.PrintDefaults()
	_, _ = fmt.Fprintf(out, `
Environment (flags override it; it overrides the file):
  %s	configuration file, when -config is not given
  %s	listen address (gRPC)
  %s	http_listen address (an empty value is ignored: -http-listen "" turns it off)
  %s	log level
  %s	log format
  %s	access log: failures or all
  %s	client secret of the -dev and -dev-issuer token endpoints' client

Precedence: defaults < file < environment < flags. Client secrets, sealing
keys and the cache HMAC key are read from the files or environment
variables the configuration names.
`, EnvConfig, EnvListen, EnvHTTPListen, EnvLogLevel, EnvLogFormat, EnvLogAccess, EnvDevSecret)
}
