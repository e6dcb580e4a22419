package shared

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// Bounds of the tests. They only matter when something is broken.
const (
	waitTimeout   = 10 * time.Second      // any wait that should end
	testOpTimeout = 2 * time.Second       // Redis operations of tiers that should not fail
	testPoll      = 20 * time.Millisecond // PollInterval of tiers that poll
	tokenLife     = 10 * time.Minute      // lifetime of test tokens
	pollStep      = 5 * time.Millisecond  // between looks in eventually
)

// noRedis is an address nothing listens on, for tiers that never talk to
// Redis (New and handle tests): a client does not dial until used.
const noRedis = "127.0.0.1:1"

// testCtx returns a context that ends after waitTimeout or with the test.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds, failing the test after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: got false after %v, want true", what, waitTimeout)
		}
		<-time.After(pollStep)
	}
}

// configured returns opt with each zero field that has a configuration
// key (shared.redis.*) set to config.Default()'s value: the tests take the
// defaults from the configuration, their one home.
func configured(opt Options) Options {
	d := config.Default().Shared.Redis
	if opt.Prefix == "" {
		opt.Prefix = d.KeyPrefix
	}
	if opt.OpTimeout == 0 {
		opt.OpTimeout = time.Duration(d.OpTimeout)
	}
	if opt.LockTTL == 0 {
		opt.LockTTL = time.Duration(d.LockTTL)
	}
	if opt.PollInterval == 0 {
		opt.PollInterval = time.Duration(d.PollInterval)
	}
	if opt.BreakerFailures == 0 {
		opt.BreakerFailures = uint32(d.BreakerFailures)
	}
	if opt.BreakerCooldown == 0 {
		opt.BreakerCooldown = time.Duration(d.BreakerCooldown)
	}
	return opt
}

// newTestTier returns a tier over a fresh client for addr, closed when the
// test ends. Zero OpTimeout and PollInterval get the test values, the
// other zero fields the configuration's defaults (configured).
func newTestTier(t *testing.T, addr string, kr *tokencache.Keyring, opt Options) *Tier {
	t.Helper()
	opt.Client = redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	opt.Keyring = kr
	if opt.OpTimeout == 0 {
		opt.OpTimeout = testOpTimeout
	}
	if opt.PollInterval == 0 {
		opt.PollInterval = testPoll
	}
	tier, err := New(configured(opt))
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	t.Cleanup(func() { _ = tier.Close() })
	return tier
}

// numSub returns the number of subscribers of channel.
func numSub(t *testing.T, raw *redis.Client, channel string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	m, err := raw.PubSubNumSub(ctx, channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: got error %v, want nil", err)
	}
	return m[channel]
}

// startRun runs tier.Run with recv until the test ends, and returns once
// Redis counts its subscription. The cleanup checks that Run returns.
func startRun(t *testing.T, raw *redis.Client, tier *Tier, recv Receiver) {
	t.Helper()
	before := numSub(t, raw, tier.channel)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tier.Run(ctx, recv) }()
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
	eventually(t, "Run subscribed", func() bool { return numSub(t, raw, tier.channel) > before })
}

// recorder is a Receiver that records what it is told. Invalidations whose
// selector starts with barrierPrefix are kept apart.
type recorder struct {
	mu            sync.Mutex
	adopted       []adoption
	invalidations []string
	barriers      []string
}

type adoption struct {
	key string
	rec *tokencache.Record
}

// Adopt implements Receiver.
func (r *recorder) Adopt(key string, rec *tokencache.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.adopted = append(r.adopted, adoption{key, rec})
}

// ApplyInvalidation implements Receiver.
func (r *recorder) ApplyInvalidation(selector []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := string(selector); strings.HasPrefix(s, barrierPrefix) {
		r.barriers = append(r.barriers, s)
	} else {
		r.invalidations = append(r.invalidations, s)
	}
}

func (r *recorder) adoptions() []adoption {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.adopted)
}

func (r *recorder) invalidated() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.invalidations)
}

func (r *recorder) hasBarrier(b string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.barriers, b)
}

const barrierPrefix = "barrier-"

var barrierSeq atomic.Int64

// barrier publishes an invalidation from sender, a tier that runs no
// receiver, and waits until every recv has it. Redis delivers a channel's
// messages in order, so whatever was published before has been handled by
// then: this is how a test shows a message was dropped without sleeping.
func barrier(t *testing.T, sender *Tier, recvs ...*recorder) {
	t.Helper()
	sel := fmt.Sprintf("%s%d", barrierPrefix, barrierSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// Generation 0 leaves the receivers' last seen generation alone.
	if err := sender.rdb.Publish(ctx, sender.channel, sender.message('I', 0, []byte(sel))).Err(); err != nil {
		t.Fatalf("PUBLISH barrier: got error %v, want nil", err)
	}
	for i, r := range recvs {
		eventually(t, fmt.Sprintf("receiver %d got %s", i, sel), func() bool { return r.hasBarrier(sel) })
	}
}

// newLogger returns a logger writing text lines to a buffer.
func newLogger() (*slog.Logger, *testkit.LogBuffer) {
	buf := &testkit.LogBuffer{}
	return testkit.TextLogger(buf), buf
}

// Log messages the tests look for.
const (
	msgOpen    = "redis tier unavailable"
	msgClosed  = "redis tier available again"
	msgDropped = "dropped an announcement"
)

// randomToken returns a token text that appears nowhere by chance.
func randomToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "at-" + hex.EncodeToString(b)
}

// newRecord returns a token record issued now that lives life.
func newRecord(token string, life time.Duration) *tokencache.Record {
	now := time.Now()
	return &tokencache.Record{
		AccessToken: secret.String(token),
		TokenType:   "Bearer",
		Scopes:      []string{"api/read", "api/write"},
		IssuedAt:    now,
		ExpiresAt:   now.Add(life),
		RefreshAt:   now.Add(life * 3 / 4),
	}
}

// sameRecord reports whether a and b hold the same token and timing.
func sameRecord(a, b *tokencache.Record) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.AccessToken.Reveal() == b.AccessToken.Reveal() && a.TokenType == b.TokenType &&
		slices.Equal(a.Scopes, b.Scopes) && a.IssuedAt.Equal(b.IssuedAt) &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.RefreshAt.Equal(b.RefreshAt)
}

