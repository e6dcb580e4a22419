// Package shared is the optional Redis tier that lets broker replicas act
// as one broker.
//
// Replicas file sealed tokens in Redis, so a token one replica fetched
// serves the whole fleet. Before an upstream fetch a replica takes a
// per-key lock (SET NX PX with an owner token, released only by its owner);
// the replicas that lose wait for the winner's token, woken by a pub/sub
// notification or, failing that, by a bounded poll. A lock whose holder
// died expires after its TTL and the next replica takes over. New tokens
// and invalidations are announced on one pub/sub channel.
//
// Redis is never in the way: every operation has a short timeout, and a
// circuit breaker (sony/gobreaker) opens after a few failures in a row.
// While it is open, or when an operation fails, the replica fetches on its
// own (still coalescing its own callers), and callers see no error caused
// by Redis. The breaker closes again by itself when Redis answers.
//
// The tier tells why Redis fails, not only that it does: each failure has
// a reason from a small fixed set (Reason*: authentication failed,
// connection refused, timeout…), logged once when the breaker opens and
// again only when the reason changes, with the recovery logged once too.
// Authentication failures open the breaker at once (they do not heal by
// themselves), as does any failure before Redis has answered once, so a
// replica started with a wrong password or address says so at start-up.
// Run probes Redis every ProbeInterval, so an outage, and its end, are
// noticed without traffic. Nothing the tier logs quotes a Redis error
// reply beyond its code (a reply may echo a command's arguments, and the
// AUTH command's argument is the password).
//
// All keys share one Redis Cluster hash slot (the prefix is a hash tag),
// so the lock, the value and the fleet generation can be read in one round
// trip. The tier carries one small value per token, so one slot is plenty.
package shared

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// DefaultProbeInterval is Options.ProbeInterval when it is zero. It is a
// fixed value, not a configuration key. The settings that have a key
// (shared.redis.*) have no default here: the configuration holds them,
// and New refuses a zero value.
const DefaultProbeInterval = time.Second

// States of the tier, as Stats reports them.
const (
	StateClosed   = "closed"    // Redis in use
	StateHalfOpen = "half_open" // probing Redis after an outage
	StateOpen     = "open"      // Redis skipped: local coalescing and upstream only
)

// Reasons why a Redis operation failed, as the log (field "reason"),
// Health and OnFailure name them. The set is closed: every failure has
// one of them, so they are safe as metric label values.
const (
	ReasonAuth        = "auth_failed"        // WRONGPASS, NOAUTH, NOPERM: wrong or missing credentials
	ReasonRefused     = "connection_refused" // nothing listens at the address
	ReasonTimeout     = "timeout"            // no answer in time (op_timeout, dial timeout, pool wait)
	ReasonUnreachable = "unreachable"        // name resolution, routing, or a connection reset or closed
	ReasonTLS         = "tls"                // TLS handshake or certificate verification failed
	ReasonError       = "error"              // anything else, such as an error reply (LOADING, READONLY, OOM…)
)

// Reasons lists every Reason* value, in a fixed order.
var Reasons = []string{ReasonAuth, ReasonRefused, ReasonTimeout, ReasonUnreachable, ReasonTLS, ReasonError}

// reasonText says what a reason means, for the log message.
var reasonText = map[string]string{
	ReasonAuth:        "authentication failed",
	ReasonRefused:     "connection refused",
	ReasonTimeout:     "timed out",
	ReasonUnreachable: "unreachable",
	ReasonTLS:         "TLS failed",
	ReasonError:       "error",
}

