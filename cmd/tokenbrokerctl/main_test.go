package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
)

const (
	wrongPass = "WRONG-secret-44b0e3"
	apiKey    = "API-key-c0ffee-77d1"
	wrongKey  = "API-key-wrong-1234"
)

// forbidden are the values that must never appear in any output.
var forbidden = []string{apptest.HeldSecret, apptest.PassSecret, wrongPass, apiKey, wrongKey}

// testTimeout bounds every run of the command in the tests.
const testTimeout = 20 * time.Second

// stack is a real broker and token endpoint (see internal/apptest) whose
// broker-held client is also granted "api/admin".
type stack struct {
	*apptest.Stack
	// flags are the connection flags the tests pass (-plaintext, -addr).
	flags []string
}

// startStack starts a stack; adjust may change the configuration first.
func startStack(t *testing.T, adjust func(*config.Config)) *stack {
	t.Helper()
	st := apptest.Start(t, func(cfg *config.Config, _ *devissuer.Issuer) {
		if adjust != nil {
			adjust(cfg)
		}
	}, "api/admin")
	return &stack{Stack: st, flags: []string{"-plaintext", "-addr", st.Addr}}
}

// result is what one run of the command produced.
type result struct {
	code           int
	stdout, stderr string
}

// transcript collects every output of a test, to check that no secret
// appears anywhere.
type transcript struct {
	mu  sync.Mutex
	out strings.Builder
}

func (tr *transcript) add(s string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.out.WriteString(s)
}

// checkNoSecrets fails the test if a secret appears in the transcript.
func (tr *transcript) checkNoSecrets(t *testing.T) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, s := range forbidden {
		if strings.Contains(tr.out.String(), s) {
			t.Errorf("output contains the secret %q", s)
		}
	}
}

// ctl runs the command with env as its environment and args after the
// stack's connection flags.
func (s *stack) ctl(t *testing.T, tr *transcript, env map[string]string, args ...string) result {
	t.Helper()
	return ctlOpts(t, tr, env, append(append([]string(nil), s.flags...), args...), nil)
}

// ctlOpts runs the command with args as given and extra dial options.
func ctlOpts(t *testing.T, tr *transcript, env map[string]string, args []string, opts []grpc.DialOption) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := runWith(ctx, args, &stdout, &stderr, func(k string) string { return env[k] }, opts...)
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	if tr != nil {
		tr.add(r.stdout + r.stderr)
	}
	return r
}

// wantCode fails the test unless r exited with code.
func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("got exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var jwtPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

func TestGet(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)

	r := s.ctl(t, tr, nil, "get", "-client", "held", "-scope", "api/read,api/write")
	wantCode(t, r, exitOK)
	tok := strings.TrimSuffix(r.stdout, "\n")
	if !jwtPattern.MatchString(tok) || r.stdout != tok+"\n" {
		t.Fatalf("get: got stdout %q, want one line holding a JWT", r.stdout)
	}
	if r.stderr != "" {
		t.Errorf("get: got stderr %q, want none", r.stderr)
	}

	// The same scope set in another order and form is the same cached token.
	r = s.ctl(t, tr, nil, "-o", "json", "get", "-client", "held", "-scope", "api/write", "-scope", "api/read", "-min-ttl", "1m")
	wantCode(t, r, exitOK)
	var got tokenbrokerv1.Token
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("-o json: %v in %q", err, r.stdout)
	}
	if got.GetAccessToken() != tok {
		t.Errorf("-o json: got another token than the first call, want the cached one")
	}
	if len(got.GetKeyId()) != 16 || got.GetExpiresAt() == nil || got.GetTokenType() != "Bearer" {
		t.Errorf("-o json: got %v, want key id, expiry and token type", &got)
	}

	// -o after the command works too; the table shows the timing, never
	// the token.
	r = s.ctl(t, tr, nil, "get", "-client", "held", "-scope", "api/read", "-scope", "api/write", "-o", "table")
	wantCode(t, r, exitOK)
	for _, want := range []string{"key_id", got.GetKeyId(), "expires_at", got.GetExpiresAt().AsTime().UTC().Format(time.RFC3339Nano), "expires_in", "refresh_at", "api/read,api/write", "Bearer"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("-o table: got %q, want it to contain %q", r.stdout, want)
		}
	}
	if strings.Contains(r.stdout, tok) || strings.Contains(r.stdout, strings.Split(tok, ".")[1]) {
		t.Errorf("-o table: got the access token in %q, want none", r.stdout)
	}
	if n := s.Issuer.Requests(); n != 1 {
		t.Errorf("got %d upstream requests, want 1", n)
	}
}