// describe names a record's token in a failure message. Test tokens are
// not secret.
func describe(r *tokencache.Record) string {
	if r == nil {
		return "<nil>"
	}
	return fmt.Sprintf("token %q expiring %s", r.AccessToken.Reveal(), r.ExpiresAt.Format(time.RFC3339Nano))
}

// fetcher is an upstream stub: each call returns a new record whose token
// is prefix-N, unless err is set.
type fetcher struct {
	prefix string
	life   time.Duration
	err    error
	calls  atomic.Int64
	// during, if set, runs inside each call before it returns.
	during func(ctx context.Context)
}

func newFetcher() *fetcher { return &fetcher{prefix: randomToken(), life: tokenLife} }

func (f *fetcher) fetch(ctx context.Context) (*tokencache.Record, error) {
	n := f.calls.Add(1)
	if f.during != nil {
		f.during(ctx)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.err != nil {
		return nil, f.err
	}
	return newRecord(fmt.Sprintf("%s-%d", f.prefix, n), f.life), nil
}

// always accepts any record; never accepts none.
func always(*tokencache.Record) bool { return true }
func never(*tokencache.Record) bool  { return false }

// waiting returns the number of Obtain calls of tier waiting for key.
func waiting(tier *Tier, key string) int {
	tier.mu.Lock()
	defer tier.mu.Unlock()
	return len(tier.waiters[key])
}

// tokenMessage returns a token announcement from sender at generation gen
// of rec sealed at generation sealGen.
func tokenMessage(sender *Tier, key string, gen, sealGen uint64, rec *tokencache.Record) []byte {
	return sender.message('T', gen, appendKey(nil, key), sender.seal(key, sealGen, rec))
}

func TestNew(t *testing.T) {
	kr := tokencache.RandomKeyring()
	client := func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: noRedis}) }

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			name    string
			opt     Options
			wantErr string
		}{
			{name: "no client", opt: Options{Keyring: kr}, wantErr: "no Redis client"},
			{name: "no keyring", opt: Options{Client: client()}, wantErr: "no sealing keyring"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if tt.opt.Client != nil {
					defer tt.opt.Client.Close()
				}
				tier, err := New(tt.opt)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: got error %v, want an error containing %q", err, tt.wantErr)
				}
				if tier != nil {
					t.Fatalf("New: got a tier with error %v, want no tier", err)
				}
			})
		}
	})

	t.Run("defaults", func(t *testing.T) {
		tier, err := New(configured(Options{Client: client(), Keyring: kr}))
		if err != nil {
			t.Fatalf("New: got error %v, want nil", err)
		}
		defer tier.Close()
		o := tier.opt
		if o.ProbeInterval != DefaultProbeInterval || o.SavingsTTL != DefaultSavingsTTL {
			t.Errorf("ProbeInterval, SavingsTTL: got %v, %v, want %v, %v", o.ProbeInterval, o.SavingsTTL, DefaultProbeInterval, DefaultSavingsTTL)
		}
		if o.Logger == nil {
			t.Errorf("Logger: got nil, want a discarding logger")
		}
		if tier.channel != "{tokenbroker}:events" || tier.genKey != "{tokenbroker}:gen" {
			t.Errorf("names: got channel %q, generation %q, want {tokenbroker}:events, {tokenbroker}:gen", tier.channel, tier.genKey)
		}
		if got, want := tier.tokenKey("k"), "{tokenbroker}:t:6b"; got != want {
			t.Errorf("tokenKey: got %q, want %q", got, want)
		}
		if got, want := tier.lockKey("k"), "{tokenbroker}:l:6b"; got != want {
			t.Errorf("lockKey: got %q, want %q", got, want)
		}
		if st := tier.Stats(); st != (Stats{State: StateClosed}) {
			t.Errorf("Stats: got %+v, want all zero and closed", st)
		}
	})

	t.Run("given values kept", func(t *testing.T) {
		logger := slog.New(slog.DiscardHandler)
		in := Options{
			Client: client(), Keyring: kr, Prefix: "fleet-a", OpTimeout: time.Second, LockTTL: time.Minute,
			PollInterval: time.Second, BreakerFailures: 7, BreakerCooldown: time.Hour, Logger: logger,
			OnStateChange: func(string) {},
		}
		tier, err := New(in)
		if err != nil {
			t.Fatalf("New: got error %v, want nil", err)
		}
		defer tier.Close()
		got := tier.opt
		if got.OnStateChange == nil {
			t.Errorf("OnStateChange: got nil, want the given function")
		}
		if got.Client != in.Client || got.Keyring != in.Keyring || got.Prefix != in.Prefix ||
			got.OpTimeout != in.OpTimeout || got.LockTTL != in.LockTTL || got.PollInterval != in.PollInterval ||
			got.BreakerFailures != in.BreakerFailures || got.BreakerCooldown != in.BreakerCooldown || got.Logger != in.Logger {
			t.Errorf("options: got %+v, want %+v", got, in)
		}
		if tier.channel != "{fleet-a}:events" || !strings.HasPrefix(tier.tokenKey("k"), "{fleet-a}:") {
			t.Errorf("names: got channel %q, token key %q, want them in {fleet-a}", tier.channel, tier.tokenKey("k"))
		}
	})

	t.Run("replica ids differ", func(t *testing.T) {
		a := newTestTier(t, noRedis, kr, Options{})
		b := newTestTier(t, noRedis, kr, Options{})
		if a.self == b.self {
			t.Fatalf("replica ids: got %x twice, want two different ones", a.self)
		}
	})
}

