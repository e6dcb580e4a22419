// Package redistest runs a real redis-server process for tests of the Redis
// tier.
//
// Start launches redis-server on a free loopback port with persistence
// turned off, waits until that very process answers, and stops it when the
// test ends. The Server can then be stopped and restarted on the same port
// (Redis going away and coming back) or paused with SIGSTOP (Redis hanging
// while its connections stay open), which are the failures the Redis tier
// must ride out.
//
// The process is started with Pdeathsig set to SIGKILL, so it dies with the
// test binary even when the test process is killed; the package is therefore
// Linux-only. redis-server must be on PATH; a missing binary fails the test
// (it never skips), with a message that says how to install it.
//
// WithPassword starts the server with requirepass, for tests of
// authentication failures; Client authenticates with that password.
//
// Every method reports failures through the testing.TB given to Start, so
// call them from the test's own goroutine, as with tb.Fatal.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bounds on the process lifecycle. They are generous: they only matter when
// something is broken, and then the test fails with the server's output.
const (
	readyTimeout    = 10 * time.Second       // start until the process answers
	probeTimeout    = 250 * time.Millisecond // one readiness probe
	probeInterval   = 20 * time.Millisecond  // pause between probes
	stopGrace       = 5 * time.Second        // SIGTERM until SIGKILL
	killWait        = 5 * time.Second        // SIGKILL until giving up
	pauseWait       = 2 * time.Second        // SIGSTOP until the process is stopped
	portAttempts    = 5                      // free ports tried by Start
	maxOutput       = 64 << 10               // bytes of output kept per process
	failureTailSize = 4 << 10                // bytes of output quoted in a failure
)

// notFoundMsg is the failure when redis-server is not installed.
const notFoundMsg = "redis-server not found on PATH: install Debian's redis-server " +
	"(apt-get install redis-server); `make test` installs it"

// errPortInUse reports that redis-server could not bind its port.
var errPortInUse = errors.New("port already in use")

// Server is a redis-server process owned by one test. Its methods are safe
// for concurrent use, but they report failures with tb.Fatal, so call them
// from the test goroutine.
type Server struct {
	tb       testing.TB
	bin      string
	dir      string
	addr     string
	password string // requirepass, "" for none
	client   *redis.Client

	mu      sync.Mutex
	proc    *process // nil while stopped
	paused  bool
	cleaned bool
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed once the process has exited
	err  error         // result of cmd.Wait, set before done is closed
}

// Option configures Start.
type Option func(*Server)

// WithPassword makes the server require password (requirepass) from every
// client, as it does again after Restart. Client authenticates with it.
func WithPassword(password string) Option {
	return func(s *Server) { s.password = password }
}

// Start starts redis-server on a free 127.0.0.1 port with no persistence,
// waits until it answers, and registers a cleanup that stops it and closes
// the Client. A missing redis-server binary fails the test.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatal(notFoundMsg)
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	for _, o := range opts {
		o(s)
	}

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("redistest: find a free port: %v", err)
		}
		p, err := s.launch(addr)
		if errors.Is(err, errPortInUse) && attempt < portAttempts {
			continue // another process took the port in the meantime
		}
		if err != nil {
			tb.Fatalf("redistest: start %s: %v", bin, err)
		}
		s.addr, s.proc = addr, p
		break
	}

	s.client = redis.NewClient(&redis.Options{
		Addr:                  s.addr,
		Password:              s.password,
		DialTimeout:           time.Second,
		DialerRetries:         1,
		ReadTimeout:           2 * time.Second,
		WriteTimeout:          2 * time.Second,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1, // a failure shows at once, as is
		PoolSize:              4,
		DisableIdentity:       true,
	})
	tb.Cleanup(s.cleanup)
	return s
}

// Addr returns the server's address, "127.0.0.1:PORT". It stays the same
// across Stop and Restart.
func (s *Server) Addr() string { return s.addr }

// Client returns a go-redis client connected to the server, for raw reads
// and writes in tests. It neither retries commands nor redials, honours context deadlines, and is
// closed when the test ends; do not close it yourself.
func (s *Server) Client() *redis.Client { return s.client }

// Stop stops the server: SIGTERM (and SIGCONT if it is paused), then SIGKILL
// if it has not exited within a few seconds. It returns once the process has
// exited. The address is kept for Restart. Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		s.tb.Fatalf("redistest: Stop: %v", err)
	}
}

// Restart starts the server again on the same address, stopping it first if
// it is running, and waits until it answers. The data is gone: the server
// keeps nothing on disk.
func (s *Server) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		s.tb.Fatalf("redistest: Restart: %v", err)
	}
	p, err := s.launch(s.addr)
	if err != nil {
		s.tb.Fatalf("redistest: Restart on %s: %v", s.addr, err)
	}
	s.proc = p
}

// Pause freezes the server with SIGSTOP and returns once the process is
// stopped. Connections stay open and the kernel still accepts new ones, but
// no command gets an answer until Resume. Pausing a paused server does
// nothing; pausing a stopped one fails the test.
func (s *Server) Pause() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.tb.Fatalf("redistest: Pause: server on %s is not running", s.addr)
	}
	if s.paused {
		return
	}
	if err := s.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.tb.Fatalf("redistest: Pause: send SIGSTOP: %v", err)
	}
	s.paused = true
	if err := waitStopped(s.proc, pauseWait); err != nil {
		s.tb.Fatalf("redistest: Pause: %v%s", err, s.proc.out.failureTail())
	}
}

// Resume continues a paused server with SIGCONT. Resuming a server that is
// not paused does nothing.
func (s *Server) Resume() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.resumeLocked(); err != nil {
		s.tb.Fatalf("redistest: Resume: %v", err)
	}
}