// Options configure a Tier.
type Options struct {
	// Client is the Redis client (standalone, Sentinel or Cluster). Its
	// timeouts should be about OpTimeout and its retries off: the breaker
	// decides when to try again. The Tier closes it.
	Client redis.UniversalClient
	// Keyring seals the values filed in Redis. Every replica must hold the
	// key that sealed a value to use it.
	Keyring *tokencache.Keyring
	// Prefix starts every Redis key and the channel name: non-empty,
	// without braces or white space (shared.redis.key_prefix). Required.
	Prefix string
	// OpTimeout bounds each Redis operation; more than 0
	// (shared.redis.op_timeout). Required.
	OpTimeout time.Duration
	// LockTTL is how long a replica's fetch lock lives unless released: the
	// longest the fleet waits for a replica that died mid-fetch. At least
	// 1ms (shared.redis.lock_ttl). Required.
	LockTTL time.Duration
	// PollInterval is how often a replica waiting for another one's fetch
	// looks in Redis, in case a notification was lost. More than 0
	// (shared.redis.poll_interval). Required.
	PollInterval time.Duration
	// BreakerFailures is the number of failed operations in a row that
	// opens the circuit breaker; at least 1
	// (shared.redis.breaker_failures). Required.
	BreakerFailures uint32
	// BreakerCooldown is how long the breaker stays open before it lets
	// one operation probe Redis; more than 0
	// (shared.redis.breaker_cooldown). Required.
	BreakerCooldown time.Duration
	// ProbeInterval is how often Run pings Redis, so that an outage and
	// its end are noticed without traffic. While the breaker is open the
	// ping waits for the cooldown like any operation. Zero means
	// DefaultProbeInterval (no configuration key sets it).
	ProbeInterval time.Duration
	// SavingsTTL is how long the fleet's cost accounting of a provider
	// lives past its last flush (DefaultSavingsTTL when zero; no
	// configuration key sets it).
	SavingsTTL time.Duration
	// Logger receives a warning when the breaker opens (with the reason)
	// and when the reason of an ongoing outage changes, an info line when
	// it closes again, and a warning per dropped message; nil discards.
	Logger *slog.Logger
	// OnStateChange, when set, is called with the new state (StateClosed,
	// StateHalfOpen or StateOpen) at each breaker transition.
	OnStateChange func(state string)
	// OnFailure, when set, is called with the reason (a Reason* value) of
	// each failed Redis operation.
	OnFailure func(reason string)
}

// check returns an error naming the first bad field of o and its rule.
func (o *Options) check() error {
	bad := func(field string, v any, rule, key string) error {
		return fmt.Errorf("shared: Options.%s is %v, want %s (configuration shared.redis.%s)", field, v, rule, key)
	}
	switch {
	case o.Client == nil:
		return errors.New("shared: no Redis client")
	case o.Keyring == nil:
		return errors.New("shared: no sealing keyring: values in Redis must be sealed")
	case o.Prefix == "" || strings.ContainsAny(o.Prefix, "{} \t\r\n"):
		return bad("Prefix", fmt.Sprintf("%q", o.Prefix), "a non-empty prefix without braces or white space", "key_prefix")
	case o.OpTimeout <= 0:
		return bad("OpTimeout", o.OpTimeout, "more than 0", "op_timeout")
	case o.LockTTL < time.Millisecond:
		return bad("LockTTL", o.LockTTL, "at least 1ms", "lock_ttl")
	case o.PollInterval <= 0:
		return bad("PollInterval", o.PollInterval, "more than 0", "poll_interval")
	case o.BreakerFailures < 1:
		return bad("BreakerFailures", o.BreakerFailures, "at least 1", "breaker_failures")
	case o.BreakerCooldown <= 0:
		return bad("BreakerCooldown", o.BreakerCooldown, "more than 0", "breaker_cooldown")
	}
	return nil
}

// Receiver is what the tier tells about other replicas' doings.
type Receiver interface {
	// Adopt offers a token another replica fetched for key.
	Adopt(key string, rec *tokencache.Record)
	// ApplyInvalidation applies an invalidation made on another replica;
	// selector is what that replica passed to Invalidated.
	ApplyInvalidation(selector []byte)
}

// Stats are the tier's counters since it started, as the broker reports
// them (GetStats's shared_tier).
type Stats = broker.FleetStats

