package shared

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// Log messages of the outage reports.
const (
	msgStillOpen = "redis tier still unavailable"
)

// failureCounter is an OnFailure hook that counts failures by reason.
type failureCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *failureCounter) add(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[reason]++
}

func (c *failureCounter) get(reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[reason]
}

// runTier runs tier.Run until the test ends; the cleanup checks that Run
// returns. Unlike startRun it does not wait for the subscription, which
// a Redis refusing the tier never grants.
func runTier(t *testing.T, tier *Tier) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tier.Run(ctx, &recorder{}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: got error %v, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run: still running %v after its context ended, want it returned", waitTimeout)
		}
	})
}

// TestAuthFailureLoggedOnce: a replica started against a Redis that
// refuses its credentials (a wrong password, or none where one is
// required) logs exactly one warning that says authentication failed,
// at start-up and without traffic, however often Run's probes fail;
// Health and OnFailure report the reason; once the credentials work (the
// operator fixes Redis's password), one info line reports the recovery.
// No password appears in any log line.
func TestAuthFailureLoggedOnce(t *testing.T) {
	for _, tc := range []struct {
		name, tierPassword, code string
	}{
		{"wrong password", "tier-pw-" + randomToken(), "WRONGPASS"},
		{"no password", "", "NOAUTH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			right := "redis-pw-" + randomToken()
			srv := redistest.Start(t, redistest.WithPassword(right))
			logger, logs := newLogger()
			var failures failureCounter
			client := redis.NewClient(&redis.Options{
				Addr: srv.Addr(), Password: tc.tierPassword, MaxRetries: -1, ContextTimeoutEnabled: true,
			})
			tier, err := New(configured(Options{
				Client:          client,
				Keyring:         tokencache.RandomKeyring(),
				OpTimeout:       testOpTimeout,
				BreakerFailures: 3,
				BreakerCooldown: 50 * time.Millisecond,
				ProbeInterval:   10 * time.Millisecond,
				Logger:          logger,
				OnFailure:       failures.add,
			}))
			if err != nil {
				t.Fatalf("New: got error %v, want nil", err)
			}
			t.Cleanup(func() { _ = tier.Close() })
			runTier(t, tier)

			eventually(t, "the outage logged", func() bool { return logs.Count(slog.LevelWarn, msgOpen) > 0 })
			// Several probes fail after the first warning, each after a
			// cooldown: none of them logs again.
			eventually(t, "more failed probes", func() bool { return failures.get(ReasonAuth) >= 4 })
			if state, reason := tier.Health(); state == StateClosed || reason != ReasonAuth {
				t.Errorf("Health during the outage: got (%q, %q), want (open or half_open, %q)", state, reason, ReasonAuth)
			}
			for _, r := range Reasons {
				if r != ReasonAuth && failures.get(r) != 0 {
					t.Errorf("OnFailure(%q): got %d calls, want none (only %q)", r, failures.get(r), ReasonAuth)
				}
			}
			if got := logs.Count(slog.LevelWarn, "redis tier"); got != 1 {
				t.Fatalf("warnings during the outage: got %d, want 1\n%s", got, logs)
			}
			line := logs.String()
			for _, want := range []string{"authentication failed", "reason=" + ReasonAuth, "error=" + tc.code} {
				if !strings.Contains(line, want) {
					t.Errorf("outage warning: got %q, want it to contain %q", line, want)
				}
			}

			// The operator makes Redis accept the tier's credentials.
			if err := srv.Client().ConfigSet(ctx, "requirepass", tc.tierPassword).Err(); err != nil {
				t.Fatalf("CONFIG SET requirepass: %v", err)
			}
			eventually(t, "the recovery logged", func() bool { return logs.Count(slog.LevelInfo, msgClosed) > 0 })
			if state, reason := tier.Health(); state != StateClosed || reason != "" {
				t.Errorf("Health after the recovery: got (%q, %q), want (%q, \"\")", state, reason, StateClosed)
			}
			if got := logs.Count(slog.LevelWarn, "redis tier"); got != 1 {
				t.Errorf("warnings: got %d, want 1\n%s", got, logs)
			}
			if got := logs.Count(slog.LevelInfo, msgClosed); got != 1 {
				t.Errorf("recovery lines: got %d, want 1\n%s", got, logs)
			}
			if !strings.Contains(logs.String(), "down_for=") {
				t.Errorf("recovery line: got %q, want the outage's length (down_for)", logs)
			}
			for _, pw := range []string{right, tc.tierPassword} {
				if pw != "" && strings.Contains(logs.String(), pw) {
					t.Errorf("logs: got a password, want none\n%s", logs)
				}
			}
		})
	}
}

