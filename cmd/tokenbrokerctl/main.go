// Command tokenbrokerctl is the operator's command line for tokenbroker. It
// gets and watches tokens (TokenBrokerService) and invalidates, lists and
// counts the broker's cache entries (AdminService) over gRPC.
//
// Usage:
//
//	tokenbrokerctl [global flags] <command> [flags]
//
//	TOKEN=$(tokenbrokerctl -plaintext get -client demo -scope demo/read)
//	tokenbrokerctl -plaintext watch -client demo
//	tokenbrokerctl -plaintext list
//	tokenbrokerctl -plaintext invalidate -client demo
//	tokenbrokerctl -plaintext stats
//
// Client secrets and API keys are read from files or the environment, never
// from flag values (those show in ps). Exit codes: 0 success, 1 other error,
// 2 usage error, 3 unavailable, deadline exceeded or throttled (retry
// later), 4 unauthenticated or permission denied, 5 invalid request, not
// found or failed precondition. "tokenbrokerctl -h" shows the details.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/api/tokensource"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Exit codes, part of the command's contract (see usageText).
const (
	exitOK          = 0 // success
	exitError       = 1 // any other error
	exitUsage       = 2 // bad flags or arguments
	exitUnavailable = 3 // unavailable, deadline exceeded or throttled: retry later
	exitAuth        = 4 // unauthenticated or permission denied
	exitRequest     = 5 // invalid request, not found or failed precondition
)

// Environment variables read by tokenbrokerctl.
const (
	envAddr         = "TOKENBROKER_ADDR"
	envAPIKey       = "TOKENBROKER_API_KEY"
	envClientSecret = "TOKENBROKER_CLIENT_SECRET"
	envSATokenFile  = "TOKENBROKER_SA_TOKEN_FILE"
)

// defaultAddr is the broker's default listen address.
const defaultAddr = "127.0.0.1:7443"

// Output formats (-o).
const (
	formatToken = "token"
	formatTable = "table"
	formatJSON  = "json"
)

const progName = "tokenbrokerctl"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run executes one tokenbrokerctl invocation and returns its exit code.
// args excludes the program name; getenv reads the environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return runWith(ctx, args, stdout, stderr, getenv)
}

// runWith is run with extra dial options (tests add interceptors).
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, dialOpts ...grpc.DialOption) int {
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv, dialOpts: dialOpts}
	c.g.addr = defaultAddr
	if a := getenv(envAddr); a != "" {
		c.g.addr = a
	}
	c.g.timeout = 10 * time.Second

	fs := flag.NewFlagSet(progName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.g.register(fs)
	fs.Usage = func() { printUsage(fs.Output(), fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprintf(stderr, "%s: no command given\n\n", progName)
		printUsage(stderr, fs)
		return exitUsage
	}
	name, cargs := rest[0], rest[1:]
	if name == "help" {
		return c.help(fs, cargs)
	}
	cmd := findCommand(name)
	if cmd == nil {
		fmt.Fprintf(stderr, "%s: unknown command %q; run '%s -h' for the list\n", progName, name, progName)
		return exitUsage
	}
	return c.report(cmd.run(ctx, c, cargs))
}

// help implements "tokenbrokerctl help [command]": the usage text on
// stdout.
func (c *cli) help(fs *flag.FlagSet, args []string) int {
	switch len(args) {
	case 0:
		printUsage(c.stdout, fs)
		return exitOK
	case 1:
		cmd := findCommand(args[0])
		if cmd == nil {
			fmt.Fprintf(c.stderr, "%s: unknown command %q; run '%s -h' for the list\n", progName, args[0], progName)
			return exitUsage
		}
		c.stderr = c.stdout // the command's usage goes where help was asked
		return c.report(cmd.run(context.Background(), c, []string{"-h"}))
	}
	fmt.Fprintf(c.stderr, "%s: help takes at most one command\n", progName)
	return exitUsage
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *cli, args []string) error
}

// commands lists the subcommands in the order the usage text shows them.
var commands = []command{
	{"get", "print an access token (GetToken)", runGet},
	{"watch", "print every new token of a subscription until interrupted (WatchToken)", runWatch},
	{"invalidate", "drop cached tokens (AdminService.InvalidateTokens)", runInvalidate},
	{"list", "list the cache entries (AdminService.ListTokens)", runList},
	{"stats", "print the broker's counters and gauges (AdminService.GetStats)", runStats},
}

// findCommand returns the command called name, or nil.
func findCommand(name string) *command {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return nil
	}
	return &commands[i]
}

// printUsage writes the top-level help text to w.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s [global flags] <command> [flags]\n\n", progName)
	fmt.Fprintf(w, "%s talks to a tokenbroker server over gRPC.\n\nCommands:\n", progName)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-11s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, "  %-11s %s\n", "help", "show this text, or a command's (help get)")
	fmt.Fprintf(w, "\nGlobal flags (also accepted after the command):\n")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
	fmt.Fprint(w, usageTrailer)
}

// usageTrailer documents the environment and the exit codes.
const usageTrailer = `
Environment:
  ` + envAddr + `            default of -addr
  ` + envAPIKey + `         API key, when -api-key-file is not given
  ` + envSATokenFile + `   default of -sa-token-file
  ` + envClientSecret + `   client secret for -provider/-client-id, when
                              -client-secret-file is not given

Secrets (client secrets, API keys) are never taken from flag values, which
would show in ps; tokens and secrets never appear in error messages.

Exit codes:
  0  success
  1  other error
  2  usage error (bad flags or arguments)
  3  unavailable, deadline exceeded or throttled: retry later
  4  unauthenticated or permission denied
  5  invalid request, not found or failed precondition: the request
     cannot succeed as asked
Errors are printed to stderr as "tokenbrokerctl: <gRPC code>: <message>".
`

