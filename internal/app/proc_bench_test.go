package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// The separate-process comparisons measure the way an outside tester
// does: the real tokenbroker binary (built as make build builds it,
// started with a configuration file that keeps every default: the log
// and its access lines as log.level and log.access default them, on its
// stderr, which goes to a file; metrics, recovery, sealing; and caller
// authentication by API key with a policy) against
// the bare baseline program internal/benchserver, each a process of its
// own, both called from this process over loopback. The baseline answers
// with the broker's own response captured from its first call: the
// serialized GetTokenResponse (which bare grpc-go marshals again on
// every call) or the drop-in endpoint's body and headers.
//
// The rounds are the in-process harness's (comparison, runRound) with
// procRounds interleaved rounds of procRound per side after a warm-up of
// procRound on each. CPU per call is each server process's own CPU time
// (procCPU: utime + stime of /proc/PID/stat) over a round divided by the
// calls it completed: the callers' CPU is not in it.
//
// BenchmarkProcWatchFanoutVsBare (proc_fanout_bench_test.go) compares
// WatchToken fan-out with the same binaries and processes.

// The separate-process comparisons' rounds.
const (
	procRounds = 7
	procRound  = 2 * time.Second
)

// clockTicks is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 per second for user space on every
// architecture (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// procCPU returns the cpuClock of process pid: its user and system time,
// all threads together, from fields 14 and 15 of /proc/PID/stat.
func procCPU(pid int) cpuClock {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	return func() (time.Duration, error) {
		raw, err := os.ReadFile(path)
		if err != nil {
			return 0, err
		}
		// Field 2, the command name in parentheses, may hold spaces and
		// parentheses: the fields after it start after the last ')'.
		i := bytes.LastIndexByte(raw, ')')
		if i < 0 {
			return 0, fmt.Errorf("%s: no ')' after the command name", path)
		}
		fields := strings.Fields(string(raw[i+1:])) // fields[0] is field 3
		if len(fields) < 13 {
			return 0, fmt.Errorf("%s: %d fields, want at least 15", path, len(fields)+2)
		}
		var ticks int64
		for _, f := range fields[11:13] { // fields 14 (utime) and 15 (stime)
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: utime or stime: %w", path, err)
			}
			ticks += n
		}
		return time.Duration(ticks) * time.Second / clockTicks, nil
	}
}

// procAnonRSS returns the memory clock of process pid: its resident
// anonymous memory (RssAnon of /proc/PID/status, in bytes): the pages of
// its heap, stacks and other private mappings that are in RAM, without
// the pages of its executable and other files (RssFile), which the first
// run of a code path faults in. It is the same measure for any process,
// whatever its language or runtime. Memory the Go runtime has freed but
// not yet returned to the kernel is still counted.
func procAnonRSS(pid int) func() (int64, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	return func() (int64, error) {
		raw, err := os.ReadFile(path)
		if err != nil {
			return 0, err
		}
		for line := range strings.Lines(string(raw)) {
			rest, ok := strings.CutPrefix(line, "RssAnon:")
			if !ok {
				continue
			}
			kb, ok := strings.CutSuffix(strings.TrimSpace(rest), " kB")
			if !ok {
				return 0, fmt.Errorf("%s: RssAnon %q is not in kB", path, strings.TrimSpace(rest))
			}
			n, err := strconv.ParseInt(kb, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: RssAnon: %w", path, err)
			}
			return n * 1024, nil
		}
		return 0, fmt.Errorf("%s: no RssAnon line (Linux 4.5 or later has it)", path)
	}
}

// procBins builds the tokenbroker and benchserver binaries into a
// temporary directory as make build does (CGO_ENABLED=0, -trimpath, so
// their packages are already compiled) and returns their paths.
func procBins(b *testing.B) (broker, bare string) {
	b.Helper()
	dir := b.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", dir+string(filepath.Separator),
		"github.com/tokenbroker/tokenbroker/cmd/tokenbroker",
		"github.com/tokenbroker/tokenbroker/internal/benchserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "tokenbroker"), filepath.Join(dir, "benchserver")
}

// proc is a child process whose standard output and error go to a file.
type proc struct {
	name   string
	pid    int
	output string         // the file holding its stdout and stderr
	stdin  io.WriteCloser // the pipe to its standard input
	exited chan struct{}  // closed when it has exited and been waited for
}