// TestNewRefusesZeroValues: the defaults live in the configuration only,
// so a setting left zero (or otherwise invalid) is an error naming the
// field, the rule and the configuration key, not a silent default.
func TestNewRefusesZeroValues(t *testing.T) {
	kr := tokencache.RandomKeyring()
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"Prefix", func(o *Options) { o.Prefix = "" }, `shared: Options.Prefix is "", want a non-empty prefix without braces or white space (configuration shared.redis.key_prefix)`},
		{"Prefix braces", func(o *Options) { o.Prefix = "{a}" }, `Options.Prefix is "{a}"`},
		{"OpTimeout", func(o *Options) { o.OpTimeout = 0 }, "shared: Options.OpTimeout is 0s, want more than 0 (configuration shared.redis.op_timeout)"},
		{"LockTTL", func(o *Options) { o.LockTTL = 0 }, "shared: Options.LockTTL is 0s, want at least 1ms (configuration shared.redis.lock_ttl)"},
		{"PollInterval", func(o *Options) { o.PollInterval = 0 }, "shared: Options.PollInterval is 0s, want more than 0 (configuration shared.redis.poll_interval)"},
		{"BreakerFailures", func(o *Options) { o.BreakerFailures = 0 }, "shared: Options.BreakerFailures is 0, want at least 1 (configuration shared.redis.breaker_failures)"},
		{"BreakerCooldown", func(o *Options) { o.BreakerCooldown = 0 }, "shared: Options.BreakerCooldown is 0s, want more than 0 (configuration shared.redis.breaker_cooldown)"},
		{"BreakerCooldown negative", func(o *Options) { o.BreakerCooldown = -time.Second }, "Options.BreakerCooldown is -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := redis.NewClient(&redis.Options{Addr: noRedis})
			defer client.Close()
			opt := configured(Options{Client: client, Keyring: kr})
			tt.edit(&opt)
			tier, err := New(opt)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: got error %v, want an error containing %q", err, tt.wantErr)
			}
			if tier != nil {
				t.Fatalf("New: got a tier with error %v, want no tier", err)
			}
		})
	}
}

// TestObtainFilesAndShares: a miss fetches once, files the token sealed and
// announces it; another replica then gets it from Redis without fetching.
func TestObtainFilesAndShares(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	const key = "key-shared"

	ps := raw.Subscribe(ctx, a.channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE: got error %v, want nil", err)
	}

	fa := newFetcher()
	rec, err := a.Obtain(ctx, key, always, fa.fetch)
	if err != nil {
		t.Fatalf("Obtain on an empty Redis: got error %v, want nil", err)
	}
	if got := fa.calls.Load(); got != 1 {
		t.Fatalf("fetch calls: got %d, want 1", got)
	}
	if st := a.Stats(); st.Fetches != 1 || st.Hits != 0 || st.Waits != 0 || st.Fallbacks != 0 || st.Errors != 0 {
		t.Errorf("Stats of the fetching replica: got %+v, want 1 fetch and nothing else", st)
	}
	token := rec.AccessToken.Reveal()

	v, err := raw.Get(ctx, a.tokenKey(key)).Bytes()
	if err != nil {
		t.Fatalf("GET filed token: got error %v, want a value", err)
	}
	if bytes.Contains(v, []byte(token)) {
		t.Errorf("filed value: got the token text in clear, want it sealed")
	}
	if ttl, err := raw.PTTL(ctx, a.tokenKey(key)).Result(); err != nil || ttl <= 0 || ttl > tokenLife {
		t.Errorf("PTTL of the filed token: got (%v, %v), want within (0, %v]", ttl, err, tokenLife)
	}
	if n, err := raw.Exists(ctx, a.lockKey(key)).Result(); err != nil || n != 0 {
		t.Errorf("lock after the fetch: got (%d, %v) keys, want (0, nil): released", n, err)
	}

	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("announcement: got error %v, want a message", err)
	}
	payload := []byte(msg.Payload)
	if len(payload) == 0 || payload[0] != 'T' {
		t.Fatalf("announcement kind: got %q, want a token announcement 'T'", payload[:min(1, len(payload))])
	}
	if bytes.Contains(payload, []byte(token)) {
		t.Errorf("announcement: got the token text in clear, want it sealed")
	}
	var recv recorder
	if err := b.handle(payload, &recv); err != nil {
		t.Fatalf("handle of the announcement by another replica: got error %v, want nil", err)
	}
	if got := recv.adoptions(); len(got) != 1 || got[0].key != key || !sameRecord(got[0].rec, rec) {
		t.Fatalf("adopted: got %d records, want 1 for %q with %s", len(got), key, describe(rec))
	}

	fb := newFetcher()
	got, err := b.Obtain(ctx, key, always, fb.fetch)
	if err != nil {
		t.Fatalf("Obtain on the second replica: got error %v, want nil", err)
	}
	if !sameRecord(got, rec) {
		t.Errorf("second replica's record: got %s, want %s", describe(got), describe(rec))
	}
	if n := fb.calls.Load(); n != 0 {
		t.Errorf("second replica's fetch calls: got %d, want 0", n)
	}
	if st := b.Stats(); st.Hits != 1 || st.Fetches != 0 {
		t.Errorf("Stats of the second replica: got %+v, want 1 hit, 0 fetches", st)
	}
}

// TestObtainNotFresh: a filed token the caller does not accept is replaced
// by a fetch made under the fleet lock.
func TestObtainNotFresh(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	const key = "key-stale"

	first, err := a.Obtain(ctx, key, always, newFetcher().fetch)
	if err != nil {
		t.Fatalf("first Obtain: got error %v, want nil", err)
	}

	fb := newFetcher()
	var lockOwner string
	var lockErr error
	fb.during = func(ctx context.Context) { lockOwner, lockErr = raw.Get(ctx, b.lockKey(key)).Result() }
	second, err := b.Obtain(ctx, key, never, fb.fetch)
	if err != nil {
		t.Fatalf("Obtain with fresh=false: got error %v, want nil", err)
	}
	if n := fb.calls.Load(); n != 1 {
		t.Fatalf("fetch calls: got %d, want 1", n)
	}
	if lockErr != nil || lockOwner == "" {
		t.Errorf("lock during the fetch: got (%q, %v), want held", lockOwner, lockErr)
	}
	if sameRecord(second, first) {
		t.Errorf("record: got the filed %s again, want a new one", describe(second))
	}
	if st := b.Stats(); st.Fetches != 1 || st.Hits != 0 {
		t.Errorf("Stats: got %+v, want 1 fetch, 0 hits", st)
	}

	third, err := a.Obtain(ctx, key, always, newFetcher().fetch)
	if err != nil {
		t.Fatalf("Obtain after the refetch: got error %v, want nil", err)
	}
	if !sameRecord(third, second) {
		t.Errorf("filed record after the refetch: got %s, want %s", describe(third), describe(second))
	}
}