// Tier is the Redis tier of one replica. Its methods are safe for
// concurrent use.
type Tier struct {
	opt     Options
	rdb     redis.UniversalClient
	cb      *gobreaker.CircuitBreaker[any]
	self    [8]byte // this replica's id, to skip its own messages
	tag     string  // "{prefix}", the hash tag every key starts with
	channel string
	genKey  string

	// lastGen is the highest fleet generation seen in an invalidation:
	// tokens announced with an older one are stale.
	lastGen atomic.Uint64

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}

	// hmu guards the health fields: the last failure, whether Redis ever
	// answered, and the outage the log reported.
	hmu            sync.Mutex
	failReason     string // reason of the last failed operation
	failDetail     string // its non-secret detail
	answered       bool   // an operation has succeeded
	outageReason   string // reason the log reported for the current outage; "" when none
	outageSince    time.Time
	outageFailures int64 // failed operations since the outage began

	transitions, hits, waits, fetches, fallbacks, errs, received atomic.Int64
}

// New returns a tier over opt.Client. Call Run to receive other replicas'
// announcements and Close when done. It checks opt and returns an error
// naming the first bad field; a zero value is an error like any other bad
// value (the configuration holds the defaults).
func New(opt Options) (*Tier, error) {
	if err := opt.check(); err != nil {
		return nil, err
	}
	if opt.ProbeInterval <= 0 {
		opt.ProbeInterval = DefaultProbeInterval
	}
	if opt.SavingsTTL <= 0 {
		opt.SavingsTTL = DefaultSavingsTTL
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	tag := "{" + opt.Prefix + "}"
	t := &Tier{
		opt:     opt,
		rdb:     opt.Client,
		tag:     tag,
		channel: tag + ":events",
		genKey:  tag + ":gen",
		waiters: make(map[string]map[chan struct{}]struct{}),
	}
	if _, err := rand.Read(t.self[:]); err != nil {
		return nil, err
	}
	failures := opt.BreakerFailures
	t.cb = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1,
		Timeout:     opt.BreakerCooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures || t.tripAtOnce() },
		IsExcluded:  func(err error) bool { return errors.Is(err, errCallerGone) },
		OnStateChange: func(_ string, _, to gobreaker.State) {
			t.transitions.Add(1)
			if t.opt.OnStateChange != nil {
				t.opt.OnStateChange(stateName(to))
			}
			switch to {
			case gobreaker.StateOpen:
				t.opened()
			case gobreaker.StateClosed:
				t.closed()
			}
		},
	})
	return t, nil
}

// failed records a failed operation: its reason and detail, for the
// breaker's decision and the log.
func (t *Tier) failed(err error) {
	reason, detail := classify(err)
	t.hmu.Lock()
	t.failReason, t.failDetail = reason, detail
	t.outageFailures++
	t.hmu.Unlock()
	if t.opt.OnFailure != nil {
		t.opt.OnFailure(reason)
	}
}

// succeeded records an operation Redis answered.
func (t *Tier) succeeded() {
	t.hmu.Lock()
	t.answered = true
	if t.outageReason == "" {
		t.outageFailures = 0
	}
	t.hmu.Unlock()
}

// tripAtOnce reports whether the last failure opens the breaker without
// waiting for BreakerFailures in a row: wrong credentials do not heal by
// themselves, and a replica whose Redis never answered should say so now.
func (t *Tier) tripAtOnce() bool {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	return t.failReason == ReasonAuth || !t.answered
}

// opened logs the breaker opening, or, when it reopens after a failed
// probe, a change of the outage's reason.
func (t *Tier) opened() {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	reason, detail := t.failReason, t.failDetail
	if reason == "" {
		reason = ReasonError
	}
	switch {
	case t.outageReason == "":
		t.outageReason, t.outageSince = reason, time.Now()
		t.opt.Logger.Warn("redis tier unavailable: "+reasonText[reason]+"; fetching without the fleet until it answers again",
			"reason", reason, "error", detail)
	case t.outageReason != reason:
		t.outageReason = reason
		t.opt.Logger.Warn("redis tier still unavailable, now: "+reasonText[reason],
			"reason", reason, "error", detail)
	}
}