// TestOutageReasonChange: an outage whose reason changes (Redis stops,
// then comes back requiring a password the tier lacks) is reported once
// per reason: connection refused, then authentication failed, then the
// recovery.
func TestOutageReasonChange(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	logger, logs := newLogger()
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{
		BreakerFailures: 3,
		BreakerCooldown: 50 * time.Millisecond,
		ProbeInterval:   10 * time.Millisecond,
		Logger:          logger,
	})
	runTier(t, tier)
	eventually(t, "a probe answered", func() bool {
		tier.hmu.Lock()
		defer tier.hmu.Unlock()
		return tier.answered
	})

	srv.Stop()
	eventually(t, "the outage logged", func() bool { return logs.Count(slog.LevelWarn, msgOpen) > 0 })
	if !strings.Contains(logs.String(), "reason="+ReasonRefused) {
		t.Errorf("outage warning: got %q, want reason=%s", logs, ReasonRefused)
	}

	srv.Restart()
	pw := "later-pw-" + randomToken()
	raw := srv.Client()
	if err := raw.ConfigSet(ctx, "requirepass", pw).Err(); err != nil {
		t.Fatalf("CONFIG SET requirepass: %v", err)
	}
	eventually(t, "the new reason logged", func() bool { return logs.Count(slog.LevelWarn, msgStillOpen) > 0 })
	if _, reason := tier.Health(); reason != ReasonAuth {
		t.Errorf("Health reason: got %q, want %q", reason, ReasonAuth)
	}
	// raw is authenticated already: its connection may lift the password.
	if err := raw.ConfigSet(ctx, "requirepass", "").Err(); err != nil {
		t.Fatalf("CONFIG SET requirepass: %v", err)
	}
	eventually(t, "the recovery logged", func() bool { return logs.Count(slog.LevelInfo, msgClosed) > 0 })
	if got := logs.Count(slog.LevelWarn, "redis tier"); got != 2 {
		t.Errorf("warnings: got %d, want 2 (refused, then auth failed)\n%s", got, logs)
	}
	if strings.Contains(logs.String(), pw) {
		t.Errorf("logs: got the password, want none")
	}
}

// TestClassify: every failure maps to one reason, and its detail never
// quotes more of an error reply than its code.
// replyError is an error reply as go-redis returns it (redis.Error), for
// wordings the test's redis-server does not produce.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestClassify(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testCtx(t)
	const arg = "s3cret-argument"
	unknown := srv.Client().Do(ctx, "NOSUCHCOMMAND", arg).Err()
	if unknown == nil || !strings.Contains(unknown.Error(), arg) {
		t.Fatalf("unknown command: got %v, want a reply that quotes its argument", unknown)
	}
	// Redis 6+ answers a password sent to a server without one with an
	// ERR reply, not WRONGPASS.
	nopassword := srv.Client().Do(ctx, "AUTH", arg).Err()
	if err := srv.Client().ConfigSet(ctx, "requirepass", "pw-"+randomToken()).Err(); err != nil {
		t.Fatal(err)
	}
	ping := func(o *redis.Options) error {
		c := redis.NewClient(o)
		defer c.Close()
		return c.Ping(ctx).Err()
	}
	noauth := ping(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	wrongpass := ping(&redis.Options{Addr: srv.Addr(), Password: "nope", MaxRetries: -1})

	for _, tc := range []struct {
		name   string
		err    error
		reason string
		detail string // "" for any
	}{
		{"WRONGPASS", wrongpass, ReasonAuth, "WRONGPASS"},
		{"NOAUTH", noauth, ReasonAuth, "NOAUTH"},
		{"AUTH without a password configured", nopassword, ReasonAuth, "ERR"},
		// Redis < 6 has no WRONGPASS code; its replies may quote the password.
		{"redis 5 invalid password", replyError("ERR invalid password " + arg), ReasonAuth, "ERR"},
		{"redis 5 no password set", replyError("ERR Client sent AUTH, but no password is set " + arg), ReasonAuth, "ERR"},
		{"redis 6 AUTH without password", replyError("ERR AUTH " + arg + " called without any password configured for the default user. Are you sure your configuration is correct?"), ReasonAuth, "ERR"},
		{"error reply", unknown, ReasonError, "ERR"},
		{"dial error", &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "x"}}, ReasonUnreachable, ""},
		{"refused errno", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, ReasonRefused, ""},
		{"deadline", context.DeadlineExceeded, ReasonTimeout, ""},
		{"pool timeout", redis.ErrPoolTimeout, ReasonTimeout, ""},
		{"dns", &net.DNSError{Err: "no such host", Name: "redis.invalid"}, ReasonUnreachable, ""},
		{"eof", io.EOF, ReasonUnreachable, ""},
		{"reset", syscall.ECONNRESET, ReasonUnreachable, ""},
		{"tls record", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ReasonTLS, ""},
		{"other", errors.New("something else"), ReasonError, "something else"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("no error to classify")
			}
			reason, detail := classify(tc.err)
			if reason != tc.reason {
				t.Errorf("classify(%v): got reason %q, want %q", tc.err, reason, tc.reason)
			}
			if tc.detail != "" && detail != tc.detail {
				t.Errorf("classify(%v): got detail %q, want %q", tc.err, detail, tc.detail)
			}
			if strings.Contains(detail, arg) {
				t.Errorf("classify(%v): detail %q quotes the command's argument", tc.err, detail)
			}
		})
	}
}