// startProc starts bin with args until the benchmark ends, its stdout
// and stderr appended to a file in the benchmark's temporary directory
// (real write syscalls, as in a deployment) and its stdin a pipe this
// process holds. At the end it is sent SIGTERM (and its stdin closed) and
// waited for; a process still running harnessWait later is killed. An
// exit status other than 0 is an error.
func startProc(b *testing.B, bin string, args ...string) *proc {
	b.Helper()
	p := &proc{name: filepath.Base(bin), output: filepath.Join(b.TempDir(), filepath.Base(bin)+".out"), exited: make(chan struct{})}
	out, err := os.Create(p.output)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", p.name, err)
	}
	p.pid = cmd.Process.Pid
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(p.exited)
	}()
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(harnessWait)
		defer t.Stop()
		select {
		case <-p.exited:
		case <-t.C:
			_ = cmd.Process.Kill()
			<-p.exited
			b.Errorf("%s still running %v after SIGTERM; killed (output in %s)", p.name, harnessWait, p.output)
			return
		}
		if waitErr != nil {
			b.Errorf("%s after SIGTERM: got %v, want a clean exit; its output:\n%s", p.name, waitErr, p.tail())
		}
	})
	return p
}

// tail returns the last few KB of p's output.
func (p *proc) tail() string {
	raw, _ := os.ReadFile(p.output)
	if len(raw) > 4096 {
		raw = raw[len(raw)-4096:]
	}
	return string(raw)
}