// closed logs the end of an outage.
func (t *Tier) closed() {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	if t.outageReason == "" {
		return
	}
	t.opt.Logger.Info("redis tier available again: sharing tokens with the fleet",
		"reason", t.outageReason, "down_for", time.Since(t.outageSince).Round(time.Millisecond).String(),
		"failed_operations", t.outageFailures)
	t.outageReason, t.outageFailures = "", 0
}

// Health returns the breaker's state (StateClosed, StateHalfOpen or
// StateOpen) and, during an outage, its reason (a Reason* value; "" when
// Redis is in use).
func (t *Tier) Health() (state, reason string) {
	state = stateName(t.cb.State())
	t.hmu.Lock()
	defer t.hmu.Unlock()
	if state != StateClosed {
		reason = t.outageReason
	}
	return state, reason
}

// classify returns the reason of a failed operation and a detail that is
// safe to log: an error reply only by its code (the rest of a reply may
// quote the command, and AUTH's argument is the password), any other
// error as is (network and TLS errors name addresses, never credentials).
func classify(err error) (reason, detail string) {
	var reply redis.Error
	if errors.As(err, &reply) {
		text := reply.Error()
		code, _, _ := strings.Cut(text, " ")
		switch {
		case code == "WRONGPASS", code == "NOAUTH", code == "NOPERM", code == "ERR" && authReply(text):
			return ReasonAuth, code
		}
		return ReasonError, code
	}
	detail = err.Error()
	var (
		netErr   net.Error
		certErr  *tls.CertificateVerificationError
		alertErr tls.AlertError
		recErr   tls.RecordHeaderError
		authErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		dnsErr   *net.DNSError
		opErr    *net.OpError
	)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonRefused, detail
	case errors.As(err, &certErr), errors.As(err, &alertErr), errors.As(err, &recErr),
		errors.As(err, &authErr), errors.As(err, &hostErr), strings.HasPrefix(detail, "tls: "):
		return ReasonTLS, detail
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, redis.ErrPoolTimeout),
		errors.As(err, &netErr) && netErr.Timeout():
		return ReasonTimeout, detail
	case errors.As(err, &dnsErr), errors.As(err, &opErr), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ReasonUnreachable, detail
	}
	return ReasonError, detail
}

// authReply reports whether an ERR reply is a refused password in the
// wording of servers that predate the WRONGPASS code: Redis < 6 answers a
// wrong password with "ERR invalid password" and a password sent to a server
// without one with "ERR Client sent AUTH, but no password is set"; Redis 6+
// answers the latter with "ERR AUTH <password> called without any password
// configured for the default user…".
func authReply(text string) bool {
	lower := strings.ToLower(text)
	return strings.HasPrefix(lower, "err invalid password") ||
		strings.HasPrefix(lower, "err client sent auth") ||
		strings.HasPrefix(lower, "err auth ") && strings.Contains(lower, "without any password configured")
}

// Close closes the Redis client.
func (t *Tier) Close() error { return t.rdb.Close() }