// TestObtainFetchOutcomes: what a fetch returns decides what is filed, and
// the lock is released in every case.
func TestObtainFetchOutcomes(t *testing.T) {
	errUpstream := errors.New("upstream says no")
	tests := []struct {
		name      string
		life      time.Duration
		err       error
		wantErr   error
		wantFiled bool
	}{
		{name: "token", life: tokenLife, wantFiled: true},
		{name: "fetch error", life: tokenLife, err: errUpstream, wantErr: errUpstream},
		{name: "already expired token", life: -time.Second},
	}
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			tier := newTestTier(t, srv.Addr(), kr, Options{})
			key := "key-" + tt.name
			f := newFetcher()
			f.life, f.err = tt.life, tt.err
			rec, err := tier.Obtain(ctx, key, always, f.fetch)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Obtain: got error %v, want %v", err, tt.wantErr)
			}
			if (rec != nil) != (tt.wantErr == nil) {
				t.Errorf("Obtain: got record %s with error %v, want a record exactly when no error", describe(rec), err)
			}
			n, err := raw.Exists(ctx, tier.tokenKey(key)).Result()
			if err != nil || (n == 1) != tt.wantFiled {
				t.Errorf("filed token: got (%d, %v), want filed %v", n, err, tt.wantFiled)
			}
			if n, err := raw.Exists(ctx, tier.lockKey(key)).Result(); err != nil || n != 0 {
				t.Errorf("lock: got (%d, %v) keys, want (0, nil): released", n, err)
			}
			if st := tier.Stats(); st.Fetches != 1 || st.Fallbacks != 0 || st.Errors != 0 {
				t.Errorf("Stats: got %+v, want 1 fetch, no fallback, no error", st)
			}
		})
	}
}

// TestObtainConcurrent: 150 callers on three replicas make one fetch, and
// all get its token; the waiters are woken by pub/sub or, without it, by
// polling.
func TestObtainConcurrent(t *testing.T) {
	const (
		replicas   = 3
		perReplica = 50
		total      = replicas * perReplica
	)
	tests := []struct {
		name string
		run  bool
		// poll is the PollInterval. With pub/sub it is longer than the
		// test may take, so only a notification can wake the waiters.
		poll time.Duration
	}{
		{name: "woken by pub/sub", run: true, poll: time.Hour},
		{name: "poll fallback", run: false, poll: 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := redistest.Start(t)
			kr := tokencache.RandomKeyring()
			const key = "key-hot"
			tiers := make([]*Tier, replicas)
			for i := range tiers {
				// A long OpTimeout: a slow pool under -race must not turn
				// into a fallback fetch.
				tiers[i] = newTestTier(t, srv.Addr(), kr, Options{OpTimeout: 5 * time.Second, PollInterval: tt.poll})
				if tt.run {
					startRun(t, srv.Client(), tiers[i], &recorder{})
				}
			}

			want := newRecord(randomToken(), tokenLife)
			var calls atomic.Int64
			started, release := make(chan struct{}), make(chan struct{})
			fetch := func(ctx context.Context) (*tokencache.Record, error) {
				if calls.Add(1) == 1 {
					close(started)
				}
				select {
				case <-release:
					return want, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}

			type result struct {
				rec *tokencache.Record
				err error
			}
			results := make(chan result, total)
			for i := range total {
				tier := tiers[i%replicas]
				go func() {
					rec, err := tier.Obtain(ctx, key, always, fetch)
					results <- result{rec, err}
				}()
			}

			select {
			case <-started:
			case <-time.After(waitTimeout):
				t.Fatalf("fetch: not called within %v, want one call", waitTimeout)
			}
			if tt.run {
				// Every other caller is registered for a notification, so
				// none can miss it.
				eventually(t, "all other callers waiting", func() bool {
					n := 0
					for _, tier := range tiers {
						n += waiting(tier, key)
					}
					return n == total-1
				})
			} else {
				eventually(t, "all other callers waited", func() bool {
					var n int64
					for _, tier := range tiers {
						n += tier.Stats().Waits
					}
					return n == total-1
				})
			}
			close(release)

			for i := range total {
				select {
				case r := <-results:
					if r.err != nil {
						t.Errorf("Obtain: got error %v, want nil", r.err)
					} else if !sameRecord(r.rec, want) {
						t.Errorf("Obtain: got %s, want %s", describe(r.rec), describe(want))
					}
				case <-time.After(waitTimeout):
					t.Fatalf("Obtain: %d of %d callers not done %v after the fetch ended, want all done", total-i, total, waitTimeout)
				}
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("fetch calls: got %d, want 1", n)
			}
			var sum Stats
			for _, tier := range tiers {
				st := tier.Stats()
				sum.Fetches += st.Fetches
				sum.Hits += st.Hits
				sum.Waits += st.Waits
				sum.Fallbacks += st.Fallbacks
				sum.Errors += st.Errors
			}
			if sum.Fetches != 1 || sum.Hits != total-1 || sum.Waits != total-1 || sum.Fallbacks != 0 || sum.Errors != 0 {
				t.Errorf("summed Stats: got fetches %d, hits %d, waits %d, fallbacks %d, errors %d; want 1, %d, %d, 0, 0",
					sum.Fetches, sum.Hits, sum.Waits, sum.Fallbacks, sum.Errors, total-1, total-1)
			}
		})
	}
}

// TestUnlockOnlyByOwner: the unlock script leaves another owner's lock.
func TestUnlockOnlyByOwner(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{})
	const key = "key-locked"
	lk := tier.lockKey(key)

	if err := raw.Set(ctx, lk, "foreign", time.Minute).Err(); err != nil {
		t.Fatalf("SET lock: got error %v, want nil", err)
	}
	tier.unlock(ctx, key, "mine")
	if got, err := raw.Get(ctx, lk).Result(); err != nil || got != "foreign" {
		t.Fatalf("lock after unlock by another owner: got (%q, %v), want (\"foreign\", nil)", got, err)
	}
	tier.unlock(ctx, key, "foreign")
	if n, err := raw.Exists(ctx, lk).Result(); err != nil || n != 0 {
		t.Fatalf("lock after unlock by its owner: got (%d, %v) keys, want (0, nil)", n, err)
	}
	if st := tier.Stats(); st.Errors != 0 {
		t.Errorf("Errors: got %d, want 0", st.Errors)
	}
}