// await returns what match finds in the first line of p's output it
// matches, looking until it appears, p exits or harnessWait passes.
func (p *proc) await(b *testing.B, what string, match func(line string) (string, bool)) string {
	b.Helper()
	deadline := time.Now().Add(harnessWait)
	for {
		raw, err := os.ReadFile(p.output)
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.Lines(string(raw)) {
			if v, ok := match(strings.TrimSuffix(line, "\n")); ok {
				return v
			}
		}
		select {
		case <-p.exited:
			b.Fatalf("%s exited before it printed %s; its output:\n%s", p.name, what, p.tail())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not print %s within %v; its output:\n%s", p.name, what, harnessWait, p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logAddr matches the broker's JSON log line whose message starts with
// msg and returns its addr.
func logAddr(msg string) func(string) (string, bool) {
	return func(line string) (string, bool) {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) != nil || !strings.HasPrefix(rec.Msg, msg) || rec.Addr == "" {
			return "", false
		}
		return rec.Addr, true
	}
}

// procBroker is the tokenbroker binary running with procConfig.
type procBroker struct {
	*proc
	grpcAddr, httpAddr string
	adminAddr          string // "unix:/path" with procOptions.watchers, else ""
	apiKey             string // the caller's API key
}

// procOptions are what a separate-process comparison adds to procConfig's
// defaults.
type procOptions struct {
	// dropIn turns pass-through on for the drop-in endpoint (see
	// procConfig).
	dropIn bool
	// watchers, when above 0, lets the caller hold twice that many
	// WatchToken streams and open them all at once
	// (server.max_watches_per_caller, watch_opens_per_second and
	// watch_open_burst; the defaults allow 1,000 streams, opened at 50 a
	// second), and serves AdminService to that caller on a unix socket
	// (admin.listen, admin.identities), for the fan-out's trigger.
	watchers int
}

// startProcBroker writes procConfig (with the broker-held client's secret
// file and a fresh API key) into a temporary directory, starts the broker
// binary with it and waits for its listening lines.
func startProcBroker(b *testing.B, bin, tokenURL string, opt procOptions) *procBroker {
	b.Helper()
	dir := b.TempDir()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		b.Fatal(err)
	}
	apiKey := hex.EncodeToString(key)
	digest := sha256.Sum256([]byte(apiKey))
	if err := os.WriteFile(filepath.Join(dir, "held-secret"), []byte(heldSecret), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := procConfig(tokenURL, hex.EncodeToString(digest[:]), opt.dropIn)
	if opt.watchers > 0 {
		cfg += fmt.Sprintf(`server:
  max_watches_per_caller: %d
  watch_opens_per_second: 1000000
  watch_open_burst: %d
admin:
  listen: %q
  identities: [apikey:bench]
`, 2*opt.watchers, 2*opt.watchers, "unix:"+filepath.Join(dir, "admin.sock"))
	}
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	p := startProc(b, bin, "-config", cfgFile)
	pb := &procBroker{
		proc:     p,
		grpcAddr: p.await(b, "its gRPC address", logAddr("tokenbroker listening")),
		httpAddr: p.await(b, "its HTTP address", logAddr("http listening")),
		apiKey:   apiKey,
	}
	if opt.watchers > 0 {
		pb.adminAddr = p.await(b, "its admin address", logAddr("admin service listening"))
	}
	return pb
}

// procConfig is the broker's configuration file for the separate-process
// comparisons: every default (log level and format, metrics, sealing with
// a random per-process key, limits) except the listen addresses (free
// loopback ports), the provider "test" at tokenURL with the broker-held
// client "held" (secret in the file held-secret beside it), and callers
// authenticated by API key (identity apikey:bench, whose SHA-256 is
// keyDigest) under a policy that lets that caller use "held" for
// api/read. With dropIn, pass-through is on for the drop-in endpoint:
// its plaintext callers are anonymous, identified by the client
// credentials they present, so the policy grants anonymous callers
// pass-through for api/read (which needs auth.allow_unauthenticated).
func procConfig(tokenURL, keyDigest string, dropIn bool) string {
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
passthrough: %t
providers:
  - name: test
    token_url: %q
clients:
  - name: held
    provider: test
    client_id: %q
    client_secret_file: held-secret
auth:
  api_keys:
    - identity: bench
      sha256: %s
  allow_unauthenticated: %t
policy:
  - identity: apikey:bench
    clients: [held]
    scopes: [api/read]
`, dropIn, tokenURL, heldID, keyDigest, dropIn)
	if dropIn {
		cfg += `  - identity: anonymous
    passthrough: true
    scopes: [api/read]
`
	}
	return cfg
}

// startProcBare starts the benchserver binary with args and returns its
// address of kind ("grpc" or "http") and the process.
func startProcBare(b *testing.B, bin, kind string, args ...string) (string, *proc) {
	b.Helper()
	p := startProc(b, bin, args...)
	addr := p.await(b, "its listening line", func(line string) (string, bool) {
		rest, ok := strings.CutPrefix(line, "benchserver listening ")
		if !ok {
			return "", false
		}
		for f := range strings.FieldsSeq(rest) {
			if k, v, _ := strings.Cut(f, "="); k == kind {
				return v, true
			}
		}
		return "", false
	})
	return addr, p
}

// skipProc skips the separate-process comparisons where they cannot run.
func skipProc(b *testing.B) {
	b.Helper()
	if testing.Short() {
		b.Skip("builds two binaries and runs minutes of load over loopback")
	}
	if runtime.GOOS != "linux" {
		b.Skip("reads the servers' CPU time from /proc/PID/stat")
	}
}

// BenchmarkProcGetTokenVsBare: GetToken cache hits of the real tokenbroker
// binary in its default configuration (a broker-held client; the caller
// authenticated by API key and authorized by a policy) against bare
// grpc-go (internal/benchserver) returning the broker's own
// GetTokenResponse, each in a process of its own; 1, 16 and 64 callers
// in this process share one client connection per server and send the
// same request and metadata to both. Metrics, per the comparison's
// report: broker-calls/s and bare-calls/s, ratio (median of the per-round
// ratios, broker ÷ bare) with ratio-min and ratio-max, each server
// process's CPU per call (broker-cpu-µs/call, bare-cpu-µs/call) and
// cpu-ratio with its spread, and each side's p50 and p99 latency in µs.
func BenchmarkProcGetTokenVsBare(b *testing.B) {
	skipProc(b)
	brokerBin, bareBin := procBins(b)
	issuer, tokenURL := startIssuer(b, nil)
	broker := startProcBroker(b, brokerBin, tokenURL, procOptions{})

	req := &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}
	authz := "Bearer " + broker.apiKey
	ctx, cancel := context.WithTimeout(context.Background(), harnessWait)
	defer cancel()
	brokerClient := dialReady(b, broker.grpcAddr)
	resp, err := brokerClient.GetToken(metadata.AppendToOutgoingContext(ctx, "authorization", authz), req)
	if err != nil {
		b.Fatalf("the broker's GetToken: %v; its output:\n%s", err, broker.tail())
	}
	raw, err := proto.Marshal(resp)
	if err != nil {
		b.Fatal(err)
	}
	respFile := filepath.Join(b.TempDir(), "response.pb")
	if err := os.WriteFile(respFile, raw, 0o600); err != nil {
		b.Fatal(err)
	}
	bareAddr, bare := startProcBare(b, bareBin, "grpc", "-grpc-response", respFile)
	bareClient := dialReady(b, bareAddr)
	if got, err := bareClient.GetToken(ctx, req); err != nil || !proto.Equal(got, resp) {
		b.Fatalf("the bare server: got another response or %v", err)
	}

	// The same request and metadata to both.
	caller := func(c tokenbrokerv1.TokenBrokerServiceClient) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.GetToken(metadata.AppendToOutgoingContext(ctx, "authorization", authz), req)
			return err
		}
	}
	for _, c := range harnessCallers {
		b.Run(fmt.Sprintf("callers=%d", c), func(b *testing.B) {
			cmp := comparison{rounds: procRounds, length: procRound, warmup: procRound,
				brokerCPU: procCPU(broker.pid), baseCPU: procCPU(bare.pid)}
			for b.Loop() {
				cmp.compare(b, c, caller(brokerClient), caller(bareClient))
			}
			cmp.report(b, "calls", "bare")
		})
	}
	if got := issuer.Requests(); got != 1 {
		b.Errorf("got %d upstream requests, want 1", got)
	}
}

// BenchmarkProcHTTPVsBare: the drop-in token endpoint (POST
// /oauth2/token, client_secret_basic, a pass-through client, a cached
// token) of the real tokenbroker binary in its default configuration
// (plus pass-through, which the endpoint needs) against a plain net/http
// server (internal/benchserver) writing the broker's captured body and
// headers, each in a process of its own; 1, 16 and 64 callers in this
// process share one http.Client per concurrency (keep-alive,
// MaxIdleConnsPerHost = callers). Metrics as BenchmarkProcGetTokenVsBare's
// (broker-req/s, bare-req/s, ...).
func BenchmarkProcHTTPVsBare(b *testing.B) {
	skipProc(b)
	brokerBin, bareBin := procBins(b)
	issuer, tokenURL := startIssuer(b, nil)
	broker := startProcBroker(b, brokerBin, tokenURL, procOptions{dropIn: true})
	brokerURL := "http://" + broker.httpAddr + "/oauth2/token"

	ctx, cancel := context.WithTimeout(context.Background(), harnessWait)
	defer cancel()
	body, header, err := postToken(ctx, http.DefaultClient, brokerURL)
	if err != nil {
		b.Fatalf("the broker's token endpoint: %v; its output:\n%s", err, broker.tail())
	}
	dir := b.TempDir()
	bodyFile := filepath.Join(dir, "body.json")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		b.Fatal(err)
	}
	args := []string{"-http-body", bodyFile}
	for k, vs := range header {
		if k == "Date" { // net/http sets its own
			continue
		}
		for _, v := range vs {
			args = append(args, "-http-header", k+": "+v)
		}
	}
	bareAddr, bare := startProcBare(b, bareBin, "http", args...)
	bareURL := "http://" + bareAddr + "/oauth2/token"
	if got, _, err := postToken(ctx, http.DefaultClient, bareURL); err != nil || string(got) != string(body) {
		b.Fatalf("the bare server: got another body or %v", err)
	}
	http.DefaultClient.CloseIdleConnections()

	for _, c := range harnessCallers {
		b.Run(fmt.Sprintf("callers=%d", c), func(b *testing.B) {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.MaxIdleConnsPerHost = c
			tr.MaxIdleConns = 0 // no limit across the two hosts
			b.Cleanup(tr.CloseIdleConnections)
			hc := &http.Client{Transport: tr}
			caller := func(u string) func(context.Context) error {
				return func(ctx context.Context) error {
					_, _, err := postToken(ctx, hc, u)
					return err
				}
			}
			cmp := comparison{rounds: procRounds, length: procRound, warmup: procRound,
				brokerCPU: procCPU(broker.pid), baseCPU: procCPU(bare.pid)}
			for b.Loop() {
				cmp.compare(b, c, caller(brokerURL), caller(bareURL))
			}
			cmp.report(b, "req", "bare")
		})
	}
	if got := issuer.Requests(); got != 1 {
		b.Errorf("got %d upstream requests, want 1", got)
	}
}
