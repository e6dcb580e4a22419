package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestUnavailableWhileRefreshHangs: a refresh that hangs (the endpoint
// never answers within fetch_timeout) does not leave watchers holding a
// token below min_remaining: the moment it falls below is an event of its
// own, EventUnavailable, sent while the fetch is still in flight.
func TestUnavailableWhileRefreshHangs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 4 * time.Minute // refresh at 3m, below min_remaining at 3m30s
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if n > 1 {
				<-ctx.Done() // hangs until fetch_timeout
				return upstream.Token{}, ctx.Err()
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{FetchTimeout: 5 * time.Minute})
		t.Cleanup(b.Close) // ends the fetch still hanging
		runBroker(t, b)
		w := mustWatch(t, b, held())
		first := w.Initial()
		time.Sleep(time.Until(first.ExpiresAt.Add(-30*time.Second)) - time.Nanosecond)
		synctest.Wait()
		noEvent(t, w)
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("got %d upstream calls, want 2 (the refresh is in flight)", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		ev := next(t, w)
		if ev.Kind != EventUnavailable || !errors.Is(ev.Err, upstream.ErrUnavailable) || ev.Token.AccessToken != "" {
			t.Fatalf("when the token fell below min_remaining: got %v %v, want unavailable (ErrUnavailable) with no token", ev.Kind, ev.Err)
		}
		// Not told twice when the hanging fetch finally fails.
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		noEvent(t, w)
	})
}

// handlerTransport serves HTTP requests with an http.Handler in memory:
// a real token endpoint and a real upstream client, without sockets, so
// both run inside a synctest bubble.
type handlerTransport struct{ h http.Handler }