// Stats returns the tier's counters.
func (t *Tier) Stats() Stats {
	return Stats{
		State:       stateName(t.cb.State()),
		Transitions: t.transitions.Load(),
		Hits:        t.hits.Load(),
		Waits:       t.waits.Load(),
		Fetches:     t.fetches.Load(),
		Fallbacks:   t.fallbacks.Load(),
		Errors:      t.errs.Load(),
		Received:    t.received.Load(),
	}
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// errCallerGone marks an operation cut short because its caller's context
// ended: not a sign that Redis is unwell.
var errCallerGone = errors.New("shared: the caller's context ended")

// do runs op against Redis under the breaker and the operation timeout.
// redis.Nil (no such key) is an answer, not a failure, and an operation
// whose caller gave up counts neither way.
func (t *Tier) do(ctx context.Context, op func(context.Context) error) error {
	_, err := t.cb.Execute(func() (any, error) {
		octx, cancel := context.WithTimeout(ctx, t.opt.OpTimeout)
		defer cancel()
		err := op(octx)
		switch {
		case err == nil || errors.Is(err, redis.Nil):
			t.succeeded()
			return nil, nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%w: %w", errCallerGone, err)
		}
		// Recorded before the breaker counts it, so that ReadyToTrip and
		// the transition's log line see this failure's reason.
		t.failed(err)
		return nil, err
	})
	if err != nil && !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) && !errors.Is(err, errCallerGone) {
		t.errs.Add(1)
	}
	return err
}

func (t *Tier) tokenKey(key string) string {
	return t.tag + ":t:" + hex.EncodeToString([]byte(key))
}

func (t *Tier) lockKey(key string) string {
	return t.tag + ":l:" + hex.EncodeToString([]byte(key))
}

// read returns the fleet generation, the token filed under key when it was
// filed under that generation (nil otherwise), and whether key's lock is
// held, in one round trip.
func (t *Tier) read(ctx context.Context, key string) (gen uint64, rec *tokencache.Record, locked bool, err error) {
	var vals *redis.SliceCmd
	var exists *redis.IntCmd
	err = t.do(ctx, func(ctx context.Context) error {
		_, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			vals = p.MGet(ctx, t.genKey, t.tokenKey(key))
			exists = p.Exists(ctx, t.lockKey(key))
			return nil
		})
		return err
	})
	if err != nil {
		return 0, nil, false, err
	}
	v := vals.Val()
	if s, ok := v[0].(string); ok {
		if gen, err = parseGen(s); err != nil {
			return 0, nil, false, err
		}
	} else if last := t.lastGen.Load(); last > 0 {
		// Redis lost the generation (a restart without persistence):
		// restore the highest one this replica saw, so that generations
		// never go back and announcements are not taken for stale ones.
		if gen, err = t.restoreGen(ctx, last); err != nil {
			return 0, nil, false, err
		}
	}
	if s, ok := v[1].(string); ok {
		if vgen, r, err := t.open(key, []byte(s)); err == nil && vgen == gen {
			rec = r
		}
	}
	return gen, rec, exists.Val() > 0, nil
}

// raiseGenScript sets the generation to ARGV[1] unless it is already
// higher, and returns it.
var raiseGenScript = redis.NewScript(`local g = tonumber(redis.call("GET", KEYS[1]) or "0")
local want = tonumber(ARGV[1])
if g < want then redis.call("SET", KEYS[1], ARGV[1]) g = want end
return tostring(g)`)

// restoreGen raises the fleet generation to at least gen and returns it.
func (t *Tier) restoreGen(ctx context.Context, gen uint64) (uint64, error) {
	var s string
	err := t.do(ctx, func(ctx context.Context) error {
		var err error
		s, err = raiseGenScript.Run(ctx, t.rdb, []string{t.genKey}, gen).Text()
		return err
	})
	if err != nil {
		return 0, err
	}
	return parseGen(s)
}

func parseGen(s string) (uint64, error) {
	var g uint64
	if _, err := fmt.Sscan(s, &g); err != nil {
		return 0, fmt.Errorf("shared: fleet generation %q is not a number", s)
	}
	return g, nil
}

// seal returns the value filed for rec under key at fleet generation gen:
// the generation, then the record sealed bound to both.
func (t *Tier) seal(key string, gen uint64, rec *tokencache.Record) []byte {
	g := binary.BigEndian.AppendUint64(nil, gen)
	return append(g, t.opt.Keyring.SealRecord(rec, append([]byte(key), g...))...)
}