// globals are the connection and output flags every command accepts.
type globals struct {
	addr       string
	plaintext  bool
	cacert     string
	cert       string
	key        string
	serverName string
	apiKeyFile string
	saToken    string
	timeout    time.Duration
	output     string
}

// register defines the global flags on fs, bound to g. The current values
// are the defaults, so registering on a command's flag set keeps what the
// global flags before the command set.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "addr", g.addr, "broker `address`: host:port or unix:/path (env "+envAddr+")")
	fs.BoolVar(&g.plaintext, "plaintext", g.plaintext, "connect without TLS (default: TLS)")
	fs.StringVar(&g.cacert, "cacert", g.cacert, "PEM `file` of the CA certificates that sign the server's certificate (default: the system's)")
	fs.StringVar(&g.cert, "cert", g.cert, "PEM client certificate `file` for mTLS (with -key)")
	fs.StringVar(&g.key, "key", g.key, "PEM private key `file` of -cert")
	fs.StringVar(&g.serverName, "server-name", g.serverName, "`name` to verify the server's certificate against (default: the host of -addr)")
	fs.StringVar(&g.apiKeyFile, "api-key-file", g.apiKeyFile, "`file` holding the API key, sent as \"authorization: Bearer <key>\" (env "+envAPIKey+")")
	fs.StringVar(&g.saToken, "sa-token-file", g.saToken, "`file` holding a Kubernetes projected service-account token (such as "+tokensource.DefaultServiceAccountTokenFile+"), re-read when it rotates and sent as \"authorization: Bearer <token>\" instead of an API key (env "+envSATokenFile+")")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline of each call (watch streams have none); 0 means none")
	fs.StringVar(&g.output, "o", g.output, "output `format`: token (the access token alone; default of get), table (default of the others) or json")
}

// cli is one invocation's state.
type cli struct {
	g        globals
	stdout   io.Writer
	stderr   io.Writer
	getenv   func(string) string
	dialOpts []grpc.DialOption
	// secrets are scrubbed from every message report prints.
	secrets []secret.String
}

// usageError is a bad flag or argument: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef returns a usage error.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errUsageShown and errHelp end a command whose flag set has already told
// the user what went wrong (exit 2) or shown its help (exit 0).
var (
	errUsageShown = errors.New("usage error shown")
	errHelp       = errors.New("help shown")
)

// flagSet returns a command's flag set: define its own flags with define,
// after which the global flags are added too. Its usage text lists the
// command's flags and points at the global ones.
func (c *cli) flagSet(name, synopsis, doc string, define func(fs *flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet(progName+" "+name, flag.ContinueOnError)
	define(fs)
	var own strings.Builder
	fs.SetOutput(&own)
	fs.PrintDefaults()
	c.g.register(fs)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace(progName+" [global flags] "+name+" "+synopsis), doc)
		if own.Len() > 0 {
			fmt.Fprintf(w, "\nFlags:\n%s", own.String())
		}
		fmt.Fprintf(w, "\nGlobal flags (-addr, -plaintext, -cacert, -cert, -key, -server-name,\n-api-key-file, -timeout, -o) may come before or after the command;\nsee '%s -h'.\n", progName)
	}
	return fs
}

// parse parses a command's arguments; the command takes no positional
// arguments.
func (c *cli) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsageShown
	}
	if n := fs.NArg(); n > 0 {
		// The arguments are not echoed: a misplaced secret would show.
		return usagef("%s takes no arguments, got %d after the flags", strings.TrimPrefix(fs.Name(), progName+" "), n)
	}
	if c.g.timeout < 0 {
		return usagef("-timeout: must not be negative")
	}
	if c.g.addr == "" {
		return usagef("-addr: must not be empty")
	}
	return nil
}

// format returns the -o format, def when not given, after checking it is
// one of allowed.
func (c *cli) format(def string, allowed ...string) (string, error) {
	f := c.g.output
	if f == "" {
		f = def
	}
	if !slices.Contains(allowed, f) {
		return "", usagef("-o: must be one of %s for this command, got %q", strings.Join(allowed, ", "), f)
	}
	return f, nil
}

// withTimeout bounds one call by -timeout.
func (c *cli) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.g.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.g.timeout)
}

// scrub replaces every secret this invocation holds with secret.Redacted.
func (c *cli) scrub(s string) string {
	for _, sec := range c.secrets {
		if v := sec.Reveal(); v != "" {
			s = strings.ReplaceAll(s, v, secret.Redacted)
		}
	}
	return s
}

// report prints err to stderr and returns the exit code it calls for.
func (c *cli) report(err error) int {
	if err == nil {
		return exitOK
	}
	switch {
	case errors.Is(err, errHelp):
		return exitOK
	case errors.Is(err, errUsageShown):
		return exitUsage
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.stderr, "%s: %s\n", progName, c.scrub(ue.msg))
		return exitUsage
	}
	if st, ok := status.FromError(err); ok {
		fmt.Fprintf(c.stderr, "%s: %s: %s\n", progName, st.Code(), c.scrub(st.Message()))
		return exitCode(st.Code())
	}
	fmt.Fprintf(c.stderr, "%s: %s\n", progName, c.scrub(err.Error()))
	return exitError
}

// exitCode maps a gRPC status code to the exit code documented in the
// usage text.
func exitCode(code codes.Code) int {
	switch code {
	case codes.OK:
		return exitOK
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return exitUnavailable
	case codes.Unauthenticated, codes.PermissionDenied:
		return exitAuth
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		return exitRequest
	}
	return exitError
}