func (tr handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	tr.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// faultyEndpoint is a token endpoint that answers 503 while down, and
// counts the requests it receives per scope.
type faultyEndpoint struct {
	mu     sync.Mutex
	down   bool
	hang   bool
	counts map[string]int
	times  map[string][]time.Duration
	start  time.Time
}

func newFaultyEndpoint() *faultyEndpoint {
	return &faultyEndpoint{counts: map[string]int{}, times: map[string][]time.Duration{}, start: time.Now()}
}

func (f *faultyEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	scope := r.PostForm.Get("scope")
	f.mu.Lock()
	f.counts[scope]++
	f.times[scope] = append(f.times[scope], time.Since(f.start))
	down, hang := f.down, f.hang
	f.mu.Unlock()
	switch {
	case hang:
		<-r.Context().Done()
		return
	case down:
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":"tok-%s-%d","token_type":"Bearer","expires_in":3600}`, scope, time.Now().UnixNano())
}

func (f *faultyEndpoint) set(down, hang bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down, f.hang = down, hang
}

func (f *faultyEndpoint) requests(scope string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[scope]
}

// upstreamAttempts is how many HTTP attempts the test's upstream client
// makes at most per fetch (config's default).
const upstreamAttempts = 4

// newUpstreamBroker builds a broker whose provider "p" is a real
// upstream client talking to h in memory.
func newUpstreamBroker(t *testing.T, h http.Handler, cfg Config) *Broker {
	t.Helper()
	c, err := upstream.New(upstream.Provider{
		Name: "p", TokenURL: "https://auth.example.com/oauth2/token", AuthMethod: upstream.AuthBasic,
		Timeout: 5 * time.Second, RateLimit: 1000, Burst: 100, DefaultLifetime: time.Hour,
		PassthroughShare: 0.5, PassthroughCallerShare: 0.25, PassthroughClientShare: 0.25,
	}, upstream.Options{HTTPClient: &http.Client{Transport: handlerTransport{h}}, Logger: slog.New(slog.DiscardHandler),
		MaxAttempts: upstreamAttempts, BaseBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return newBroker(t, c, cfg)
}

// backoffSteps is how many requests the key backoff allows in d when
// every wait is the longest of its window (1 s doubling, capped at 5 s
// for a key without a token): the first, and one per step after it.
func backoffSteps(d time.Duration) int {
	n := 0
	for at := time.Duration(0); at < d; at += min(starvedRetryMax, time.Second<<(n-1)) {
		n++
	}
	return n
}

// TestDownEndpointIsNotHammered: with the token endpoint answering 503
// for 45 s and 50 callers asking 10 times a second for two keys that have
// no token, each key costs at most one upstream request per backoff step
// (plus the retries inside its very first fetch, made before anything had
// failed); callers are refused at once with Unavailable and a retry
// delay; once the endpoint is back every caller is served within the
// 5 s backoff cap.
func TestDownEndpointIsNotHammered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ep := newFaultyEndpoint()
		ep.set(true, false)
		var logs testkit.LogBuffer
		b := newUpstreamBroker(t, ep, Config{Logger: testkit.JSONLogger(&logs)})
		b.randN = func(n int64) int64 { return n - 1 } // the longest wait of each window
		t.Cleanup(b.Close)
		runBroker(t, b)
		const outage = 45 * time.Second
		start := time.Now()
		var mu sync.Mutex
		var wrong []string
		var refused, served int
		lastFailure := map[int]time.Duration{}
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				scope := []string{"a", "b"}[i%2]
				for time.Since(start) < outage+10*time.Second {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					_, err := b.GetToken(ctx, held(scope))
					cancel()
					mu.Lock()
					switch {
					case err == nil:
						served++
					case errors.Is(err, upstream.ErrUnavailable):
						refused++
						lastFailure[i] = time.Since(start)
						var rd interface{ RetryDelay() time.Duration }
						if time.Since(start) > 10*time.Second && (!errors.As(err, &rd) || rd.RetryDelay() <= 0) {
							wrong = append(wrong, fmt.Sprintf("at %v: %v without a retry delay", time.Since(start), err))
						}
					default:
						wrong = append(wrong, fmt.Sprintf("at %v: %v", time.Since(start), err))
					}
					mu.Unlock()
					time.Sleep(100 * time.Millisecond)
				}
			})
		}
		time.Sleep(outage)
		ep.set(false, false)
		during := map[string]int{"a": ep.requests("a"), "b": ep.requests("b")}
		wg.Wait()

		allowed := backoffSteps(outage) + upstreamAttempts - 1
		for scope, n := range during {
			if n == 0 || n > allowed {
				t.Errorf("key %q: got %d upstream requests during the %v outage, want between 1 and %d (one per backoff step)", scope, n, outage, allowed)
			}
		}
		if len(wrong) > 0 {
			t.Errorf("%d calls failed otherwise than Unavailable with a retry delay, first: %s", len(wrong), wrong[0])
		}
		for i, at := range lastFailure {
			if at > outage+starvedRetryMax+time.Second {
				t.Errorf("caller %d still failed at %v, want served within %v of the endpoint's return at %v", i, at, starvedRetryMax, outage)
			}
		}
		// The recovery line counts the HTTP requests the outage cost, the
		// retries inside a fetch included, and the successful probe.
		var recovered []map[string]any
		for _, r := range logs.Records(t) {
			if r["msg"] == "token endpoint recovered" {
				recovered = append(recovered, r)
			}
		}
		if want := float64(during["a"] + during["b"] + 1); len(recovered) != 1 || recovered[0]["requests"] != want {
			t.Errorf("recovery log lines: got %v, want one with requests %v (the endpoint's count, plus the probe that succeeded)", recovered, want)
		}
		if refused < 20_000 || served == 0 {
			t.Errorf("got %d calls refused and %d served, want most of the ~22,500 calls of the outage refused and the rest served", refused, served)
		}
	})
}