// open reverses seal.
func (t *Tier) open(key string, v []byte) (uint64, *tokencache.Record, error) {
	if len(v) < 8 {
		return 0, nil, errors.New("shared: value too short")
	}
	rec, err := t.opt.Keyring.OpenRecord(v[8:], append([]byte(key), v[:8]...))
	if err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint64(v[:8]), rec, nil
}

// Obtain returns a token for key: one filed in Redis that fresh accepts,
// or one fetched by fetch while this replica holds key's fleet lock, or,
// while another replica holds it, the token that replica files. When
// Redis fails or the breaker is open, Obtain calls fetch without the
// fleet. An error is fetch's own, or ctx's.
func (t *Tier) Obtain(ctx context.Context, key string, fresh func(*tokencache.Record) bool, fetch func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error) {
	waited := false
	for {
		_, rec, locked, err := t.read(ctx, key)
		if err != nil {
			return t.fallback(ctx, fetch)
		}
		if rec != nil && fresh(rec) {
			t.hits.Add(1)
			return rec, nil
		}
		if !locked {
			owner := make([]byte, 16)
			_, _ = rand.Read(owner)
			var won bool
			err := t.do(ctx, func(ctx context.Context) error {
				var err error
				won, err = t.rdb.SetNX(ctx, t.lockKey(key), owner, t.opt.LockTTL).Result()
				return err
			})
			if err != nil {
				return t.fallback(ctx, fetch)
			}
			if won {
				// Another replica may have filed the token, and let go of
				// the lock, since the read: look again before fetching.
				gen, rec, _, err := t.read(ctx, key)
				if err == nil && rec != nil && fresh(rec) {
					t.unlock(ctx, key, string(owner))
					t.hits.Add(1)
					return rec, nil
				}
				if err != nil {
					t.unlock(ctx, key, string(owner))
					return t.fallback(ctx, fetch)
				}
				return t.fetchLocked(ctx, key, gen, string(owner), fetch)
			}
		}
		if !waited {
			t.waits.Add(1)
			waited = true
		}
		if err := t.await(ctx, key); err != nil {
			return nil, err
		}
	}
}

// fallback fetches without the fleet.
func (t *Tier) fallback(ctx context.Context, fetch func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error) {
	t.fallbacks.Add(1)
	return fetch(ctx)
}

// unlockScript deletes a lock only for its owner.
var unlockScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// fetchLocked fetches while holding key's lock, files and announces the
// result, and releases the lock.
func (t *Tier) fetchLocked(ctx context.Context, key string, gen uint64, owner string, fetch func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error) {
	t.fetches.Add(1)
	rec, err := fetch(ctx)
	// The lock is released, and the token filed, even when the caller's
	// context ended meanwhile.
	ctx = context.WithoutCancel(ctx)
	if err == nil {
		if ttl := time.Until(rec.ExpiresAt); ttl > 0 {
			v := t.seal(key, gen, rec)
			msg := t.message('T', gen, appendKey(nil, key), v)
			_ = t.do(ctx, func(ctx context.Context) error {
				_, err := t.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, t.tokenKey(key), v, ttl)
					p.Publish(ctx, t.channel, msg)
					return nil
				})
				return err
			})
		}
	}
	t.unlock(ctx, key, owner)
	return rec, err
}

// unlock releases key's lock if owner still holds it. A failure leaves
// the lock to expire.
func (t *Tier) unlock(ctx context.Context, key, owner string) {
	_ = t.do(context.WithoutCancel(ctx), func(ctx context.Context) error {
		return unlockScript.Run(ctx, t.rdb, []string{t.lockKey(key)}, owner).Err()
	})
}

// await waits until another replica announces a token for key, or for
// the poll interval, whichever comes first.
func (t *Tier) await(ctx context.Context, key string) error {
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	set := t.waiters[key]
	if set == nil {
		set = make(map[chan struct{}]struct{})
		t.waiters[key] = set
	}
	set[ch] = struct{}{}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(set, ch)
		if len(set) == 0 {
			delete(t.waiters, key)
		}
		t.mu.Unlock()
	}()
	timer := time.NewTimer(t.opt.PollInterval)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// wake wakes the replica's waiters for key.
