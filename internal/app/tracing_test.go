package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

// recordSpans makes New trace into an in-memory exporter until the test
// ends. Tests using it must not be parallel (newTracing is the package's).
func recordSpans(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	old := newTracing
	newTracing = func(*slog.Logger) (*tracing.Tracing, error) { return tracing.New(tp), nil }
	t.Cleanup(func() {
		newTracing = old
		_ = tp.Shutdown(context.Background())
	})
	return exp
}

// TestTracingThroughTheApp: with tracing on, a GetToken miss makes a gRPC
// server span and, in the same trace, a child client span for the token
// request, whose traceparent header the token endpoint receives; the
// drop-in HTTP endpoint makes a server span; the call's log line carries
// its trace_id and span_id; the handling-time histogram has the trace id
// as exemplar; no span holds a secret or a token.
func TestTracingThroughTheApp(t *testing.T) {
	exp := recordSpans(t)
	var mu sync.Mutex
	var traceparents []string
	_, tokenURL := startIssuer(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			traceparents = append(traceparents, r.Header.Get("traceparent"))
			mu.Unlock()
			next.ServeHTTP(w, r)
		})
	})
	cfg := stackConfig(tokenURL)
	logs := &testkit.LogBuffer{}
	addr, httpAddr, stop := serveAppHTTP(t, cfg, Keys{}, testkit.JSONLogger(logs))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s := &stack{addr: addr}
	resp, err := s.dial(t).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: passSelector(passSecret, "api/read")})
	if err != nil {
		t.Fatal(err)
	}
	tokens := []string{resp.GetToken().GetAccessToken()}

	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"api/write"}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+httpAddr+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(heldID, heldSecret)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusOK {
		t.Fatalf("drop-in endpoint: got status %d, want 200", hr.StatusCode)
	}
	var dropIn struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &dropIn); err != nil || dropIn.AccessToken == "" {
		t.Fatalf("drop-in endpoint's answer has no access_token (%v)", err)
	}
	tokens = append(tokens, dropIn.AccessToken)

	mreq, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	mreq.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	mr, err := http.DefaultClient.Do(mreq)
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	stop()

	spans := exp.GetSpans()
	var server, client, httpServer *tracetest.SpanStub
	for i := range spans {
		sp := &spans[i]
		switch {
		case sp.SpanKind == trace.SpanKindServer && sp.Name == "tokenbroker.v1.TokenBrokerService/GetToken":
			server = sp
		case sp.SpanKind == trace.SpanKindServer && sp.Name == "POST /oauth2/token":
			httpServer = sp
		}
	}
	if server == nil || httpServer == nil {
		t.Fatalf("got spans %v, want a GetToken gRPC server span and a POST /oauth2/token HTTP server span", spanNames(spans))
	}
	for _, sp := range spans {
		if sp.Name == "GET /metrics" || strings.HasPrefix(sp.Name, "grpc.health") {
			t.Errorf("got span %q, want none for scrapes and probes", sp.Name)
		}
	}
	for i := range spans {
		sp := &spans[i]
		if sp.SpanKind == trace.SpanKindClient && sp.SpanContext.TraceID() == server.SpanContext.TraceID() {
			client = sp
		}
	}
	if client == nil {
		t.Fatalf("got spans %v, want a client span in the GetToken call's trace", spanNames(spans))
	}
	if client.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Errorf("upstream span's parent: got %s, want the GetToken server span %s", client.Parent.SpanID(), server.SpanContext.SpanID())
	}
	want := "00-" + client.SpanContext.TraceID().String() + "-" + client.SpanContext.SpanID().String() + "-01"
	mu.Lock()
	gotTP := append([]string(nil), traceparents...)
	mu.Unlock()
	if len(gotTP) == 0 || gotTP[0] != want {
		t.Errorf("token endpoint's traceparent headers: got %q, want first %q", gotTP, want)
	}

	var line map[string]any
	for _, r := range logs.Records(t) {
		if r["msg"] == "finished call" && r["grpc.method"] == "GetToken" {
			line = r
		}
	}
	if line == nil {
		t.Fatalf("no finished-call log line for GetToken in %s", logs.String())
	}
	if line["trace_id"] != server.SpanContext.TraceID().String() || line["span_id"] != server.SpanContext.SpanID().String() {
		t.Errorf("access log line: got trace_id %v span_id %v, want %s %s", line["trace_id"], line["span_id"], server.SpanContext.TraceID(), server.SpanContext.SpanID())
	}
	if ex := `trace_id="` + server.SpanContext.TraceID().String() + `"`; !strings.Contains(string(metricsText), ex) {
		t.Errorf("OpenMetrics /metrics has no exemplar %s", ex)
	}

	secrets := append([]string{passSecret, heldSecret}, tokens...)
	for _, sp := range spans {
		for _, text := range spanTexts(sp) {
			for _, sec := range secrets {
				if strings.Contains(text, sec) {
					t.Errorf("span %q holds a secret or a token: %q", sp.Name, text)
				}
			}
		}
	}
}

