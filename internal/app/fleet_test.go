package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
)

// replica is one broker of a test fleet.
type replica struct {
	client tokenbrokerv1.TokenBrokerServiceClient
	admin  tokenbrokerv1.AdminServiceClient
}

// testFleet is n brokers sharing one token endpoint and one real
// redis-server, with the same sealing and HMAC keys.
type testFleet struct {
	issuer   *devissuer.Issuer
	redis    *redistest.Server
	replicas []replica
}

// startFleet starts a fleet of n replicas; adjust, when not nil, changes
// the configuration they share.
func startFleet(t testing.TB, n int, adjust func(*config.Config)) *testFleet {
	t.Helper()
	f := &testFleet{redis: redistest.Start(t)}
	var tokenURL string
	f.issuer, tokenURL = startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Shared.Redis.Addrs = []string{f.redis.Addr()}
	cfg.Shared.Redis.BreakerCooldown = config.Duration(200 * time.Millisecond)
	// Generous for loopback, so that a machine loaded by the race detector
	// does not time operations out (which would count as outages).
	cfg.Shared.Redis.OpTimeout = config.Duration(time.Second)
	if adjust != nil {
		adjust(&cfg)
	}
	keys := Keys{Sealing: []byte("k1:" + randomB64(t) + "\n"), HMAC: []byte(randomB64(t))}
	hmac, err := base64.StdEncoding.DecodeString(string(keys.HMAC))
	if err != nil {
		t.Fatal(err)
	}
	keys.HMAC = hmac
	for range n {
		addr, _ := serveApp(t, cfg, keys, slog.New(slog.NewJSONHandler(io.Discard, nil)))
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		f.replicas = append(f.replicas, replica{
			client: tokenbrokerv1.NewTokenBrokerServiceClient(conn),
			admin:  tokenbrokerv1.NewAdminServiceClient(conn),
		})
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for i, r := range f.replicas {
			if st, err := r.admin.GetStats(ctx, &tokenbrokerv1.GetStatsRequest{}); err == nil {
				t.Logf("replica %d: %v", i, st)
			}
		}
	})
	return f
}

func randomB64(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func (f *testFleet) stats(t *testing.T, ctx context.Context, i int) *tokenbrokerv1.GetStatsResponse {
	t.Helper()
	st, err := f.replicas[i].admin.GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		t.Fatalf("replica %d GetStats: %v", i, err)
	}
	return st
}

// watchAll opens per watch streams for sel on every replica and returns
// them with the first message of each read.
func (f *testFleet) watchAll(t *testing.T, ctx context.Context, per int, sel *tokenbrokerv1.TokenSelector) []grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse] {
	t.Helper()
	var streams []grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse]
	for i, r := range f.replicas {
		for range per {
			s, err := r.client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: sel})
			if err != nil {
				t.Fatalf("replica %d WatchToken: %v", i, err)
			}
			if m, err := s.Recv(); err != nil || m.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL {
				t.Fatalf("replica %d first message: %v, %v", i, m.GetEvent(), err)
			}
			streams = append(streams, s)
		}
	}
	return streams
}

// nextOnAll reads one message from every stream and checks they all carry
// event want with one and the same token, which it returns.
func nextOnAll(t *testing.T, streams []grpc.ServerStreamingClient[tokenbrokerv1.WatchTokenResponse], want tokenbrokerv1.WatchTokenResponse_Event) string {
	t.Helper()
	var tok string
	for i, s := range streams {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if m.GetEvent() != want {
			t.Fatalf("stream %d: got %v, want %v", i, m.GetEvent(), want)
		}
		if i == 0 {
			tok = m.GetToken().GetAccessToken()
		} else if m.GetToken().GetAccessToken() != tok {
			t.Fatalf("stream %d got another token than stream 0", i)
		}
	}
	return tok
}