// TestObtainWaitsForForeignLock: a lock held by another replica makes
// Obtain wait; when it expires (its holder died), Obtain takes over.
func TestObtainWaitsForForeignLock(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client()
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{})

	t.Run("expires", func(t *testing.T) {
		ctx := testCtx(t)
		const key = "key-orphan"
		lk := tier.lockKey(key)
		if err := raw.Set(ctx, lk, "foreign", 300*time.Millisecond).Err(); err != nil {
			t.Fatalf("SET lock: got error %v, want nil", err)
		}
		f := newFetcher()
		var during string
		f.during = func(ctx context.Context) { during, _ = raw.Get(ctx, lk).Result() }
		rec, err := tier.Obtain(ctx, key, always, f.fetch)
		if err != nil || rec == nil {
			t.Fatalf("Obtain: got (%s, %v), want a record", describe(rec), err)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("fetch calls: got %d, want 1", n)
		}
		if during == "" || during == "foreign" {
			t.Errorf("lock during the fetch: got %q, want held by this replica", during)
		}
		if st := tier.Stats(); st.Waits != 1 || st.Fetches != 1 {
			t.Errorf("Stats: got %+v, want 1 wait, 1 fetch", st)
		}
	})

	t.Run("outlives the caller", func(t *testing.T) {
		ctx := testCtx(t)
		const key = "key-held"
		if err := raw.Set(ctx, tier.lockKey(key), "foreign", time.Minute).Err(); err != nil {
			t.Fatalf("SET lock: got error %v, want nil", err)
		}
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		f := newFetcher()
		rec, err := tier.Obtain(short, key, always, f.fetch)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Obtain: got (%s, %v), want context.DeadlineExceeded", describe(rec), err)
		}
		if n := f.calls.Load(); n != 0 {
			t.Errorf("fetch calls: got %d, want 0", n)
		}
		if got, err := raw.Get(ctx, tier.lockKey(key)).Result(); err != nil || got != "foreign" {
			t.Errorf("lock: got (%q, %v), want (\"foreign\", nil)", got, err)
		}
	})
}

// TestInvalidated: an invalidation retires every filed token and reaches
// the other replicas, not the sender.
func TestInvalidated(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	c := newTestTier(t, srv.Addr(), kr, Options{}) // sends barriers
	var recvA, recvB recorder
	startRun(t, raw, a, &recvA)
	startRun(t, raw, b, &recvB)
	const key = "key-revoked"

	f := newFetcher()
	first, err := a.Obtain(ctx, key, always, f.fetch)
	if err != nil {
		t.Fatalf("Obtain: got error %v, want nil", err)
	}

	selector := []byte{0, 1, 2, 'k', 'e', 'y', 0xff}
	if err := a.Invalidated(ctx, selector); err != nil {
		t.Fatalf("Invalidated: got error %v, want nil", err)
	}
	if got, err := raw.Get(ctx, a.genKey).Result(); err != nil || got != "1" {
		t.Errorf("fleet generation: got (%q, %v), want (\"1\", nil)", got, err)
	}
	barrier(t, c, &recvA, &recvB)
	if got := recvB.invalidated(); !slices.Equal(got, []string{string(selector)}) {
		t.Errorf("other replica's invalidations: got %q, want [%q]", got, selector)
	}
	if got := recvA.invalidated(); len(got) != 0 {
		t.Errorf("sender's own invalidations: got %q, want none", got)
	}
	if got := a.lastGen.Load(); got != 1 {
		t.Errorf("sender's last generation: got %d, want 1", got)
	}
	if got := b.lastGen.Load(); got != 1 {
		t.Errorf("receiver's last generation: got %d, want 1", got)
	}

	for _, tier := range []*Tier{b, a} {
		before := f.calls.Load()
		rec, err := tier.Obtain(ctx, key, always, f.fetch)
		if err != nil {
			t.Fatalf("Obtain after the invalidation: got error %v, want nil", err)
		}
		if sameRecord(rec, first) {
			t.Fatalf("Obtain after the invalidation: got the invalidated %s, want a new token", describe(rec))
		}
		if tier == b && f.calls.Load() != before+1 {
			t.Errorf("fetch calls after the invalidation: got %d, want %d", f.calls.Load(), before+1)
		}
		if tier == a && f.calls.Load() != before {
			t.Errorf("fetch calls for the token filed after the invalidation: got %d, want %d", f.calls.Load(), before)
		}
	}
}

// TestInvalidatedRedisDown: an invalidation that cannot reach the fleet is
// an error, and it says nothing about the selector.
func TestInvalidatedRedisDown(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{OpTimeout: 200 * time.Millisecond})
	srv.Stop()
	err := tier.Invalidated(ctx, []byte("selector-text"))
	if err == nil || !strings.HasPrefix(err.Error(), "redis tier: ") {
		t.Fatalf("Invalidated: got %v, want an error starting \"redis tier: \"", err)
	}
	if strings.Contains(err.Error(), "selector-text") {
		t.Errorf("Invalidated error: got %q, want it without the selector", err)
	}
}

// TestAnnouncements: a fetched token reaches the other replicas' Receivers,
// not the sender's.
func TestAnnouncements(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	c := newTestTier(t, srv.Addr(), kr, Options{}) // sends barriers
	var recvA, recvB recorder
	startRun(t, raw, a, &recvA)
	startRun(t, raw, b, &recvB)
	const key = "key-announced"

	rec, err := a.Obtain(ctx, key, always, newFetcher().fetch)
	if err != nil {
		t.Fatalf("Obtain: got error %v, want nil", err)
	}
	barrier(t, c, &recvA, &recvB)
	if got := recvB.adoptions(); len(got) != 1 || got[0].key != key || !sameRecord(got[0].rec, rec) {
		t.Errorf("other replica adopted: got %d records, want 1 for %q with %s", len(got), key, describe(rec))
	}
	if got := recvA.adoptions(); len(got) != 0 {
		t.Errorf("sender adopted: got %d records, want 0", len(got))
	}
	if st := b.Stats(); st.Received != 2 { // the token and the barrier
		t.Errorf("Received of the other replica: got %d, want 2", st.Received)
	}
	if st := a.Stats(); st.Received != 1 { // the barrier only
		t.Errorf("Received of the sender: got %d, want 1", st.Received)
	}
}

