// Command benchserver is the benchmarks' bare baseline, not part of the
// product: the separate-process comparisons of internal/app
// (BenchmarkProcGetTokenVsBare, BenchmarkProcHTTPVsBare) run it beside
// the real tokenbroker binary and call both alike.
//
// It serves, on loopback ports of its own choosing, what a bare server
// with no interceptors, options or broker would:
//
//   - with -grpc-response FILE (a serialized tokenbroker.v1.GetTokenResponse),
//     a bare grpc.NewServer() whose TokenBrokerService.GetToken returns
//     that message, marshaled on every call as any grpc-go server does;
//   - with -http-body FILE, a plain net/http server answering every POST
//     with status 200, the -http-header headers ("Name: value", repeatable)
//     and that body.
//
// Usage:
//
//	benchserver -grpc-response resp.pb -http-body body.json -http-header 'Content-Type: application/json'
//
// Once it listens it prints one line on standard output:
//
//	benchserver listening grpc=127.0.0.1:40123 http=127.0.0.1:40125
//
// (a server that was not asked for is left out). It runs until SIGINT,
// SIGTERM or the end of its standard input (so it ends with the parent
// that holds the other end of a pipe; do not start it with stdin on
// /dev/null), then stops its servers and exits with status 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "benchserver:", err)
		os.Exit(1)
	}
}

// stopTimeout bounds the graceful stop of each server; after it the
// remaining connections are cut.
const stopTimeout = 5 * time.Second

// headerFlags is the repeatable -http-header flag.
type headerFlags http.Header

// String implements flag.Value.
func (h headerFlags) String() string {
	var lines []string
	for k, vs := range h {
		for _, v := range vs {
			lines = append(lines, k+": "+v)
		}
	}
	return strings.Join(lines, ", ")
}

// Set implements flag.Value: "Name: value" adds a header line.
func (h headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t\r\n") || strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf(`must be "Name: value", got %q`, s)
	}
	http.Header(h).Add(name, strings.TrimSpace(value))
	return nil
}

// run serves what args ask for until ctx ends or stdin reaches its end,
// after printing the listen addresses on stdout.
func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("benchserver", flag.ContinueOnError)
	grpcResponse := fs.String("grpc-response", "", "`file` holding a serialized tokenbroker.v1.GetTokenResponse: serve it as GetToken's answer over bare gRPC")
	httpBody := fs.String("http-body", "", "`file` holding the body every POST is answered with over bare net/http")
	header := headerFlags{}
	fs.Var(header, "http-header", "a `Name: value` header of the HTTP answers (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *grpcResponse == "" && *httpBody == "":
		return errors.New("-grpc-response and -http-body: at least one is required")
	case len(header) > 0 && *httpBody == "":
		return errors.New("-http-header: needs -http-body")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var servers []server
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	var addrs []string
	if *grpcResponse != "" {
		resp, err := readResponse(*grpcResponse)
		if err != nil {
			return err
		}
		s, err := startGRPC(resp)
		if err != nil {
			return err
		}
		servers = append(servers, s)
		addrs = append(addrs, "grpc="+s.addr)
	}
	if *httpBody != "" {
		body, err := os.ReadFile(*httpBody)
		if err != nil {
			return fmt.Errorf("-http-body: %w", err)
		}
		s, err := startHTTP(http.Header(header), body)
		if err != nil {
			return err
		}
		servers = append(servers, s)
		addrs = append(addrs, "http="+s.addr)
	}
	if _, err := fmt.Fprintf(stdout, "benchserver listening %s\n", strings.Join(addrs, " ")); err != nil {
		return err
	}

	// The end of stdin ends the run like a signal. The reader goroutine
	// stays blocked on a stdin that never ends; the process exits anyway.
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	select {
	case <-ctx.Done():
	case err := <-firstFailure(servers):
		return err
	}
	return nil
}

// readResponse reads and decodes the GetTokenResponse in file.
func readResponse(file string) (*tokenbrokerv1.GetTokenResponse, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("-grpc-response: %w", err)
	}
	resp := &tokenbrokerv1.GetTokenResponse{}
	if err := proto.Unmarshal(raw, resp); err != nil {
		return nil, fmt.Errorf("-grpc-response: %s is not a serialized tokenbroker.v1.GetTokenResponse: %w", file, err)
	}
	return resp, nil
}

// server is one running server.
type server struct {
	addr   string
	failed <-chan error // receives the error that ended Serve early
	stop   func()       // stops the server and waits for Serve to return
}

// firstFailure returns a channel receiving the first early end of any of
// servers.
func firstFailure(servers []server) <-chan error {
	out := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			if err, ok := <-s.failed; ok {
				out <- err
			}
		}()
	}
	return out
}

// echoService is the bare TokenBrokerService: GetToken returns resp.
type echoService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp *tokenbrokerv1.GetTokenResponse
}

// GetToken implements tokenbrokerv1.TokenBrokerServiceServer.
func (s *echoService) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return s.resp, nil
}

// startGRPC serves resp on a bare grpc.Server (no options, no
// interceptors) on a free loopback port.
func startGRPC(resp *tokenbrokerv1.GetTokenResponse) (server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return server{}, fmt.Errorf("grpc listener: %w", err)
	}
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, &echoService{resp: resp})
	served := make(chan error, 1)
	failed := make(chan error, 1)
	go func() {
		err := gs.Serve(l)
		if err != nil {
			failed <- fmt.Errorf("grpc: %w", err)
		}
		close(failed)
		served <- err
	}()
	return server{addr: l.Addr().String(), failed: failed, stop: func() {
		t := time.AfterFunc(stopTimeout, gs.Stop)
		gs.GracefulStop()
		t.Stop()
		<-served
	}}, nil
}

// startHTTP serves header and body to every POST on a plain net/http
// server on a free loopback port.
func startHTTP(header http.Header, body []byte) (server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return server{}, fmt.Errorf("http listener: %w", err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		for k, v := range header {
			h[k] = v
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})}
	served := make(chan error, 1)
	failed := make(chan error, 1)
	go func() {
		err := hs.Serve(l)
		if !errors.Is(err, http.ErrServerClosed) {
			failed <- fmt.Errorf("http: %w", err)
		}
		close(failed)
		served <- err
	}()
	return server{addr: l.Addr().String(), failed: failed, stop: func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if hs.Shutdown(ctx) != nil {
			hs.Close()
		}
		<-served
	}}, nil
}
