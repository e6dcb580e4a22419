package tokensource_test

import (
	"bytes"
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/app"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// The addresses `make run` serves on, which the README's program dials.
const (
	readmeGRPCAddr = "127.0.0.1:7443"
	readmeHTTPAddr = "127.0.0.1:7080"
)

// TestREADMEProgram takes the Go program of the README's "Go client"
// section, checks that its main's body is Example_devBroker's word for
// word, builds it and runs it against an in-process -dev broker (app.Run
// as `make run` starts it, on free ports instead of the defaults, which
// the program's text has replaced).
//
// Building the program is the slow part. It is built once, with the go
// command's default flags, as `make build` (which make test runs first)
// builds the binaries: every package it shares with them (gRPC, protobuf)
// comes from the build cache, and only api/tokensource and the program are
// compiled, and it is linked without symbol table and DWARF, as `go run`
// links (under a second warm, against 3.4 s when built with the test's
// -race, whose link is far slower). The test is skipped under -short,
// which make test does not use.
func TestREADMEProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program with the go command; skipped under -short")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	prog := goBlock(t, string(readme), "## Go client: `api/tokensource`")
	if !strings.HasPrefix(prog, "// Command ") || !strings.Contains(prog, "\npackage main\n") {
		t.Fatalf("README Go client block: got %.80q…, want a documented package main", prog)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := funcBody(t, "README.md", prog, "main"), funcBody(t, "example_test.go", string(example), "Example_devBroker"); got != want {
		t.Errorf("the README program's main and Example_devBroker differ:\nREADME:\n%s\nexample_test.go:\n%s", got, want)
	}
	for _, addr := range []string{readmeGRPCAddr, readmeHTTPAddr} {
		if !strings.Contains(prog, addr) {
			t.Fatalf("README program: no %q in it, want the address `make run` serves on", addr)
		}
	}

	grpcAddr, httpAddr := startDevBroker(t)
	prog = strings.NewReplacer(readmeGRPCAddr, grpcAddr, readmeHTTPAddr, httpAddr).Replace(prog)
	dir := t.TempDir()
	main, bin := filepath.Join(dir, "main.go"), filepath.Join(dir, "readme-program")
	if err := os.WriteFile(main, []byte(prog), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Built as make build builds (static, -trimpath), so the packages it
	// imports are already compiled.
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, main)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Dir = "../.." // the module, whose packages the program imports
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build README program: %v\n%s", err, out)
	}
	cmd := exec.CommandContext(ctx, bin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("README program: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	want := regexp.MustCompile(`^Bearer token, expires in [0-9ms.]+\nGET /healthz: 200 OK\n$`)
	if !want.Match(stdout.Bytes()) {
		t.Errorf("README program output: got %q, want it to match %q", stdout.String(), want)
	}
}

// goBlock returns the first ```go block after heading in md.
func goBlock(t *testing.T, md, heading string) string {
	t.Helper()
	i := strings.Index(md, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README: no heading %q", heading)
	}
	rest := md[i:]
	start := strings.Index(rest, "\n```go\n")
	if next := strings.Index(rest[1:], "\n## "); start < 0 || (next >= 0 && start > next) {
		t.Fatalf("README: no ```go block in section %q", heading)
	}
	rest = rest[start+len("\n```go\n"):]
	end := strings.Index(rest, "\n```\n")
	if end < 0 {
		t.Fatalf("README: the ```go block of %q does not end", heading)
	}
	return rest[:end+1]
}

// funcBody returns the text inside the braces of the top-level function
// name in the Go source src.
func funcBody(t *testing.T, filename, src, name string) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filename, src, parser.ParseComments)
	if err != nil {
		t.Fatalf("parse %s: %v", filename, err)
	}
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == name {
			tf := f.FileStart // offsets are relative to the file's start
			return src[fd.Body.Lbrace-tf+1 : fd.Body.Rbrace-tf]
		}
	}
	t.Fatalf("%s: no func %s", filename, name)
	return ""
}

// startDevBroker runs the whole product in -dev mode, as `make run` does,
// with its gRPC and HTTP listeners on free loopback ports, until the test
// ends, and returns their addresses.
func startDevBroker(t *testing.T) (grpcAddr, httpAddr string) {
	t.Helper()
	cfg := config.Default()
	cfg.Dev = true
	cfg.Listen, cfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	logs := listening{Handler: slog.NewTextHandler(io.Discard, nil), addrs: make(chan [2]string, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, cfg, app.Keys{}, slog.New(logs), io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("app.Run: %v", err)
		}
	})
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for grpcAddr == "" || httpAddr == "" {
		select {
		case a := <-logs.addrs:
			if a[0] == "http" {
				httpAddr = a[1]
			} else {
				grpcAddr = a[1]
			}
		case err := <-done:
			t.Fatalf("app.Run returned before listening: %v", err)
		case <-timeout.C:
			t.Fatal("app.Run did not log its listening addresses")
		}
	}
	return grpcAddr, httpAddr
}

// listening is a slog.Handler that passes on the addr of the records that
// announce the gRPC ("tokenbroker listening") and HTTP ("http listening…")
// listeners, so a test learns the ports Run chose without polling a log.
type listening struct {
	slog.Handler
	addrs chan [2]string
}

// Handle implements slog.Handler.
func (h listening) Handle(ctx context.Context, r slog.Record) error {
	kind := ""
	switch {
	case r.Message == "tokenbroker listening":
		kind = "grpc"
	case strings.HasPrefix(r.Message, "http listening"):
		kind = "http"
	}
	if kind != "" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "addr" {
				h.addrs <- [2]string{kind, a.Value.String()}
				return false
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler, keeping the address hook.
func (h listening) WithAttrs(attrs []slog.Attr) slog.Handler {
	return listening{Handler: h.Handler.WithAttrs(attrs), addrs: h.addrs}
}

// WithGroup implements slog.Handler, keeping the address hook.
func (h listening) WithGroup(name string) slog.Handler {
	return listening{Handler: h.Handler.WithGroup(name), addrs: h.addrs}
}