func TestGetPassThroughSecretNeverShown(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	base := []string{"get", "-provider", "test", "-client-id", apptest.PassID, "-scope", "api/read"}

	// From a file (trailing line break dropped) and from the environment:
	// both are the same credentials, so the same cached token.
	file := writeFile(t, "secret", apptest.PassSecret+"\n")
	r1 := s.ctl(t, tr, nil, append(base, "-client-secret-file", file)...)
	wantCode(t, r1, exitOK)
	r2 := s.ctl(t, tr, map[string]string{envClientSecret: apptest.PassSecret}, base...)
	wantCode(t, r2, exitOK)
	if r1.stdout != r2.stdout || !jwtPattern.MatchString(strings.TrimSpace(r1.stdout)) {
		t.Errorf("got tokens %q and %q, want the same JWT twice", r1.stdout, r2.stdout)
	}
	r := s.ctl(t, tr, map[string]string{envClientSecret: apptest.PassSecret}, append(base, "-o", "json")...)
	wantCode(t, r, exitOK)

	// A wrong secret is refused by the token endpoint: exit 4, and the
	// message does not echo it.
	wrong := writeFile(t, "wrong", wrongPass)
	r = s.ctl(t, tr, map[string]string{envClientSecret: apptest.PassSecret}, append(base, "-client-secret-file", wrong)...)
	wantCode(t, r, exitAuth)
	if !strings.HasPrefix(r.stderr, "tokenbrokerctl: Unauthenticated: ") {
		t.Errorf("wrong secret: got stderr %q, want \"tokenbrokerctl: Unauthenticated: ...\"", r.stderr)
	}
	r = s.ctl(t, tr, map[string]string{envClientSecret: wrongPass}, append(base, "-o", "table")...)
	wantCode(t, r, exitAuth)

	// The secret is never a flag value, and a missing one is a usage error.
	r = s.ctl(t, tr, nil, base...)
	wantCode(t, r, exitUsage)
	if !strings.Contains(r.stderr, envClientSecret) {
		t.Errorf("no secret: got stderr %q, want it to name %s", r.stderr, envClientSecret)
	}
	r = s.ctl(t, tr, nil, append(base, "-client-secret", apptest.PassSecret)...)
	wantCode(t, r, exitUsage)
}

// lineWriter hands each complete line written to it to a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 100)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// next returns the next line, failing the test after a timeout.
func (w *lineWriter) next(t *testing.T) string {
	t.Helper()
	select {
	case l := <-w.lines:
		return l
	case <-time.After(testTimeout):
		t.Fatal("no line written in time")
		return ""
	}
}

// startWatch runs the command's watch in the background; cancel ends it,
// and wait returns its exit code.
func (s *stack) startWatch(t *testing.T, tr *transcript, args ...string) (out *lineWriter, cancel func(), wait func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out = newLineWriter()
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append(append([]string(nil), s.flags...), args...), out, &stderr, func(string) string { return "" })
	}()
	wait = func() int {
		t.Helper()
		select {
		case code := <-done:
			tr.add(stderr.String())
			return code
		case <-time.After(testTimeout):
			t.Fatal("watch did not end")
			return -1
		}
	}
	return out, cancel, wait
}

var watchLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INITIAL|REFRESHED|INVALIDATED) key_id=([0-9a-f]{16}) expires_at=\S+$`)

func TestWatch(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)

	out, cancel, wait := s.startWatch(t, tr, "watch", "-client", "held", "-scope", "api/read")
	line := out.next(t)
	tr.add(line)
	m := watchLine.FindStringSubmatch(line)
	if m == nil || m[1] != "INITIAL" {
		t.Fatalf("got first line %q, want an INITIAL event with key id and expiry", line)
	}
	keyID := m[2]

	// An invalidation pushes the replacement to the watcher.
	r := s.ctl(t, tr, nil, "invalidate", "-key-id", keyID)
	wantCode(t, r, exitOK)
	line = out.next(t)
	tr.add(line)
	if m := watchLine.FindStringSubmatch(line); m == nil || m[1] != "INVALIDATED" || m[2] != keyID {
		t.Fatalf("got line %q after invalidating, want an INVALIDATED event for %s", line, keyID)
	}

	cancel() // what SIGINT does
	if code := wait(); code != exitOK {
		t.Errorf("watch ended by cancel: got exit %d, want 0", code)
	}
}

func TestWatchJSONAndTokens(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	tok := strings.TrimSpace(s.ctl(t, tr, nil, "get", "-client", "held").stdout)

	out, cancel, wait := s.startWatch(t, tr, "watch", "-client", "held", "-o", "json")
	line := out.next(t)
	var ev tokenbrokerv1.WatchTokenResponse
	if err := protojson.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("got line %q: %v; want a WatchTokenResponse", line, err)
	}
	if ev.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL || ev.GetToken().GetAccessToken() != tok {
		t.Errorf("got %v, want EVENT_INITIAL with the cached token", &ev)
	}
	cancel()
	if code := wait(); code != exitOK {
		t.Errorf("got exit %d, want 0", code)
	}

	out, cancel, wait = s.startWatch(t, tr, "-o", "token", "watch", "-client", "held")
	if line := out.next(t); line != tok {
		t.Errorf("-o token: got line %q, want the access token", line)
	}
	cancel()
	if code := wait(); code != exitOK {
		t.Errorf("got exit %d, want 0", code)
	}

	// A watch whose first token cannot be had ends with the status.
	_, _, wait = s.startWatch(t, tr, "watch", "-client", "nope")
	if code := wait(); code != exitRequest {
		t.Errorf("unknown client: got exit %d, want %d", code, exitRequest)
	}
}

// getKeyID gets a token and returns its key id.
func (s *stack) getKeyID(t *testing.T, tr *transcript, args ...string) string {
	t.Helper()
	r := s.ctl(t, tr, nil, append([]string{"-o", "json", "get"}, args...)...)
	wantCode(t, r, exitOK)
	var tok tokenbrokerv1.Token
	if err := protojson.Unmarshal([]byte(r.stdout), &tok); err != nil {
		t.Fatal(err)
	}
	return tok.GetKeyId()
}

func TestInvalidate(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	env := map[string]string{envClientSecret: apptest.PassSecret}
	fill := func() (read, write string) {
		read = s.getKeyID(t, tr, "-client", "held", "-scope", "api/read")
		write = s.getKeyID(t, tr, "-client", "held", "-scope", "api/write")
		r := s.ctl(t, tr, env, "get", "-provider", "test", "-client-id", apptest.PassID)
		wantCode(t, r, exitOK)
		return read, write
	}
	read, _ := fill()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-key-id", read}, "invalidated 1 entry\n"},
		{[]string{"-key-id", read}, "invalidated 0 entries\n"},
		{[]string{"-provider", "test", "-client-id", apptest.HeldID, "-scope", "api/write"}, "invalidated 1 entry\n"},
		{[]string{"-provider", "test", "-client-id", apptest.PassID}, "invalidated 1 entry\n"},
	} {
		r := s.ctl(t, tr, nil, append([]string{"invalidate"}, tc.args...)...)
		wantCode(t, r, exitOK)
		if r.stdout != tc.want {
			t.Errorf("invalidate %v: got %q, want %q", tc.args, r.stdout, tc.want)
		}
	}
	fill()
	r := s.ctl(t, tr, nil, "invalidate", "-client", "held")
	wantCode(t, r, exitOK)
	if r.stdout != "invalidated 2 entries\n" {
		t.Errorf("invalidate -client: got %q, want 2 entries", r.stdout)
	}
	fill()
	r = s.ctl(t, tr, nil, "-o", "json", "invalidate", "-all")
	wantCode(t, r, exitOK)
	var resp tokenbrokerv1.InvalidateTokensResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil || resp.GetInvalidated() != 3 {
		t.Errorf("invalidate -all -o json: got %q (%v), want 3 invalidated", r.stdout, err)
	}
	r = s.ctl(t, tr, nil, "list")
	wantCode(t, r, exitOK)
	if n := strings.Count(r.stdout, "\n"); n != 1 {
		t.Errorf("list after invalidate -all: got %q, want the header alone", r.stdout)
	}
}

func TestListPaginates(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	var tokens []string
	var keyIDs []string
	for _, scopes := range []string{"api/read", "api/write", "api/admin", "api/read,api/write"} {
		r := s.ctl(t, tr, nil, "-o", "json", "get", "-client", "held", "-scope", scopes)
		wantCode(t, r, exitOK)
		var tok tokenbrokerv1.Token
		if err := protojson.Unmarshal([]byte(r.stdout), &tok); err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok.GetAccessToken())
		keyIDs = append(keyIDs, tok.GetKeyId())
	}

	// pages records the page sizes of the ListTokens calls.
	var mu sync.Mutex
	var pages []int32
	count := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if lr, ok := req.(*tokenbrokerv1.ListTokensRequest); ok {
			mu.Lock()
			pages = append(pages, lr.GetPageSize())
			mu.Unlock()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	list := func(args ...string) (result, []int32) {
		mu.Lock()
		pages = nil
		mu.Unlock()
		r := ctlOpts(t, tr, nil, append(append([]string(nil), s.flags...), args...), []grpc.DialOption{count})
		mu.Lock()
		defer mu.Unlock()
		return r, append([]int32(nil), pages...)
	}

	r, sizes := list("list", "-page-size", "1")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("got %d lines, want a header and 4 entries:\n%s", len(lines), r.stdout)
	}
	for _, col := range listColumns {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q: want column %q", lines[0], col)
		}
	}
	for _, id := range keyIDs {
		if !strings.Contains(r.stdout, id+" ") {
			t.Errorf("list: got %q, want key id %s", r.stdout, id)
		}
	}
	if !strings.Contains(r.stdout, "api/read,api/write") || !strings.Contains(r.stdout, apptest.HeldID) || !strings.Contains(r.stdout, "ago") {
		t.Errorf("list: got %q, want scopes, client id and last use", r.stdout)
	}
	if len(sizes) < 4 {
		t.Errorf("got %d ListTokens calls, want at least 4 pages of 1", len(sizes))
	}
	for i, n := range sizes {
		if n != 1 {
			t.Errorf("call %d: got page_size %d, want 1", i, n)
		}
	}
	for _, tok := range tokens {
		if strings.Contains(r.stdout, tok) {
			t.Error("list shows an access token")
		}
	}

	r, sizes = list("list", "-page-size", "1", "-limit", "2")
	wantCode(t, r, exitOK)
	if n := strings.Count(r.stdout, "\n"); n != 3 || len(sizes) != 2 {
		t.Errorf("-limit 2: got %d lines in %d calls, want 3 lines in 2 calls:\n%s", n, len(sizes), r.stdout)
	}

	r, sizes = list("list", "-limit", "5000")
	wantCode(t, r, exitOK)
	if n := strings.Count(r.stdout, "\n"); n != 5 || len(sizes) != 1 || sizes[0] != maxPageSize {
		t.Errorf("-limit 5000: got %d lines, page sizes %v; want 5 lines from one page of %d", n, sizes, maxPageSize)
	}

	r, _ = list("-o", "json", "list", "-page-size", "3")
	wantCode(t, r, exitOK)
	var resp tokenbrokerv1.ListTokensResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEntries()) != 4 || resp.GetNextPageToken() != "" {
		t.Errorf("-o json: got %d entries and next page %q, want 4 and none", len(resp.GetEntries()), resp.GetNextPageToken())
	}
}

func TestStats(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	wantCode(t, s.ctl(t, tr, nil, "get", "-client", "held"), exitOK)
	wantCode(t, s.ctl(t, tr, nil, "get", "-client", "held"), exitOK)

	r := s.ctl(t, tr, nil, "stats")
	wantCode(t, r, exitOK)
	rows := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("got line %q, want name and value", line)
		}
		rows[f[0]] = f[1]
	}
	for name, want := range map[string]string{"NAME": "VALUE", "misses": "1", "hits": "1", "providers[test].ok": "1", "providers[test].rejected": "0", "entries": "1"} {
		if rows[name] != want {
			t.Errorf("stats: got %s = %q, want %q\n%s", name, rows[name], want, r.stdout)
		}
	}
	// Every field of the message is shown, whatever the message holds.
	fields := (&tokenbrokerv1.GetStatsResponse{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		name := string(fields.Get(i).Name())
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `[ .\[]`).MatchString(r.stdout) {
			t.Errorf("stats: field %s missing from\n%s", name, r.stdout)
		}
	}

	r = s.ctl(t, tr, nil, "stats", "-o", "json")
	wantCode(t, r, exitOK)
	var resp tokenbrokerv1.GetStatsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetMisses() != 1 || resp.GetHits() != 1 || !strings.Contains(r.stdout, `"evictions": "0"`) {
		t.Errorf("stats -o json: got %s, want 1 miss, 1 hit and the zero counters", r.stdout)
	}
}

func TestExitCodes(t *testing.T) {
	s := startStack(t, nil)
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	badCA := writeFile(t, "ca.pem", "not a certificate")

	for _, tc := range []struct {
		name   string
		args   []string // after -plaintext -addr ADDR unless raw
		raw    bool
		code   int
		stderr string // a prefix of stderr, when set
	}{
		{name: "no command", raw: true, code: exitUsage, stderr: "tokenbrokerctl: no command given"},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: `tokenbrokerctl: unknown command "frobnicate"`},
		{name: "unknown global flag", args: []string{"-nope", "stats"}, code: exitUsage},
		{name: "unknown command flag", args: []string{"stats", "-nope"}, code: exitUsage},
		{name: "no selector", args: []string{"get"}, code: exitUsage, stderr: "tokenbrokerctl: -client, or -provider with -client-id, is required"},
		{name: "two selectors", args: []string{"get", "-client", "held", "-provider", "test", "-client-id", "x"}, code: exitUsage},
		{name: "provider alone", args: []string{"get", "-provider", "test"}, code: exitUsage},
		{name: "empty scope", args: []string{"get", "-client", "held", "-scope", "a,,b"}, code: exitUsage},
		{name: "extra argument", args: []string{"get", "-client", "held", "extra"}, code: exitUsage, stderr: "tokenbrokerctl: get takes no arguments"},
		{name: "bad format", args: []string{"-o", "yaml", "get", "-client", "held"}, code: exitUsage, stderr: "tokenbrokerctl: -o: must be one of"},
		{name: "token format for stats", args: []string{"stats", "-o", "token"}, code: exitUsage},
		{name: "negative min-ttl", args: []string{"get", "-client", "held", "-min-ttl", "-1s"}, code: exitUsage},
		{name: "negative timeout", args: []string{"-timeout", "-1s", "stats"}, code: exitUsage},
		{name: "no invalidate selector", args: []string{"invalidate"}, code: exitUsage},
		{name: "two invalidate selectors", args: []string{"invalidate", "-all", "-client", "held"}, code: exitUsage},
		{name: "scope without client id", args: []string{"invalidate", "-client", "held", "-scope", "a"}, code: exitUsage},
		{name: "page size too big", args: []string{"list", "-page-size", "1001"}, code: exitUsage},
		{name: "cert without key", raw: true, args: []string{"-addr", s.Addr, "-cert", badCA, "stats"}, code: exitUsage},
		{name: "plaintext with cacert", args: []string{"-cacert", badCA, "stats"}, code: exitUsage},
		{name: "help flag", raw: true, args: []string{"-h"}, code: exitOK},
		{name: "command help flag", args: []string{"get", "-h"}, code: exitOK},
		{name: "help command", raw: true, args: []string{"help", "list"}, code: exitOK},
		{name: "help unknown command", raw: true, args: []string{"help", "nope"}, code: exitUsage},
		{name: "bad CA file", raw: true, args: []string{"-addr", s.Addr, "-cacert", badCA, "stats"}, code: exitError, stderr: "tokenbrokerctl: -cacert"},
		{name: "missing secret file", args: []string{"get", "-provider", "test", "-client-id", apptest.PassID, "-client-secret-file", "/nonexistent/secret"}, code: exitError},
		{name: "unknown client", args: []string{"get", "-client", "nope"}, code: exitRequest, stderr: "tokenbrokerctl: NotFound: "},
		{name: "scope not granted", args: []string{"get", "-client", "held", "-scope", "api/other"}, code: exitRequest, stderr: "tokenbrokerctl: InvalidArgument: "},
		{name: "bad key id", args: []string{"invalidate", "-key-id", "xyz"}, code: exitRequest, stderr: "tokenbrokerctl: InvalidArgument: key_id"},
		{name: "unknown client to invalidate", args: []string{"invalidate", "-client", "nope"}, code: exitRequest, stderr: "tokenbrokerctl: NotFound: "},
		{name: "server down", raw: true, args: []string{"-plaintext", "-addr", down, "stats"}, code: exitUnavailable, stderr: "tokenbrokerctl: Unavailable: "},
		{name: "server down, get", raw: true, args: []string{"-plaintext", "-addr", down, "get", "-client", "held"}, code: exitUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !tc.raw {
				args = append(append([]string(nil), s.flags...), args...)
			}
			r := ctlOpts(t, tr, nil, args, nil)
			wantCode(t, r, tc.code)
			if tc.stderr != "" && !strings.HasPrefix(r.stderr, tc.stderr) {
				t.Errorf("got stderr %q, want it to start with %q", r.stderr, tc.stderr)
			}
			if tc.code != exitOK && r.stdout != "" {
				t.Errorf("got stdout %q, want none on failure", r.stdout)
			}
		})
	}
}

func TestHelpOutput(t *testing.T) {
	r := ctlOpts(t, nil, nil, []string{"help"}, nil)
	wantCode(t, r, exitOK)
	for _, want := range []string{"Usage: tokenbrokerctl [global flags] <command>", "Exit codes:", "3  unavailable", "-api-key-file", envClientSecret} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help: got %q, want it to contain %q", r.stdout, want)
		}
	}
	r = ctlOpts(t, nil, nil, []string{"help", "invalidate"}, nil)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "-key-id") || !strings.Contains(r.stdout, "Usage: tokenbrokerctl [global flags] invalidate") {
		t.Errorf("help invalidate: got %q, want its flags", r.stdout)
	}
}

func TestCallerDeadlineIsRetryLater(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	s := startStack(t, func(cfg *config.Config) { cfg.Providers[0].TokenURL = hang.URL + devissuer.TokenPath })
	t.Cleanup(func() { close(release) }) // runs first: lets the broker stop
	r := s.ctl(t, nil, nil, "-timeout", "200ms", "get", "-client", "held")
	wantCode(t, r, exitUnavailable)
	if !strings.HasPrefix(r.stderr, "tokenbrokerctl: DeadlineExceeded: ") {
		t.Errorf("got stderr %q, want DeadlineExceeded", r.stderr)
	}
}

func TestAPIKey(t *testing.T) {
	sum := sha256.Sum256([]byte(apiKey))
	s := startStack(t, func(cfg *config.Config) {
		cfg.Auth.AllowUnauthenticated = false
		cfg.Auth.APIKeys = []config.APIKey{{Identity: "ops", SHA256: hex.EncodeToString(sum[:])}}
		cfg.Admin.Identities = []string{"apikey:ops"}
	})
	tr := &transcript{}
	defer tr.checkNoSecrets(t)
	keyFile := writeFile(t, "key", apiKey+"\n")
	wrongFile := writeFile(t, "wrong", wrongKey)
	// A key file others may write is refused before it is read: whoever
	// can write it can make the CLI send their key.
	openFile := writeFile(t, "open", apiKey)
	if err := os.Chmod(openFile, 0o666); err != nil {
		t.Fatal(err)
	}
	// A FIFO is refused, not opened for a read that waits for a writer.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
	}{
		{"no key", nil, []string{"stats"}, exitAuth},
		{"no key, get", nil, []string{"get", "-client", "held"}, exitAuth},
		{"key from the environment", map[string]string{envAPIKey: apiKey}, []string{"stats"}, exitOK},
		{"key from a file", nil, []string{"-api-key-file", keyFile, "stats"}, exitOK},
		{"file wins over the environment", map[string]string{envAPIKey: wrongKey}, []string{"stats", "-api-key-file", keyFile}, exitOK},
		{"wrong key", map[string]string{envAPIKey: wrongKey}, []string{"list"}, exitAuth},
		{"wrong key from a file", nil, []string{"-api-key-file", wrongFile, "get", "-client", "held"}, exitAuth},
		{"key with a space", map[string]string{envAPIKey: "two words"}, []string{"stats"}, exitError},
		{"key file others can write", nil, []string{"-api-key-file", openFile, "stats"}, exitError},
		{"key file is a FIFO", nil, []string{"-api-key-file", fifo, "stats"}, exitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.ctl(t, tr, tc.env, tc.args...)
			wantCode(t, r, tc.code)
			if tc.args[0] == "-api-key-file" && tc.args[1] == openFile && !strings.Contains(r.stderr, "has mode 0666") {
				t.Errorf("got stderr %q, want the file's mode named", r.stderr)
			}
			if tc.args[0] == "-api-key-file" && tc.args[1] == fifo && !strings.Contains(r.stderr, "is not a regular file") {
				t.Errorf("got stderr %q, want the FIFO refused", r.stderr)
			}
			if tc.code == exitAuth && !strings.HasPrefix(r.stderr, "tokenbrokerctl: Unauthenticated: ") {
				t.Errorf("got stderr %q, want Unauthenticated", r.stderr)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	ca.issue(t, dir, "server", "localhost", true)
	ca.issue(t, dir, "client", "spiffe://test/ops", false)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, func(cfg *config.Config) {
		cfg.TLS = config.TLS{
			CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
			ClientCAFile: caFile, ClientAuth: config.ClientAuthRequire,
		}
		cfg.Auth.AllowUnauthenticated = false
		cfg.Admin.Identities = []string{"spiffe://test/ops"}
	})
	mtls := []string{"-cacert", caFile, "-cert", filepath.Join(dir, "client.pem"), "-key", filepath.Join(dir, "client-key.pem")}
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"mTLS", append(append([]string{"-addr", s.Addr}, mtls...), "stats"), exitOK},
		{"server name", append(append([]string{"-addr", s.Addr, "-server-name", "localhost"}, mtls...), "stats"), exitOK},
		{"wrong server name", append(append([]string{"-addr", s.Addr, "-server-name", "elsewhere"}, mtls...), "stats"), exitUnavailable},
		{"unknown CA", []string{"-addr", s.Addr, "-cert", filepath.Join(dir, "client.pem"), "-key", filepath.Join(dir, "client-key.pem"), "stats"}, exitUnavailable},
		{"no client certificate", []string{"-addr", s.Addr, "-cacert", caFile, "stats"}, exitUnavailable},
		{"plaintext to TLS", []string{"-addr", s.Addr, "-plaintext", "stats"}, exitUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ctlOpts(t, nil, nil, tc.args, nil)
			wantCode(t, r, tc.code)
		})
	}
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes NAME.pem and NAME-key.pem to dir: a server certificate for
// san (a DNS name, plus 127.0.0.1) or a client certificate for san (a URI).
func (ca *testCA) issue(t *testing.T, dir, name, san string, server bool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{san}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		u, err := url.Parse(san)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+"-key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}