// TestFleetOneUpstreamRequest: 300 concurrent GetToken calls for one cold
// key, spread over 3 replicas, make one upstream request; at the refresh
// point, with watchers on every replica, the fleet makes exactly one more
// and every watcher receives its token.
func TestFleetOneUpstreamRequest(t *testing.T) {
	f := startFleet(t, 3, func(cfg *config.Config) {
		// Tokens live 60 s and are refreshed 3 s after they are issued.
		cfg.Cache.RefreshFraction, cfg.Cache.RefreshJitter = 0.05, 0
		cfg.Cache.MinRemaining = config.Duration(time.Second)
	})
	f.issuer.SetLifetime(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const calls = 300
	tokens := make([]string, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			resp, err := f.replicas[i%3].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
			if err != nil {
				t.Errorf("call %d on replica %d: %v", i, i%3, err)
				return
			}
			tokens[i] = resp.GetToken().GetAccessToken()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("call %d got another token than call 0", i)
		}
	}
	if got := f.issuer.Requests(); got != 1 {
		t.Fatalf("after %d calls over 3 replicas: got %d upstream requests, want 1", calls, got)
	}

	streams := f.watchAll(t, ctx, 5, heldSelector("api/read"))
	tok := nextOnAll(t, streams, tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED)
	if tok == tokens[0] {
		t.Fatal("the refresh pushed the old token")
	}
	if got := f.issuer.Requests(); got != 2 {
		t.Errorf("after the refresh: got %d upstream requests, want 2", got)
	}
	var fetches int64
	for i := range f.replicas {
		fetches += f.stats(t, ctx, i).GetSharedTier().GetFetches()
	}
	if fetches != 2 {
		t.Errorf("fetches under the fleet lock, all replicas: got %d, want 2", fetches)
	}
}