// cleanup resumes and stops the server and closes the client. It runs once,
// at the end of the test.
func (s *Server) cleanup() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cleaned {
		return
	}
	s.cleaned = true
	if err := s.resumeLocked(); err != nil {
		s.tb.Errorf("redistest: cleanup: %v", err)
	}
	if err := s.stopLocked(); err != nil {
		s.tb.Errorf("redistest: cleanup: %v", err)
	}
	if err := s.client.Close(); err != nil {
		s.tb.Errorf("redistest: cleanup: close client: %v", err)
	}
}

// resumeLocked sends SIGCONT if the server is paused. s.mu must be held.
func (s *Server) resumeLocked() error {
	if s.proc == nil || !s.paused {
		return nil
	}
	s.paused = false
	if err := s.proc.cmd.Process.Signal(syscall.SIGCONT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("send SIGCONT: %w", err)
	}
	return nil
}

// stopLocked stops the running process, if any. s.mu must be held.
func (s *Server) stopLocked() error {
	p := s.proc
	if p == nil {
		return nil
	}
	// The signal stays pending on a stopped process; SIGCONT lets it act.
	var errs []error
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("send SIGTERM: %w", err))
	}
	if err := s.resumeLocked(); err != nil {
		errs = append(errs, err)
	}
	if !p.waitExit(stopGrace) {
		_ = p.cmd.Process.Kill()
		if !p.waitExit(killWait) {
			return fmt.Errorf("redis-server on %s (pid %d) did not exit %v after SIGKILL%s",
				s.addr, p.cmd.Process.Pid, killWait, p.out.failureTail())
		}
	}
	s.proc = nil
	return errors.Join(errs...)
}

// launch starts redis-server on addr and waits until it answers. On failure
// the process is gone and the error quotes its output; an error wrapping
// errPortInUse means the port was taken.
func (s *Server) launch(addr string) (*process, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	out := &tailBuffer{}
	args := []string{
		"--bind", "127.0.0.1",
		"--port", port,
		"--protected-mode", "yes",
		"--daemonize", "no",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--logfile", "", // log to stdout, which out captures
	}
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL, // die with the test binary
		Setpgid:   true,            // keep terminal signals away from it
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	if err := p.waitReady(addr, s.password); err != nil {
		_ = cmd.Process.Kill()
		if !p.waitExit(killWait) {
			err = fmt.Errorf("%w; and the process did not exit after SIGKILL", err)
		}
		if strings.Contains(out.String(), "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return nil, fmt.Errorf("%w%s", err, out.failureTail())
	}
	return p, nil
}

// waitReady polls addr until this process (not some other server that
// took the port) answers, the process exits, or readyTimeout passes.
// password, when set, authenticates each probe.
func (p *process) waitReady(addr, password string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("redis-server on %s exited before answering (%v)", addr, p.err)
		default:
		}
		err := probe(addr, password, p.cmd.Process.Pid)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer within %v: %w", addr, readyTimeout, err)
		}
		select {
		case <-p.done:
		case <-time.After(probeInterval):
		}
	}
}

// waitExit reports whether the process exits within d.
func (p *process) waitExit(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// probe asks the server at addr for INFO server, after AUTH password when
// one is set, and checks that it answers as the process with the given
// pid.
func probe(addr, password string, pid int) error {
	conn, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(probeTimeout)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	if password != "" {
		// RESP array form, so that the password needs no quoting.
		cmd := fmt.Sprintf("*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password)
		if _, err := io.WriteString(conn, cmd); err != nil {
			return err
		}
		reply, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if reply != "+OK\r\n" {
			return fmt.Errorf("AUTH reply: got %q, want +OK", strings.TrimRight(reply, "\r\n"))
		}
	}
	if _, err := io.WriteString(conn, "INFO server\r\n"); err != nil {
		return err
	}
	header, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	header = strings.TrimRight(header, "\r\n")
	if !strings.HasPrefix(header, "$") {
		return fmt.Errorf("INFO reply: got %q, want a bulk string", header)
	}
	n, err := strconv.Atoi(header[1:])
	if err != nil || n < 0 {
		return fmt.Errorf("INFO reply: got header %q, want a length", header)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid) + "\r\n"
	if !bytes.Contains(body, []byte(want)) {
		return fmt.Errorf("the server on %s is not pid %d", addr, pid)
	}
	return nil
}

// waitStopped waits until the kernel reports the process as stopped, so
// that no command slips through right after Pause returns.
func waitStopped(p *process, d time.Duration) error {
	path := "/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat"
	deadline := time.Now().Add(d)
	for {
		state, err := procState(path)
		if err != nil {
			return err
		}
		if state == 'T' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process state: got %q %v after SIGSTOP, want 'T'", state, d)
		}
		select {
		case <-p.done:
			return fmt.Errorf("redis-server exited after SIGSTOP (%v)", p.err)
		case <-time.After(time.Millisecond):
		}
	}
}

// procState returns the state letter from a /proc/PID/stat file.
func procState(path string) (byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces; the state
	// follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	return b[i+2], nil
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

// Write implements io.Writer.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > maxOutput {
		t.b = append(t.b[:0], t.b[len(t.b)-maxOutput:]...)
	}
	return len(p), nil
}

// String returns everything kept.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// failureTail returns the end of the output, formatted to follow an error
// message.
func (t *tailBuffer) failureTail() string {
	s := t.String()
	if len(s) > failureTailSize {
		s = s[len(s)-failureTailSize:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "; redis-server wrote no output"
	}
	return "; redis-server output (tail):\n" + s
}
