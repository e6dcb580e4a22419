// Command benchserver is the benchmarks' bare baseline, not part of the
// product: the separate-process comparisons of internal/app
// (BenchmarkProcGetTokenVsBare, BenchmarkProcHTTPVsBare,
// BenchmarkProcWatchFanoutVsBare) run it beside the real tokenbroker
// binary and call both alike.
//
// It serves, on loopback ports of its own choosing, what a bare server
// with no interceptors, options or broker would:
//
//   - with -grpc-response FILE (a serialized tokenbroker.v1.GetTokenResponse),
//     a bare grpc.NewServer() whose TokenBrokerService.GetToken returns
//     that message, marshaled on every call as any grpc-go server does;
//   - with -watch-message FILE (a serialized tokenbroker.v1.WatchTokenResponse,
//     typically the broker's own first WatchToken message), on the same
//     gRPC server, a WatchToken that sends that message as EVENT_INITIAL
//     and then each newly published one, marshaled for every stream by a
//     plain stream.Send (package barewatch). Each line read on standard
//     input publishes a new message: the file's token issued at that
//     moment, its expiry and refresh point moved by as much, as
//     EVENT_REFRESHED;
//   - with -max-concurrent-streams N, that gRPC server allows N
//     concurrent streams per connection (grpc.MaxConcurrentStreams; the
//     broker's server.max_concurrent_streams is the one to match); 0, the
//     default, leaves grpc-go's own;
//   - with -http-body FILE, a plain net/http server answering every POST
//     with status 200, the -http-header headers ("Name: value", repeatable)
//     and that body.
//
// Usage:
//
//	benchserver -grpc-response resp.pb -http-body body.json -http-header 'Content-Type: application/json'
//	benchserver -watch-message watch.pb -max-concurrent-streams 1000
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
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
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
	"github.com/tokenbroker/tokenbroker/internal/benchserver/barewatch"
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
// after printing the listen addresses on stdout; with -watch-message,
// each line of stdin publishes a new watch message.
func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("benchserver", flag.ContinueOnError)
	grpcResponse := fs.String("grpc-response", "", "`file` holding a serialized tokenbroker.v1.GetTokenResponse: serve it as GetToken's answer over bare gRPC")
	watchMessage := fs.String("watch-message", "", "`file` holding a serialized tokenbroker.v1.WatchTokenResponse: serve WatchToken over bare gRPC, publishing a new one for each line of stdin")
	maxStreams := fs.Uint("max-concurrent-streams", 0, "`n` concurrent streams per gRPC connection (0: grpc-go's default)")
	httpBody := fs.String("http-body", "", "`file` holding the body every POST is answered with over bare net/http")
	header := headerFlags{}
	fs.Var(header, "http-header", "a `Name: value` header of the HTTP answers (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *grpcResponse == "" && *watchMessage == "" && *httpBody == "":
		return errors.New("-grpc-response, -watch-message and -http-body: at least one is required")
	case len(header) > 0 && *httpBody == "":
		return errors.New("-http-header: needs -http-body")
	case *maxStreams > math.MaxUint32:
		return fmt.Errorf("-max-concurrent-streams: must be from 0 to %d, got %d", uint32(math.MaxUint32), *maxStreams)
	case *maxStreams > 0 && *grpcResponse == "" && *watchMessage == "":
		return errors.New("-max-concurrent-streams: needs -grpc-response or -watch-message")
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
	var svc service
	if *grpcResponse != "" {
		svc.resp = &tokenbrokerv1.GetTokenResponse{}
		if err := readMessage(*grpcResponse, svc.resp); err != nil {
			return fmt.Errorf("-grpc-response: %w", err)
		}
	}
	if *watchMessage != "" {
		msg := &tokenbrokerv1.WatchTokenResponse{}
		if err := readMessage(*watchMessage, msg); err != nil {
			return fmt.Errorf("-watch-message: %w", err)
		}
		svc.watch = barewatch.New(msg)
	}
	if svc.resp != nil || svc.watch != nil {
		var opts []grpc.ServerOption
		if *maxStreams > 0 {
			opts = append(opts, grpc.MaxConcurrentStreams(uint32(*maxStreams)))
		}
		s, err := startGRPC(&svc, opts...)
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

	// Each line of stdin publishes a watch message (and is ignored
	// without -watch-message); its end ends the run like a signal. The
	// reader goroutine stays blocked on a stdin that never ends; the
	// process exits anyway.
	go func() {
		lines := bufio.NewScanner(stdin)
		for lines.Scan() {
			if svc.watch != nil {
				svc.watch.Publish(time.Now())
			}
		}
		cancel()
	}()
	select {
	case <-ctx.Done():
	case err := <-firstFailure(servers):
		return err
	}
	return nil
}

// readMessage reads file and decodes it into msg.
func readMessage(file string, msg proto.Message) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(raw, msg); err != nil {
		return fmt.Errorf("%s is not a serialized %s: %w", file, msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
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

// service is the bare TokenBrokerService: GetToken returns resp, and
// WatchToken is watch's. Either is unimplemented when nil.
type service struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp  *tokenbrokerv1.GetTokenResponse
	watch *barewatch.Server
}

// GetToken implements tokenbrokerv1.TokenBrokerServiceServer.
func (s *service) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	if s.resp == nil {
		return s.UnimplementedTokenBrokerServiceServer.GetToken(ctx, req)
	}
	return s.resp, nil
}

// WatchToken implements tokenbrokerv1.TokenBrokerServiceServer.
func (s *service) WatchToken(req *tokenbrokerv1.WatchTokenRequest, stream grpc.ServerStreamingServer[tokenbrokerv1.WatchTokenResponse]) error {
	if s.watch == nil {
		return s.UnimplementedTokenBrokerServiceServer.WatchToken(req, stream)
	}
	return s.watch.WatchToken(req, stream)
}

// startGRPC serves svc on a bare grpc.Server (no interceptors, no options
// but opts) on a free loopback port.
func startGRPC(svc *service, opts ...grpc.ServerOption) (server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return server{}, fmt.Errorf("grpc listener: %w", err)
	}
	gs := grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, svc)
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