// TestFleetInvalidation: an invalidation on replica A drops the entry on B
// and C too; watchers on all three receive one new token, fetched once.
func TestFleetInvalidation(t *testing.T) {
	f := startFleet(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	streams := f.watchAll(t, ctx, 2, heldSelector("api/read"))
	// A second key, used but not watched, on B and C.
	var old string
	for _, r := range f.replicas[1:] {
		resp, err := r.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/write")})
		if err != nil {
			t.Fatal(err)
		}
		old = resp.GetToken().GetAccessToken()
	}
	before := f.issuer.Requests()
	if before != 2 {
		t.Fatalf("before the invalidation: got %d upstream requests, want 2 (one per key)", before)
	}

	resp, err := f.replicas[0].admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{
		Selector: &tokenbrokerv1.InvalidateTokensRequest_Client{Client: "held"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetInvalidated() != 1 {
		t.Errorf("replica A invalidated %d entries, want 1 (it holds only the watched key)", resp.GetInvalidated())
	}
	nextOnAll(t, streams, tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED)
	if got := f.issuer.Requests() - before; got != 1 {
		t.Errorf("refetch after the invalidation: got %d upstream requests, want 1", got)
	}

	// B and C dropped the unwatched key: they no longer list it, and the
	// next call gets a new token.
	for i := 1; i < 3; i++ {
		for {
			list, err := f.replicas[i].admin.ListTokens(ctx, &tokenbrokerv1.ListTokensRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.GetEntries()) == 1 {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("replica %d still lists %d entries, want 1", i, len(list.GetEntries()))
			case <-time.After(10 * time.Millisecond):
			}
		}
		got, err := f.replicas[i].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/write")})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetToken().GetAccessToken() == old {
			t.Errorf("replica %d served the invalidated token", i)
		}
	}
}

// TestFleetLockHolderDies: when a replica took a key's lock and died
// without releasing it, the others wait, and the next one fetches once the
// lock's TTL has passed.
func TestFleetLockHolderDies(t *testing.T) {
	f := startFleet(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.replicas[0].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
		t.Fatal(err)
	}
	// The token's Redis key names the key's lock too.
	rdb := f.redis.Client()
	keys, err := rdb.Keys(ctx, "{tokenbroker}:t:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("token keys in Redis: %v, %v; want one", keys, err)
	}
	hexKey := strings.TrimPrefix(keys[0], "{tokenbroker}:t:")
	// A replica took the lock for a new fetch and died: the lock stays,
	// and no token was filed.
	if err := rdb.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "{tokenbroker}:l:"+hexKey, "a-replica-that-died", 1500*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := f.replicas[1].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
		done <- err
	}()
	// Replica B waits while the lock lives.
	for f.stats(t, ctx, 1).GetSharedTier().GetWaits() == 0 {
		select {
		case err := <-done:
			t.Fatalf("GetToken ended (%v) before waiting for the lock", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if ttl := rdb.PTTL(ctx, "{tokenbroker}:l:"+hexKey).Val(); ttl > 0 {
		if got := f.issuer.Requests(); got != 1 {
			t.Errorf("while the dead replica's lock lives: got %d upstream requests, want 1", got)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("GetToken on replica B: %v", err)
	}
	if got := f.issuer.Requests(); got != 2 {
		t.Errorf("after the lock expired: got %d upstream requests, want 2", got)
	}
}

// TestFleetSurvivesRedisOutage: with Redis stopped, then paused (SIGSTOP),
// callers see no error and the fallback shows in the stats; when Redis
// is back, the replicas share tokens again by themselves.
func TestFleetSurvivesRedisOutage(t *testing.T) {
	f := startFleet(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := 0
	// newKey returns a selector for credentials no replica has seen.
	newKey := func() *tokenbrokerv1.TokenSelector {
		client++
		id := fmt.Sprintf("outage-client-%d", client)
		f.issuer.AddClient(devissuer.Client{ID: id, Secret: "s3cret-" + id, Scopes: []string{"api/read"}})
		return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
			ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: "test", ClientId: id, ClientSecret: "s3cret-" + id},
		}}
	}
	// getOnAll asks every replica for sel and returns how many upstream
	// requests that took.
	getOnAll := func(sel *tokenbrokerv1.TokenSelector) int64 {
		before := f.issuer.Requests()
		for i, r := range f.replicas {
			if _, err := r.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel}); err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
		}
		return f.issuer.Requests() - before
	}
	if n := getOnAll(newKey()); n != 1 {
		t.Fatalf("with Redis up: %d upstream requests for one key on 2 replicas, want 1", n)
	}
	cached := heldSelector("api/read")
	getOnAll(cached)

	for _, outage := range []struct {
		name       string
		start, end func()
	}{
		{"stopped", f.redis.Stop, f.redis.Restart},
		{"paused", f.redis.Pause, f.redis.Resume},
	} {
		outage.start()
		for range 5 {
			getOnAll(newKey())
			getOnAll(cached)
		}
		for i := range f.replicas {
			st := f.stats(t, ctx, i).GetSharedTier()
			if st.GetFallbacks() == 0 || st.GetErrors() == 0 {
				t.Errorf("Redis %s: replica %d stats show %d fallbacks and %d errors, want both > 0", outage.name, i, st.GetFallbacks(), st.GetErrors())
			}
		}
		outage.end()
		// Sharing resumes by itself once a replica's breaker lets a probe
		// through (breaker_cooldown is 200ms here).
		for n := getOnAll(newKey()); n != 1; n = getOnAll(newKey()) {
			select {
			case <-ctx.Done():
				t.Fatalf("Redis %s and back: sharing did not resume (%d upstream requests per key)", outage.name, n)
			case <-time.After(50 * time.Millisecond):
			}
		}
		for i := range f.replicas {
			if st := f.stats(t, ctx, i).GetSharedTier(); st.GetState() != tokenbrokerv1.SharedTierStats_STATE_CLOSED {
				t.Errorf("Redis %s and back: replica %d breaker %v, want closed", outage.name, i, st.GetState())
			}
		}
	}
}

// TestFleetValuesAreSealed: what Redis holds and carries never contains a
// token or a secret in the clear.
func TestFleetValuesAreSealed(t *testing.T) {
	f := startFleet(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := f.redis.Client()
	sub := rdb.Subscribe(ctx, "{tokenbroker}:events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	var tokens []string
	for _, sel := range []*tokenbrokerv1.TokenSelector{heldSelector("api/read"), passSelector(passSecret, "api/read")} {
		resp, err := f.replicas[0].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, resp.GetToken().GetAccessToken())
	}
	var raw []string
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "{tokenbroker}:t:") {
			raw = append(raw, rdb.Get(ctx, k).Val())
		}
	}
	if len(raw) != 2 {
		t.Fatalf("got %d token values in Redis (keys %v), want 2", len(raw), keys)
	}
	for range 2 {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, m.Payload)
	}
	for _, v := range raw {
		for _, s := range append(tokens, heldSecret, passSecret) {
			if strings.Contains(v, s) {
				t.Fatalf("Redis holds a token or secret in the clear")
			}
		}
		// Every dot-separated part of the JWTs (header, claims,
		// signature) is absent too.
		for _, tok := range tokens {
			for _, part := range strings.Split(tok, ".") {
				if strings.Contains(v, part) {
					t.Fatalf("Redis holds part of a token in the clear")
				}
			}
		}
	}
}

// TestFleetInvalidationWithRedisDown: an invalidation made while Redis is
// down still applies on the replica that got it, and the operator is told
// (UNAVAILABLE) that the other replicas were not.
func TestFleetInvalidationWithRedisDown(t *testing.T) {
	f := startFleet(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.replicas[0].client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
		t.Fatal(err)
	}
	f.redis.Stop()
	_, err := f.replicas[0].admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{
		Selector: &tokenbrokerv1.InvalidateTokensRequest_All{All: true},
	})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "invalidated on this replica only") {
		t.Fatalf("got %v, want UNAVAILABLE saying the invalidation held on this replica only", err)
	}
	list, err := f.replicas[0].admin.ListTokens(ctx, &tokenbrokerv1.ListTokensRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Errorf("replica A lists %d entries (%v) after the invalidation, want 0", len(list.GetEntries()), err)
	}
}