// TestHandleGenerations: a token announced under a fleet generation older
// than the last invalidation seen is stale and dropped.
func TestHandleGenerations(t *testing.T) {
	kr := tokencache.RandomKeyring()
	sender := newTestTier(t, noRedis, kr, Options{})
	rec := newRecord(randomToken(), tokenLife)
	const key = "key-gen"
	tests := []struct {
		name       string
		seen       uint64 // generation of the last invalidation the receiver saw
		gen        uint64
		wantAdopts int
	}{
		{name: "older than the last invalidation", seen: 5, gen: 4, wantAdopts: 0},
		{name: "same as the last invalidation", seen: 5, gen: 5, wantAdopts: 1},
		{name: "newer than the last invalidation", seen: 5, gen: 6, wantAdopts: 1},
		{name: "no invalidation seen", seen: 0, gen: 0, wantAdopts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recv := &recorder{}
			tier := newTestTier(t, noRedis, kr, Options{})
			if tt.seen > 0 {
				if err := tier.handle(sender.message('I', tt.seen, []byte("sel")), recv); err != nil {
					t.Fatalf("handle invalidation: got error %v, want nil", err)
				}
				if got := tier.lastGen.Load(); got != tt.seen {
					t.Fatalf("last generation: got %d, want %d", got, tt.seen)
				}
			}
			if err := tier.handle(tokenMessage(sender, key, tt.gen, tt.gen, rec), recv); err != nil {
				t.Fatalf("handle token: got error %v, want nil", err)
			}
			got := recv.adoptions()
			if len(got) != tt.wantAdopts {
				t.Fatalf("adopted: got %d records, want %d", len(got), tt.wantAdopts)
			}
			if len(got) == 1 && (got[0].key != key || !sameRecord(got[0].rec, rec)) {
				t.Errorf("adopted: got %q with %s, want %q with %s", got[0].key, describe(got[0].rec), key, describe(rec))
			}
		})
	}
}

// TestHandle: well-formed messages reach the Receiver unless they are the
// replica's own; malformed ones are errors and reach nothing.
func TestHandle(t *testing.T) {
	kr := tokencache.RandomKeyring()
	other, err := tokencache.NewKeyring([]tokencache.Key{{ID: "other", Secret: bytes.Repeat([]byte{7}, 32)}}, "other")
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	recv := newTestTier(t, noRedis, kr, Options{})
	sender := newTestTier(t, noRedis, kr, Options{})
	foreign := newTestTier(t, noRedis, other, Options{})
	rec := newRecord(randomToken(), tokenLife)
	token := rec.AccessToken.Reveal()
	const key = "key-msg"

	tampered := tokenMessage(sender, key, 0, 0, rec)
	tampered[len(tampered)-1] ^= 1

	tests := []struct {
		name            string
		msg             []byte
		wantErr         bool
		wantAdopts      int
		wantInvalidated []string
	}{
		{name: "token from another replica", msg: tokenMessage(sender, key, 0, 0, rec), wantAdopts: 1},
		{name: "own token", msg: tokenMessage(recv, key, 0, 0, rec)},
		{name: "invalidation from another replica", msg: sender.message('I', 0, []byte("sel")), wantInvalidated: []string{"sel"}},
		{name: "empty invalidation selector", msg: sender.message('I', 0), wantInvalidated: []string{""}},
		{name: "own invalidation", msg: recv.message('I', 0, []byte("sel"))},
		{name: "empty", msg: nil, wantErr: true},
		{name: "shorter than a header", msg: sender.message('I', 0)[:16], wantErr: true},
		{name: "unknown kind", msg: sender.message('X', 0, []byte("whatever")), wantErr: true},
		{name: "token without a key", msg: sender.message('T', 0), wantErr: true},
		{name: "key length not a varint", msg: sender.message('T', 0, bytes.Repeat([]byte{0xff}, 11)), wantErr: true},
		{name: "key longer than the message", msg: sender.message('T', 0, binary.AppendUvarint(nil, 500), []byte("abc")), wantErr: true},
		{name: "huge key length", msg: sender.message('T', 0, binary.AppendUvarint(nil, 1<<63), []byte("abc")), wantErr: true},
		{name: "value too short", msg: sender.message('T', 0, appendKey(nil, key), []byte{1, 2, 3}), wantErr: true},
		{name: "no value", msg: sender.message('T', 0, appendKey(nil, key)), wantErr: true},
		{name: "value sealed with another keyring", msg: tokenMessage(foreign, key, 0, 0, rec), wantErr: true},
		{name: "value sealed for another key", msg: sender.message('T', 0, appendKey(nil, key), sender.seal("key-other", 0, rec)), wantErr: true},
		{name: "value of another generation", msg: tokenMessage(sender, key, 1, 2, rec), wantErr: true},
		{name: "tampered value", msg: tampered, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{}
			before := recv.Stats().Received
			err := recv.handle(tt.msg, r)
			if (err != nil) != tt.wantErr {
				t.Fatalf("handle: got error %v, want error %v", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), token) {
				t.Errorf("handle error: got %q, want it without the token", err)
			}
			if got := len(r.adoptions()); got != tt.wantAdopts {
				t.Errorf("adopted: got %d records, want %d", got, tt.wantAdopts)
			}
			if got := r.invalidated(); !slices.Equal(got, tt.wantInvalidated) {
				t.Errorf("invalidations: got %q, want %q", got, tt.wantInvalidated)
			}
			want := before + int64(tt.wantAdopts+len(tt.wantInvalidated))
			if got := recv.Stats().Received; got != want {
				t.Errorf("Received: got %d, want %d", got, want)
			}
		})
	}
}