// spanNames lists the spans' kinds and names, for failure messages.
func spanNames(spans tracetest.SpanStubs) []string {
	var names []string
	for _, sp := range spans {
		names = append(names, sp.SpanKind.String()+":"+sp.Name)
	}
	return names
}

// spanTexts is every text a span carries: its name, status, attribute
// values and events' names and attribute values.
func spanTexts(sp tracetest.SpanStub) []string {
	texts := []string{sp.Name, sp.Status.Description}
	for _, a := range sp.Attributes {
		texts = append(texts, string(a.Key)+"="+a.Value.String())
	}
	for _, e := range sp.Events {
		texts = append(texts, e.Name)
		for _, a := range e.Attributes {
			texts = append(texts, string(a.Key)+"="+a.Value.String())
		}
	}
	return texts
}

// TestTracingOffInstallsNothing: with OTEL_TRACES_EXPORTER unset or
// "none", New's tracing is off and installs no stats handler, no metrics
// exemplar, no transport or handler wrapper and no Redis hook.
func TestTracingOffInstallsNothing(t *testing.T) {
	for _, v := range []string{"", "none"} {
		t.Setenv("OTEL_TRACES_EXPORTER", v)
		tr, err := newTracing(slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if tr != nil {
			t.Fatalf("OTEL_TRACES_EXPORTER=%q: got tracing on, want off", v)
		}
		if h := statsHandlers(tr); h != nil {
			t.Errorf("OTEL_TRACES_EXPORTER=%q: got stats handlers %v, want none", v, h)
		}
		if o := metricsOptions(tr); o != nil {
			t.Errorf("OTEL_TRACES_EXPORTER=%q: got metrics options %v, want none", v, o)
		}
		if tr.WrapTransport() != nil || tr.RedisHook() != nil {
			t.Errorf("OTEL_TRACES_EXPORTER=%q: got a transport wrapper or a Redis hook, want none", v)
		}
	}
}

// TestTracingSharedTier: with the Redis tier, a GetToken miss makes client
// spans for the tier's Redis commands, children in the call's trace,
// naming the command only (no key, no sealed token, no token); the tier's
// background commands (probes, subscription) make no span.
func TestTracingSharedTier(t *testing.T) {
	exp := recordSpans(t)
	f := &testFleet{redis: redistest.Start(t)}
	_, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Shared.Redis.Addrs = []string{f.redis.Addr()}
	cfg.Shared.Redis.OpTimeout = config.Duration(time.Second)
	addr, stop := serveApp(t, cfg, Keys{}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stack{addr: addr}
	resp, err := s.dial(t).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")})
	if err != nil {
		t.Fatal(err)
	}
	stop()

	spans := exp.GetSpans()
	var server *tracetest.SpanStub
	for i := range spans {
		if spans[i].SpanKind == trace.SpanKindServer && spans[i].Name == "tokenbroker.v1.TokenBrokerService/GetToken" {
			server = &spans[i]
		}
	}
	if server == nil {
		t.Fatalf("got spans %v, want a GetToken server span", spanNames(spans))
	}
	redisSpans := 0
	for _, sp := range spans {
		if !strings.HasPrefix(sp.Name, "redis ") {
			continue
		}
		redisSpans++
		if sp.SpanContext.TraceID() != server.SpanContext.TraceID() {
			t.Errorf("redis span %q: got trace %s, want the GetToken call's %s", sp.Name, sp.SpanContext.TraceID(), server.SpanContext.TraceID())
		}
		for _, text := range spanTexts(sp) {
			if strings.Contains(text, heldSecret) || strings.Contains(text, resp.GetToken().GetAccessToken()) || strings.Contains(text, "{tokenbroker}") {
				t.Errorf("redis span %q records more than the command: %q", sp.Name, text)
			}
		}
	}
	if redisSpans == 0 {
		t.Errorf("got spans %v, want redis client spans in the GetToken call's trace", spanNames(spans))
	}
}