// TestWatchOnlyKeyRecoversPromptly: a key with a watcher and no GetToken
// callers, whose refresh backoff has grown to a minute during an outage,
// is retried within recoverySpread (2 s) of the first request to its
// provider that succeeds, instead of at the end of its backoff.
func TestWatchOnlyKeyRecoversPromptly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		var down atomic.Bool
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if down.Load() {
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrUnavailable, Provider: "p", Status: 503}
			}
			return inner.fn(ctx, n, r)
		}}
		b := newBroker(t, f, Config{Logger: slog.New(slog.DiscardHandler)})
		b.randN = func(n int64) int64 { return n - 1 } // the longest wait of each window
		runBroker(t, b)
		w := mustWatch(t, b, held("watched"))
		down.Store(true)
		// Refresh at 7m30s, retries 1, 2, 4, 8, 16 and 32 s later: the
		// last at 8m33s, the next one due a minute after it.
		start := w.Initial().IssuedAt
		time.Sleep(time.Until(start.Add(8*time.Minute + 40*time.Second)))
		synctest.Wait()
		noEvent(t, w)
		down.Store(false)
		back := time.Now()
		mustGet(t, b, held("other")) // any request to the provider that succeeds
		time.Sleep(recoverySpread)
		synctest.Wait()
		select {
		case ev := <-w.Events():
			if ev.Kind != EventRefreshed {
				t.Fatalf("got %v, want refreshed", ev.Kind)
			}
			if at := ev.Token.IssuedAt.Sub(back); at > recoverySpread {
				t.Errorf("watch-only key refreshed %v after the endpoint's return, want within %v", at, recoverySpread)
			}
		default:
			t.Fatalf("watch-only key not refreshed within %v of the endpoint's return (its backoff ends at 9m33s)", recoverySpread)
		}
	})
}

// TestOutageLogged: a provider whose fetches keep failing is logged once
// as failing (a warning with the reason and the keys affected), however
// many requests fail, and once as recovered (info, with the outage's
// length and the upstream requests it cost).
func TestOutageLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = 10 * time.Minute
		var down atomic.Bool
		var failedCalls atomic.Int64
		inner := lifetimeFetcher(life)
		f := &stubFetcher{fn: func(ctx context.Context, n int64, r upstream.Request) (upstream.Token, error) {
			if down.Load() {
				failedCalls.Add(1)
				return upstream.Token{}, &upstream.Error{Kind: upstream.ErrUnavailable, Provider: "p", Status: 503}
			}
			return inner.fn(ctx, n, r)
		}}
		var buf testkit.LogBuffer
		b := newBroker(t, f, Config{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
		b.randN = func(n int64) int64 { return n - 1 }
		runBroker(t, b)
		firstFailure := time.Now().Add(7*time.Minute + 30*time.Second) // the refresh point
		mustWatch(t, b, held("a"))
		mustWatch(t, b, held("b"))
		down.Store(true)
		time.Sleep(7*time.Minute + 30*time.Second) // both refreshes fail, and retry
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		down.Store(false)
		upAt := time.Now()
		time.Sleep(time.Minute)
		synctest.Wait()

		var warns, infos []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			switch rec["msg"] {
			case "token endpoint recovered":
				infos = append(infos, rec)
			default:
				if strings.HasPrefix(rec["msg"].(string), "token endpoint failing") {
					warns = append(warns, rec)
				}
			}
		}
		if len(warns) != 1 {
			t.Fatalf("got %d 'failing' lines, want 1 for %d failed requests:\n%s", len(warns), failedCalls.Load(), buf.String())
		}
		if w := warns[0]; w["level"] != "WARN" || w["provider"] != "p" || !strings.Contains(fmt.Sprint(w["error"]), "503") || w["keys"] != 2.0 {
			t.Errorf("failing line: got %v, want WARN for provider p with the 503 and keys 2", w)
		}
		if len(infos) != 1 {
			t.Fatalf("got %d 'recovered' lines, want 1:\n%s", len(infos), buf.String())
		}
		in := infos[0]
		// The outage began with the first failed refresh and ended with
		// the first success after upAt (within the 5 s backoff cap).
		outage, err := time.ParseDuration(fmt.Sprint(in["outage"]))
		if least := upAt.Sub(firstFailure); err != nil || outage < least || outage > least+starvedRetryMax {
			t.Errorf("outage: got %v, want between %v and %v", in["outage"], least, least+starvedRetryMax)
		}
		if want := float64(failedCalls.Load() + 1); in["level"] != "INFO" || in["requests"] != want {
			t.Errorf("recovered line: got %v, want INFO with requests %v (the failed ones and the success)", in, want)
		}
	})
}