// TestRunDropsJunk: junk on the channel is logged and dropped, and Run
// keeps serving.
func TestRunDropsJunk(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	other, err := tokencache.NewKeyring([]tokencache.Key{{ID: "other", Secret: bytes.Repeat([]byte{9}, 32)}}, "other")
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	logger, logs := newLogger()
	tier := newTestTier(t, srv.Addr(), kr, Options{Logger: logger})
	sender := newTestTier(t, srv.Addr(), kr, Options{})
	foreign := newTestTier(t, srv.Addr(), other, Options{})
	var recv recorder
	startRun(t, raw, tier, &recv)
	rec := newRecord(randomToken(), tokenLife)
	const key = "key-junk"

	junk := [][]byte{
		[]byte("x"),
		sender.message('Z', 0, []byte("unknown kind")),
		sender.message('T', 0, binary.AppendUvarint(nil, 500), []byte("abc")),
		tokenMessage(foreign, key, 0, 0, rec),
	}
	for _, m := range junk {
		if err := raw.Publish(ctx, tier.channel, m).Err(); err != nil {
			t.Fatalf("PUBLISH junk: got error %v, want nil", err)
		}
	}
	if err := raw.Publish(ctx, tier.channel, tokenMessage(sender, key, 0, 0, rec)).Err(); err != nil {
		t.Fatalf("PUBLISH token: got error %v, want nil", err)
	}
	barrier(t, sender, &recv)

	if got := recv.adoptions(); len(got) != 1 || !sameRecord(got[0].rec, rec) {
		t.Errorf("adopted: got %d records, want only the well-formed %s", len(got), describe(rec))
	}
	if got := logs.Count(slog.LevelWarn, msgDropped); got != len(junk) {
		t.Errorf("log lines %q: got %d, want %d\n%s", msgDropped, got, len(junk), logs)
	}
	if strings.Contains(logs.String(), rec.AccessToken.Reveal()) {
		t.Errorf("logs: got the token text, want it never logged")
	}
}

// TestBreaker: with Redis gone, Obtain fetches on its own; the breaker
// opens after BreakerFailures failures, after which Redis is left alone,
// and closes once Redis answers again.
func TestBreaker(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	logger, logs := newLogger()
	const failures = 3
	var statesMu sync.Mutex
	var states []string
	onState := func(s string) {
		statesMu.Lock()
		defer statesMu.Unlock()
		states = append(states, s)
	}
	seenStates := func() []string {
		statesMu.Lock()
		defer statesMu.Unlock()
		return slices.Clone(states)
	}
	// The cooldown is long enough that the calls made while the breaker
	// is open (a few microseconds) cannot outlast it.
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{
		OpTimeout:       200 * time.Millisecond,
		BreakerFailures: failures,
		BreakerCooldown: time.Second,
		Logger:          logger,
		OnStateChange:   onState,
	})
	f := newFetcher()
	obtain := func(what string) {
		t.Helper()
		rec, err := tier.Obtain(ctx, "key-breaker", always, f.fetch)
		if err != nil || rec == nil {
			t.Fatalf("Obtain %s: got (%s, %v), want a record", what, describe(rec), err)
		}
	}

	obtain("with Redis up")
	if st := tier.Stats(); st.State != StateClosed || st.Fetches != 1 {
		t.Fatalf("Stats with Redis up: got %+v, want closed, 1 fetch", st)
	}

	srv.Stop()
	for i := range failures {
		if st := tier.Stats(); st.State != StateClosed {
			t.Fatalf("State after %d failures: got %q, want %q", i, st.State, StateClosed)
		}
		obtain("with Redis down")
	}
	st := tier.Stats()
	if st.State != StateOpen || st.Fallbacks != failures || st.Errors != failures || st.Transitions != 1 {
		t.Fatalf("Stats after %d failures: got %+v, want open, %d fallbacks, %d errors, 1 transition", failures, st, failures, failures)
	}
	for range 5 {
		obtain("with the breaker open")
	}
	st = tier.Stats()
	if st.State != StateOpen || st.Fallbacks != failures+5 || st.Errors != failures {
		t.Fatalf("Stats while open: got %+v, want open, %d fallbacks, still %d errors", st, failures+5, failures)
	}
	if got := f.calls.Load(); got != 1+failures+5 {
		t.Errorf("fetch calls: got %d, want %d", got, 1+failures+5)
	}
	if got := logs.Count(slog.LevelWarn, msgOpen); got != 1 {
		t.Errorf("log lines %q: got %d, want 1\n%s", msgOpen, got, logs)
	}
	if got := seenStates(); !slices.Equal(got, []string{StateOpen}) {
		t.Errorf("OnStateChange calls while open: got %q, want [%q]", got, StateOpen)
	}

	srv.Restart()
	eventually(t, "breaker closed after Redis came back", func() bool {
		obtain("after Redis came back")
		return tier.Stats().State == StateClosed
	})
	if got := logs.Count(slog.LevelInfo, msgClosed); got != 1 {
		t.Errorf("log lines %q: got %d, want 1\n%s", msgClosed, got, logs)
	}
	if got := logs.Count(slog.LevelWarn, msgOpen); got != 1 {
		t.Errorf("log lines %q after recovery: got %d, want still 1\n%s", msgOpen, got, logs)
	}
	// A probe may fail on a connection left over from before the restart,
	// which reopens the breaker for another cooldown; the last transitions
	// are always the probe and its success.
	if got := seenStates(); len(got) < 3 || got[0] != StateOpen || !slices.Equal(got[len(got)-2:], []string{StateHalfOpen, StateClosed}) {
		t.Errorf("OnStateChange calls: got %q, want [%q ... %q %q]", got, StateOpen, StateHalfOpen, StateClosed)
	}
	// The call that closed the breaker used Redis: the token is filed.
	if n, err := raw.Exists(ctx, tier.tokenKey("key-breaker")).Result(); err != nil || n != 1 {
		t.Errorf("token filed after recovery: got (%d, %v), want (1, nil)", n, err)
	}
	if strings.Contains(logs.String(), f.prefix) {
		t.Errorf("logs: got a token text, want none")
	}
}