func (t *Tier) wake(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for ch := range t.waiters[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Invalidated moves the fleet to a new generation, so that no token filed
// before it serves again, and announces selector to the other replicas'
// Receivers. Call it before invalidating locally: a refetch that starts
// then must not find the old token in Redis.
func (t *Tier) Invalidated(ctx context.Context, selector []byte) error {
	var gen uint64
	err := t.do(ctx, func(ctx context.Context) error {
		g, err := t.rdb.Incr(ctx, t.genKey).Result()
		gen = uint64(g)
		return err
	})
	if err != nil {
		return fmt.Errorf("redis tier: %w", err)
	}
	t.seenGen(gen)
	err = t.do(ctx, func(ctx context.Context) error {
		return t.rdb.Publish(ctx, t.channel, t.message('I', gen, selector)).Err()
	})
	if err != nil {
		return fmt.Errorf("redis tier: %w", err)
	}
	return nil
}

// seenGen records that the fleet reached generation gen.
func (t *Tier) seenGen(gen uint64) {
	for {
		old := t.lastGen.Load()
		if gen <= old || t.lastGen.CompareAndSwap(old, gen) {
			return
		}
	}
}

// message encodes an announcement: its kind, the sender, the fleet
// generation and the parts.
func (t *Tier) message(kind byte, gen uint64, parts ...[]byte) []byte {
	b := append([]byte{kind}, t.self[:]...)
	b = binary.BigEndian.AppendUint64(b, gen)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func appendKey(b []byte, key string) []byte {
	b = binary.AppendUvarint(b, uint64(len(key)))
	return append(b, key...)
}

// Run receives the other replicas' announcements and passes them to recv
// until ctx ends. The subscription reconnects by itself after a Redis
// outage; what was announced meanwhile is lost, which costs at most an
// upstream request per key (a token) or leaves other replicas' entries
// to expire (an invalidation).
//
// Run also pings Redis at once and then every ProbeInterval, so that a
// wrong password or address is logged at start-up, and an outage, and its
// end, without traffic.
func (t *Tier) Run(ctx context.Context, recv Receiver) error {
	t.probe(ctx)
	ps := t.rdb.Subscribe(ctx, t.channel)
	defer ps.Close()
	ch := ps.Channel()
	tick := time.NewTicker(t.opt.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			t.probe(ctx)
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			if err := t.handle([]byte(m.Payload), recv); err != nil {
				t.opt.Logger.Warn("redis tier: dropped an announcement", "error", err)
			}
		}
	}
}

// probe pings Redis under the breaker; the outcome is recorded like any
// operation's.
func (t *Tier) probe(ctx context.Context) {
	_ = t.do(ctx, func(ctx context.Context) error { return t.rdb.Ping(ctx).Err() })
}

// handle decodes one announcement and acts on it.
func (t *Tier) handle(b []byte, recv Receiver) error {
	if len(b) < 17 {
		return errors.New("message too short")
	}
	kind, from, gen, rest := b[0], b[1:9], binary.BigEndian.Uint64(b[9:17]), b[17:]
	own := string(from) == string(t.self[:])
	switch kind {
	case 'I':
		t.seenGen(gen)
		if !own {
			t.received.Add(1)
			recv.ApplyInvalidation(rest)
		}
	case 'T':
		n, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < n {
			return errors.New("malformed token announcement")
		}
		key, v := string(rest[w:w+int(n)]), rest[w+int(n):]
		t.wake(key)
		if own || gen < t.lastGen.Load() {
			return nil
		}
		vgen, rec, err := t.open(key, v)
		if err != nil || vgen != gen {
			return errors.New("token announcement does not open with this replica's sealing keys")
		}
		t.received.Add(1)
		recv.Adopt(key, rec)
	default:
		return fmt.Errorf("unknown message kind %q", kind)
	}
	return nil
}
