package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// opTimeout bounds every command a test sends to a server that should answer.
const opTimeout = 5 * time.Second

// get runs GET key with the given timeout.
func get(c *redis.Client, key string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Get(ctx, key).Result()
}

// set runs SET key value, failing the test on error.
func set(t *testing.T, c *redis.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := c.Set(ctx, key, value, 0).Err(); err != nil {
		t.Fatalf("SET %s: got error %v, want nil", key, err)
	}
}

// isTimeout reports whether err is a deadline or network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func TestServerLifecycle(t *testing.T) {
	s := Start(t)
	c := s.Client()
	addr := s.Addr()
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr: got %q, want 127.0.0.1:PORT", addr)
	}

	set(t, c, "k", "v1")
	if got, err := get(c, "k", opTimeout); err != nil || got != "v1" {
		t.Fatalf("GET after SET: got (%q, %v), want (\"v1\", nil)", got, err)
	}

	s.Stop()
	if got, err := get(c, "k", opTimeout); err == nil {
		t.Fatalf("GET after Stop: got (%q, nil), want an error", got)
	}
	s.Stop() // a second Stop does nothing

	s.Restart()
	if got := s.Addr(); got != addr {
		t.Fatalf("Addr after Restart: got %q, want %q", got, addr)
	}
	// Nothing is persisted, so the key is gone; the server must answer.
	if got, err := get(c, "k", opTimeout); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after Restart: got (%q, %v), want redis.Nil", got, err)
	}
	set(t, c, "k", "v2")

	s.Pause()
	s.Pause() // a second Pause does nothing
	got, err := get(c, "k", 200*time.Millisecond)
	if !isTimeout(err) {
		t.Fatalf("GET while paused: got (%q, %v), want a timeout", got, err)
	}

	s.Resume()
	s.Resume() // a second Resume does nothing
	if got, err := get(c, "k", opTimeout); err != nil || got != "v2" {
		t.Fatalf("GET after Resume: got (%q, %v), want (\"v2\", nil)", got, err)
	}

	// Restart of a running server stops it first.
	s.Restart()
	if got, err := get(c, "k", opTimeout); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after Restart of a running server: got (%q, %v), want redis.Nil", got, err)
	}
}

func TestServersAreSeparate(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("addresses: got %q twice, want two different ones", a.Addr())
	}
	set(t, a.Client(), "k", "a")
	if got, err := get(b.Client(), "k", opTimeout); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET on the other server: got (%q, %v), want redis.Nil", got, err)
	}
}

// TestCleanupStopsServer checks that the cleanup of a test, whatever state it
// leaves its server in, does not hang and leaves nothing listening.
func TestCleanupStopsServer(t *testing.T) {
	tests := []struct {
		name string
		act  func(s *Server)
	}{
		{name: "running", act: func(*Server) {}},
		{name: "paused", act: func(s *Server) { s.Pause() }},
		{name: "stopped", act: func(s *Server) { s.Stop() }},
		{name: "paused then stopped", act: func(s *Server) { s.Pause(); s.Stop() }},
	}
	for _, tt := range tests {
		var addr string
		t.Run(tt.name, func(t *testing.T) {
			s := Start(t)
			addr = s.Addr()
			tt.act(s)
		})
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			t.Fatalf("%s: dial %s after cleanup: got a connection, want refused", tt.name, addr)
		}
	}
}

// fakeTB records what Start reports instead of failing the real test.
// Fatal and Fatalf end the calling goroutine, as testing.T's do.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	fatal    string
	errs     []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatal(args ...any) { f.fail(fmt.Sprint(args...)) }

func (f *fakeTB) Fatalf(format string, args ...any) { f.fail(fmt.Sprintf(format, args...)) }

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) fail(msg string) {
	f.mu.Lock()
	f.fatal = msg
	f.mu.Unlock()
	runtime.Goexit()
}

// runCleanups runs the registered cleanups, last first.
func (f *fakeTB) runCleanups() {
	f.mu.Lock()
	fns := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// startFake calls Start with a fakeTB on its own goroutine and returns the
// server (nil if Start failed) and the fatal message.
func startFake(t *testing.T) (*Server, string) {
	t.Helper()
	f := &fakeTB{TB: t}
	t.Cleanup(func() {
		f.runCleanups()
		for _, e := range f.errs {
			t.Errorf("cleanup reported: %s", e)
		}
	})
	done := make(chan *Server, 1)
	go func() {
		var s *Server
		defer func() { done <- s }()
		s = Start(f)
	}()
	select {
	case s := <-done:
		f.mu.Lock()
		defer f.mu.Unlock()
		return s, f.fatal
	case <-time.After(30 * time.Second):
		t.Fatal("Start: got no return after 30s, want it to finish")
		return nil, ""
	}
}

// fakeRedis puts an executable script named redis-server into a new
// directory, makes that directory the whole PATH, and returns it. Scripts
// use shell builtins only.
func fakeRedis(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "redis-server"), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatalf("write fake redis-server: %v", err)
	}
	t.Setenv("PATH", dir)
	return dir
}

func TestStartWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	s, fatal := startFake(t)
	if s != nil {
		t.Fatalf("Start: got a server, want a failure")
	}
	if fatal != notFoundMsg {
		t.Fatalf("Start failure: got %q, want %q", fatal, notFoundMsg)
	}
}

func TestStartFailureQuotesOutput(t *testing.T) {
	fakeRedis(t, "echo 'FATAL CONFIG FILE ERROR: bad directive'\nexit 1\n")
	s, fatal := startFake(t)
	if s != nil {
		t.Fatalf("Start: got a server, want a failure")
	}
	for _, want := range []string{"exited before answering", "FATAL CONFIG FILE ERROR: bad directive"} {
		if !strings.Contains(fatal, want) {
			t.Errorf("Start failure: got %q, want it to contain %q", fatal, want)
		}
	}
}

// TestStartRetriesTakenPort fakes a first start that loses its port and
// checks that Start tries again and ends with a working server.
func TestStartRetriesTakenPort(t *testing.T) {
	real, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(notFoundMsg)
	}
	runs := filepath.Join(t.TempDir(), "runs")
	fakeRedis(t, fmt.Sprintf(`echo run >> '%[1]s'
if [ ! -e '%[1]s.first' ]; then
	: > '%[1]s.first'
	echo '# Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use'
	exit 1
fi
exec '%[2]s' "$@"
`, runs, real))

	s, fatal := startFake(t)
	if s == nil {
		t.Fatalf("Start: got failure %q, want a server", fatal)
	}
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatalf("read run log: %v", err)
	}
	if got := strings.Count(string(b), "run\n"); got != 2 {
		t.Fatalf("redis-server runs: got %d, want 2", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: got error %v, want nil", err)
	}
}

func TestTailBuffer(t *testing.T) {
	long := strings.Repeat("x", failureTailSize) + "\nlast line\n"
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{name: "empty", writes: nil, want: "; redis-server wrote no output"},
		{name: "short", writes: []string{"a\n", "b\n"}, want: "; redis-server output (tail):\na\nb"},
		{name: "cut at a line start", writes: []string{"first\n", long}, want: "; redis-server output (tail):\nlast line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b tailBuffer
			for _, w := range tt.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write: got (%d, %v), want (%d, nil)", n, err, len(w))
				}
			}
			if got := b.failureTail(); got != tt.want {
				t.Fatalf("failureTail: got %q, want %q", got, tt.want)
			}
		})
	}

	var b tailBuffer
	chunk := strings.Repeat("y", 1000)
	for range 2 * maxOutput / len(chunk) {
		b.Write([]byte(chunk))
	}
	b.Write([]byte("end"))
	got := b.String()
	if len(got) != maxOutput || !strings.HasSuffix(got, "end") {
		t.Fatalf("kept output: got %d bytes ending %q, want %d bytes ending \"end\"", len(got), got[len(got)-3:], maxOutput)
	}
}

func TestProcState(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    byte
		wantErr bool
	}{
		{name: "plain", stat: "123 (redis-server) S 1 123 123 0", want: 'S'},
		{name: "stopped", stat: "123 (redis-server) T 1 123 123 0", want: 'T'},
		{name: "name with parens and spaces", stat: "123 (a) b (c) R 1 2", want: 'R'},
		{name: "garbage", stat: "nothing here", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stat")
			if err := os.WriteFile(path, []byte(tt.stat), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := procState(path)
			if (err != nil) != tt.wantErr {
				t.Fatalf("procState(%q): got error %v, want error %v", tt.stat, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("procState(%q): got %q, want %q", tt.stat, got, tt.want)
			}
		})
	}
}

// TestWithPassword: a server started WithPassword refuses clients without
// the password (NOAUTH), still after Restart, while Client is let in.
func TestWithPassword(t *testing.T) {
	const password = "test-password-1f9c"
	s := Start(t, WithPassword(password))
	check := func(when string) {
		t.Helper()
		set(t, s.Client(), "k", "v")
		anon := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		defer anon.Close()
		if _, err := get(anon, "k", opTimeout); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
			t.Errorf("GET without the password %s: got %v, want a NOAUTH error", when, err)
		}
	}
	check("after Start")
	s.Restart()
	check("after Restart")
}