// TestObtainPausedRedis: a Redis that hangs (SIGSTOP) costs each call at
// most about OpTimeout, not an error.
func TestObtainPausedRedis(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{OpTimeout: 200 * time.Millisecond})
	if _, err := tier.Obtain(ctx, "key-warm", always, newFetcher().fetch); err != nil {
		t.Fatalf("Obtain with Redis up: got error %v, want nil", err)
	}
	srv.Pause()

	f := newFetcher()
	type result struct {
		rec *tokencache.Record
		err error
	}
	done := make(chan result, 1)
	go func() {
		rec, err := tier.Obtain(ctx, "key-paused", always, f.fetch)
		done <- result{rec, err}
	}()
	select {
	case r := <-done:
		if r.err != nil || r.rec == nil {
			t.Fatalf("Obtain with Redis paused: got (%s, %v), want a record", describe(r.rec), r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Obtain with Redis paused: no return within %v, want a fallback after OpTimeout", waitTimeout)
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("fetch calls: got %d, want 1", n)
	}
	if st := tier.Stats(); st.Fallbacks != 1 || st.Errors < 1 {
		t.Errorf("Stats: got %+v, want 1 fallback and an error", st)
	}
}

// TestSealingKeys: a filed value opens only with the key that sealed it and
// only under the key it was filed for; anything else is a miss.
func TestSealingKeys(t *testing.T) {
	oldKey := tokencache.Key{ID: "k1", Secret: bytes.Repeat([]byte{1}, 32)}
	newKey := tokencache.Key{ID: "k2", Secret: bytes.Repeat([]byte{2}, 32)}
	mustRing := func(keys []tokencache.Key, current string) *tokencache.Keyring {
		kr, err := tokencache.NewKeyring(keys, current)
		if err != nil {
			t.Fatalf("NewKeyring: %v", err)
		}
		return kr
	}
	writer := mustRing([]tokencache.Key{oldKey}, "k1")
	tests := []struct {
		name    string
		reader  *tokencache.Keyring
		moveTo  string // if set, the value is copied to this key
		wantHit bool
	}{
		{name: "same key", reader: writer, wantHit: true},
		{name: "rotated keyring holding the old key", reader: mustRing([]tokencache.Key{oldKey, newKey}, "k2"), wantHit: true},
		{name: "keyring without the key", reader: mustRing([]tokencache.Key{newKey}, "k2")},
		{name: "value copied to another key", reader: writer, moveTo: "key-elsewhere"},
	}
	srv := redistest.Start(t)
	raw := srv.Client()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			prefix := fmt.Sprintf("seal-%d", i)
			w := newTestTier(t, srv.Addr(), writer, Options{Prefix: prefix})
			r := newTestTier(t, srv.Addr(), tt.reader, Options{Prefix: prefix})
			key := "key-sealed"
			filed, err := w.Obtain(ctx, key, always, newFetcher().fetch)
			if err != nil {
				t.Fatalf("Obtain of the writer: got error %v, want nil", err)
			}
			if tt.moveTo != "" {
				v, err := raw.Get(ctx, w.tokenKey(key)).Result()
				if err != nil {
					t.Fatalf("GET: got error %v, want the value", err)
				}
				if err := raw.Set(ctx, w.tokenKey(tt.moveTo), v, time.Minute).Err(); err != nil {
					t.Fatalf("SET: got error %v, want nil", err)
				}
				key = tt.moveTo
			}
			f := newFetcher()
			got, err := r.Obtain(ctx, key, always, f.fetch)
			if err != nil {
				t.Fatalf("Obtain of the reader: got error %v, want nil", err)
			}
			if hit := sameRecord(got, filed); hit != tt.wantHit {
				t.Errorf("reader got the filed token: got %v, want %v", hit, tt.wantHit)
			}
			wantCalls, wantHits := int64(1), int64(0)
			if tt.wantHit {
				wantCalls, wantHits = 0, 1
			}
			if n := f.calls.Load(); n != wantCalls {
				t.Errorf("reader's fetch calls: got %d, want %d", n, wantCalls)
			}
			if st := r.Stats(); st.Hits != wantHits || st.Errors != 0 || st.Fallbacks != 0 {
				t.Errorf("reader's Stats: got %+v, want %d hits, no errors, no fallbacks", st, wantHits)
			}
		})
	}
}

// TestCallerCancellationIsNotARedisFailure: a caller whose context ended
// says nothing about Redis, so it must not count towards opening the
// breaker, nor log that Redis is unavailable.
func TestCallerCancellationIsNotARedisFailure(t *testing.T) {
	srv := redistest.Start(t)
	logger, logs := newLogger()
	tier := newTestTier(t, srv.Addr(), tokencache.RandomKeyring(), Options{BreakerFailures: 3, Logger: logger})
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	f := newFetcher()
	for range 5 {
		if _, err := tier.Obtain(ctx, "key-gone", always, f.fetch); !errors.Is(err, context.Canceled) {
			t.Fatalf("Obtain with an ended context: got %v, want context.Canceled", err)
		}
	}
	if st := tier.Stats(); st.State != StateClosed || st.Errors != 0 {
		t.Errorf("Stats after callers gave up: got %+v, want closed with 0 errors", st)
	}
	if got := logs.Count(slog.LevelWarn, msgOpen); got != 0 {
		t.Errorf("log lines %q: got %d, want 0\n%s", msgOpen, got, logs)
	}
}

// TestAnnouncementsAfterRedisRestart: a Redis restart (no persistence)
// resets the fleet generation to 0. Tokens announced afterwards must
// still reach the replicas that saw an invalidation before it.
func TestAnnouncementsAfterRedisRestart(t *testing.T) {
	ctx := testCtx(t)
	srv := redistest.Start(t)
	raw := srv.Client()
	kr := tokencache.RandomKeyring()
	a := newTestTier(t, srv.Addr(), kr, Options{})
	b := newTestTier(t, srv.Addr(), kr, Options{})
	c := newTestTier(t, srv.Addr(), kr, Options{}) // sends barriers
	var recvA, recvB recorder
	startRun(t, raw, a, &recvA)
	startRun(t, raw, b, &recvB)

	if err := a.Invalidated(ctx, []byte("sel")); err != nil {
		t.Fatalf("Invalidated: got error %v, want nil", err)
	}
	barrier(t, c, &recvB)

	srv.Restart()
	eventually(t, "both replicas subscribed again", func() bool { return numSub(t, raw, a.channel) == 2 })
	eventually(t, "replica A reaches Redis again", func() bool { return a.rdb.Ping(ctx).Err() == nil })

	rec, err := a.Obtain(ctx, "key-after-restart", always, newFetcher().fetch)
	if err != nil {
		t.Fatalf("Obtain after the restart: got error %v, want nil", err)
	}
	if st := a.Stats(); st.Fetches != 1 || st.Fallbacks != 0 {
		t.Fatalf("Stats of A: got %+v, want the fetch made under the fleet lock", st)
	}
	barrier(t, c, &recvB)
	if got := recvB.adoptions(); len(got) != 1 || !sameRecord(got[0].rec, rec) {
		t.Errorf("B adopted after the restart: got %d records, want 1 with %s", len(got), describe(rec))
	}
}
