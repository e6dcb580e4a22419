package sds_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/app"
	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/sds"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// wait bounds every wait of these tests; a push is due within the token
// lifetime below.
const wait = 30 * time.Second

// lifetime is the dev issuer's token lifetime: short, so that refreshes
// happen within a test.
const lifetime = 4 * time.Second

// harness is a broker (the whole app, SDS on) with its token endpoint.
type harness struct {
	issuer *devissuer.Issuer
	addr   string // the gRPC listener (TCP)
	http   string // the HTTP listener (/metrics)
	logs   *testkit.LogBuffer
	cancel context.CancelFunc
	done   chan error
}

// sdsConfig returns the configuration of the tests: the secret "api"
// (client held, scope api/read), short tokens, SDS on the gRPC listener.
func sdsConfig(t *testing.T) (config.Config, *devissuer.Issuer) {
	t.Helper()
	issuer, tokenURL := apptest.StartIssuer(t)
	issuer.SetLifetime(lifetime)
	cfg := apptest.Config(tokenURL)
	cfg.Cache.MinRemaining = config.Duration(100 * time.Millisecond)
	cfg.SDS.Enabled = true
	cfg.SDSSecrets = []config.SDSSecret{
		{Name: "api", Client: apptest.HeldClient, Scopes: []string{"api/read"}},
		{Name: "api-write", Client: apptest.HeldClient, Scopes: []string{"api/write"}},
	}
	return cfg, issuer
}

// start serves cfg on loopback until stop or the test's end.
func start(t *testing.T, cfg config.Config, issuer *devissuer.Issuer) *harness {
	t.Helper()
	logs := &testkit.LogBuffer{}
	a, err := app.New(cfg, app.Keys{}, testkit.JSONLogger(logs))
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{issuer: issuer, addr: l.Addr().String(), http: hl.Addr().String(), logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- a.Serve(ctx, l, nil, hl) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop shuts the broker down and checks that Serve returned nil.
func (h *harness) stop(t *testing.T) {
	t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Serve: got %v, want nil", err)
		}
	case <-time.After(wait):
		t.Errorf("Serve did not return within %v of the shutdown", wait)
	}
}

// dial returns an SDS client on target.
func dial(t *testing.T, target string) (secretv3.SecretDiscoveryServiceClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(cc), cc
}

// sidecar is an SDS stream as Envoy drives it.
type sidecar struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	cancel context.CancelFunc
	node   *corev3.Node
}

// open opens a stream and sends the initial request for names, with the
// version the sidecar already holds ("" for none).
func open(t *testing.T, ctx context.Context, c secretv3.SecretDiscoveryServiceClient, node, version string, names ...string) *sidecar {
	t.Helper()
	s, err := openErr(t, ctx, c, node, version, names...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openErr is open for goroutines other than the test's.
func openErr(t *testing.T, ctx context.Context, c secretv3.SecretDiscoveryServiceClient, node, version string, names ...string) (*sidecar, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.StreamSecrets(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("StreamSecrets: %w", err)
	}
	s := &sidecar{t: t, stream: st, cancel: cancel, node: &corev3.Node{Id: node, Cluster: "test"}}
	t.Cleanup(cancel)
	s.send(&discoveryv3.DiscoveryRequest{VersionInfo: version, ResourceNames: names})
	return s, nil
}

// send sends req as the sidecar's (a failure fails the test, from any
// goroutine).
func (s *sidecar) send(req *discoveryv3.DiscoveryRequest) {
	s.t.Helper()
	req.Node = s.node
	req.TypeUrl = sds.TypeURL
	// io.EOF: the server already ended the stream (an Unimplemented or
	// refused stream can end before the request is written); its status is
	// what the next Recv returns, which the test checks.
	if err := s.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		s.t.Errorf("Send: %v", err)
	}
}

// recv receives one response, failing the test on an error.
func (s *sidecar) recv() *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	resp, err := s.recvErr()
	if err != nil {
		s.t.Fatalf("Recv: %v", err)
	}
	return resp
}

// recvErr receives one response within wait.
func (s *sidecar) recvErr() (*discoveryv3.DiscoveryResponse, error) {
	type result struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := s.stream.Recv()
		ch <- result{resp, err}
	}()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-time.After(wait):
		s.cancel()
		<-ch
		return nil, errors.New("no response within " + wait.String())
	}
}

// ack acknowledges resp with its version and nonce, for names.
func (s *sidecar) ack(resp *discoveryv3.DiscoveryResponse, names ...string) {
	s.t.Helper()
	s.send(&discoveryv3.DiscoveryRequest{VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names})
}

// secretOf returns the name and the header value of resp's one secret.
func secretOf(t *testing.T, resp *discoveryv3.DiscoveryResponse) (name, value string) {
	t.Helper()
	name, value, err := secretErr(resp)
	if err != nil {
		t.Fatal(err)
	}
	return name, value
}

// secretErr is secretOf for goroutines other than the test's.
func secretErr(resp *discoveryv3.DiscoveryResponse) (name, value string, err error) {
	if got := resp.GetTypeUrl(); got != sds.TypeURL {
		return "", "", fmt.Errorf("type_url: got %q, want %q", got, sds.TypeURL)
	}
	if n := len(resp.GetResources()); n != 1 {
		return "", "", fmt.Errorf("got %d resources, want 1", n)
	}
	var sec tlsv3.Secret
	if err := resp.GetResources()[0].UnmarshalTo(&sec); err != nil {
		return "", "", fmt.Errorf("resource: %w", err)
	}
	v := sec.GetGenericSecret().GetSecret().GetInlineString()
	if !strings.HasPrefix(v, "Bearer ") || len(v) < len("Bearer ")+10 {
		return "", "", fmt.Errorf("secret %q: got a value of %d bytes that is not a bearer header value", sec.GetName(), len(v))
	}
	return sec.GetName(), v, nil
}

// claims decodes the dev issuer's JWT in a header value (unverified: the
// tests only read its times).
func claims(t *testing.T, header string) devissuer.Claims {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(header, "Bearer "), ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var c devissuer.Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("JWT claims: %v", err)
	}
	return c
}

// versionTime returns the issue time a version stands for.
func versionTime(t *testing.T, v string) time.Time {
	t.Helper()
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("version %q: %v", v, err)
	}
	return time.Unix(0, n)
}

// TestStreamsGetTokenThenRefresh: 100 sidecars subscribe to one secret;
// each receives the token at once, ACKs it, then receives the next
// token, pushed before the first one expired; the token endpoint saw one
// request per token for all of them.
func TestStreamsGetTokenThenRefresh(t *testing.T) {
	// Waits out real token lifetimes on its own app, issuer and ports;
	// shares no package state with the other tests.
	t.Parallel()
	cfg, issuer := sdsConfig(t)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	ctx := context.Background()

	const n = 100
	type seen struct {
		v1, v2 string
		h1, h2 string
	}
	results := make([]seen, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			s, err := openErr(t, ctx, c, "sidecar-"+strconv.Itoa(i), "", "api")
			if err != nil {
				errs <- err
				return
			}
			r1, err := s.recvErr()
			if err != nil {
				errs <- err
				return
			}
			_, h1, err := secretErr(r1)
			if err != nil {
				errs <- err
				return
			}
			s.ack(r1, "api")
			r2, err := s.recvErr()
			if err != nil {
				errs <- err
				return
			}
			_, h2, err := secretErr(r2)
			if err != nil {
				errs <- err
				return
			}
			s.ack(r2, "api")
			results[i] = seen{r1.GetVersionInfo(), r2.GetVersionInfo(), h1, h2}
		})
	}
	wg.Wait()
	requests := issuer.Requests()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	first := results[0]
	for i, r := range results {
		if r != first {
			t.Fatalf("stream %d saw versions %s, %s; stream 0 saw %s, %s: want the same tokens on every stream", i, r.v1, r.v2, first.v1, first.v2)
		}
	}
	if first.v1 == first.v2 || first.h1 == first.h2 {
		t.Fatalf("second push: got the same version %s (or token) again, want a new one", first.v2)
	}
	old := claims(t, first.h1)
	if issued := versionTime(t, first.v2); !issued.Before(old.Expiry.Time()) {
		t.Errorf("the new token was issued at %v, not before the old one expired at %v", issued, old.Expiry.Time())
	}
	if requests != 2 {
		t.Errorf("token endpoint requests for %d streams and two tokens: got %d, want 2", n, requests)
	}
	waitMetric(t, h, `tokenbroker_sds_acks_total{secret="api"}`, 2*n)
	waitMetric(t, h, `tokenbroker_sds_pushes_total{secret="api"}`, 2*n)
	waitMetric(t, h, `tokenbroker_sds_streams{secret="api"}`, n)
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, strings.TrimPrefix(first.h1, "Bearer ")) || strings.Contains(line, strings.TrimPrefix(first.h2, "Bearer ")) {
			t.Fatalf("a log line holds a token: %.80s...", line)
		}
	}
}

// TestReconnectGetsCurrentTokenAtOnce: a sidecar that reconnects with the
// version it holds gets the current token at once, from the cache.
func TestReconnectGetsCurrentTokenAtOnce(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	s := open(t, context.Background(), c, "sidecar", "", "api")
	r1 := s.recv()
	_, h1 := secretOf(t, r1)
	s.ack(r1, "api")
	s.cancel()

	again := open(t, context.Background(), c, "sidecar", r1.GetVersionInfo(), "api")
	r2 := again.recv()
	_, h2 := secretOf(t, r2)
	if r2.GetVersionInfo() != r1.GetVersionInfo() || h2 != h1 {
		t.Errorf("after reconnecting: got version %s, want the current %s", r2.GetVersionInfo(), r1.GetVersionInfo())
	}
	if got := issuer.Requests(); got != 1 {
		t.Errorf("token endpoint requests: got %d, want 1", got)
	}
}

// TestInvalidationPushesNewVersion: an operator's invalidation pushes the
// replacement token.
func TestInvalidationPushesNewVersion(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	h := start(t, cfg, issuer)
	c, cc := dial(t, h.addr)
	s := open(t, context.Background(), c, "sidecar", "", "api")
	r1 := s.recv()
	s.ack(r1, "api")

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := tokenbrokerv1.NewAdminServiceClient(cc).InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{
		Selector: &tokenbrokerv1.InvalidateTokensRequest_Client{Client: apptest.HeldClient},
	})
	if err != nil {
		t.Fatalf("InvalidateTokens: %v", err)
	}
	r2 := s.recv()
	if r2.GetVersionInfo() == r1.GetVersionInfo() || r2.GetNonce() == r1.GetNonce() {
		t.Errorf("after invalidation: got version %s nonce %s, want a new version and nonce (was %s, %s)", r2.GetVersionInfo(), r2.GetNonce(), r1.GetVersionInfo(), r1.GetNonce())
	}
}

// TestNackIsLoggedAndCounted: a NACK is logged (without the token, even
// when the sidecar's message quotes it) and counted; the stream goes on
// and the next token is pushed.
func TestNackIsLoggedAndCounted(t *testing.T) {
	// Waits out real token lifetimes on its own app, issuer and ports;
	// shares no package state with the other tests.
	t.Parallel()
	cfg, issuer := sdsConfig(t)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	s := open(t, context.Background(), c, "sidecar", "", "api")
	r1 := s.recv()
	_, value := secretOf(t, r1)
	s.send(&discoveryv3.DiscoveryRequest{
		ResponseNonce: r1.GetNonce(), ResourceNames: []string{"api"},
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "bad secret " + value},
	})
	r2 := s.recv() // the refresh
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Errorf("after the NACK: got version %s again, want the next token", r2.GetVersionInfo())
	}
	waitMetric(t, h, `tokenbroker_sds_nacks_total{secret="api"}`, 1)
	if got := h.logs.Count(slog.LevelWarn, "NACK"); got != 1 {
		t.Errorf("NACK log lines: got %d, want 1\n%s", got, h.logs.String())
	}
	logs := h.logs.String()
	if strings.Contains(logs, strings.TrimPrefix(value, "Bearer ")) {
		t.Error("the NACK log line holds the token")
	}
	if !strings.Contains(logs, "withheld") {
		t.Errorf("the NACK's message quoting the token: want it withheld, logs:\n%s", logs)
	}
}

// TestNackLogClipsClientFields: a NACK's node id, version_info and
// message, which the sidecar sends at any length, are logged cut to their
// limits.
func TestNackLogClipsClientFields(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	long := func(c string) string { return strings.Repeat(c, 5000) }
	s := open(t, context.Background(), c, long("n"), "", "api")
	r1 := s.recv()
	s.send(&discoveryv3.DiscoveryRequest{
		VersionInfo: long("v"), ResponseNonce: r1.GetNonce(), ResourceNames: []string{"api"},
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: long("m")},
	})
	waitMetric(t, h, `tokenbroker_sds_nacks_total{secret="api"}`, 1)
	logs := h.logs.String()
	for _, field := range []string{"n", "v", "m"} {
		if strings.Contains(logs, strings.Repeat(field, 513)) {
			t.Errorf("the NACK log line holds a %q field of 5000 bytes uncut", field)
		}
		if !strings.Contains(logs, strings.Repeat(field, 256)+"…") {
			t.Errorf("the NACK log line lacks the %q field cut and marked:\n%.2000s", field, logs)
		}
	}
}

// apiKeys configures callers "sidecar-a" (granted the secret "api" only,
// through its client and scope) and returns its key's metadata.
func apiKeys(cfg *config.Config) metadata.MD {
	const key = "sidecar-a-key-0123456789"
	sum := sha256.Sum256([]byte(key))
	cfg.Auth.AllowUnauthenticated = false
	cfg.Admin.Identities = nil
	cfg.Auth.APIKeys = []config.APIKey{{Identity: "sidecar-a", SHA256: hex.EncodeToString(sum[:])}}
	cfg.Policy = []config.PolicyRule{{Identity: "apikey:sidecar-a", Clients: []string{apptest.HeldClient}, Scopes: []string{"api/read"}}}
	return metadata.Pairs("authorization", "Bearer "+key)
}

// TestRefusedNamesRevealNothing: a name the caller's policy does not
// grant and a name that does not exist are refused alike, on streams and
// fetches, before any upstream request; a granted name is served.
func TestRefusedNamesRevealNothing(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	cfg.SDS.AllowParsedNames = true
	md := apiKeys(&cfg)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	ctx := metadata.NewOutgoingContext(context.Background(), md)

	want := status.New(codes.PermissionDenied, "resource_names[0]: "+sds.MsgRefused)
	for _, name := range []string{
		"api-write",                 // configured, not granted
		"no-such-secret",            // unknown
		"oauth2:held:api/write",     // parsed, scope not granted
		"oauth2:no-such-client:api", // parsed, unknown client
		"oauth2:held:",              // malformed
	} {
		s := open(t, ctx, c, "sidecar", "", name)
		_, err := s.recvErr()
		if st := status.Convert(err); st.Code() != want.Code() || st.Message() != want.Message() {
			t.Errorf("stream for %q: got %v, want %v", name, err, want.Err())
		}
		fctx, cancel := context.WithTimeout(ctx, wait)
		_, err = c.FetchSecrets(fctx, &discoveryv3.DiscoveryRequest{TypeUrl: sds.TypeURL, ResourceNames: []string{name}})
		cancel()
		if st := status.Convert(err); st.Code() != want.Code() || st.Message() != want.Message() {
			t.Errorf("fetch of %q: got %v, want %v", name, err, want.Err())
		}
	}
	if got := issuer.Requests(); got != 0 {
		t.Errorf("token endpoint requests for refused names: got %d, want 0", got)
	}

	// Unauthenticated: refused by the interceptors.
	s := open(t, context.Background(), c, "sidecar", "", "api")
	if _, err := s.recvErr(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a key: got %v, want Unauthenticated", err)
	}

	for _, name := range []string{"api", "oauth2:held:api/read"} {
		s := open(t, ctx, c, "sidecar", "", name)
		got, _ := secretOf(t, s.recv())
		if got != name {
			t.Errorf("secret name: got %q, want %q", got, name)
		}
		fctx, cancel := context.WithTimeout(ctx, wait)
		resp, err := c.FetchSecrets(fctx, &discoveryv3.DiscoveryRequest{TypeUrl: sds.TypeURL, ResourceNames: []string{name}})
		cancel()
		if err != nil {
			t.Fatalf("fetch of %q: %v", name, err)
		}
		if got, _ := secretOf(t, resp); got != name {
			t.Errorf("fetched secret name: got %q, want %q", got, name)
		}
	}
}

// TestShutdownEndsStreams: a broker shutdown ends every SDS stream at
// once with UNAVAILABLE "server shutting down", and Serve returns nil.
func TestShutdownEndsStreams(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	cfg.Server.ShutdownTimeout = config.Duration(time.Minute) // a stream left open would show as a late Serve
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)
	var streams []*sidecar
	for i := range 3 {
		s := open(t, context.Background(), c, "sidecar-"+strconv.Itoa(i), "", "api")
		s.ack(s.recv(), "api")
		streams = append(streams, s)
	}
	h.stop(t)
	for i, s := range streams {
		_, err := s.recvErr()
		if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != server.MsgShuttingDown {
			t.Errorf("stream %d: got %v, want Unavailable %q", i, err, server.MsgShuttingDown)
		}
	}
}

// TestOwnUnixListener: with sds.listen on a unix socket, SDS is served
// there (and not on the gRPC listener).
func TestOwnUnixListener(t *testing.T) {
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sds.sock")
	cfg.SDS.Listen = "unix:" + sock
	h := start(t, cfg, issuer)

	c, cc := dial(t, "unix://"+sock)
	// The socket opens as Serve starts: wait for it.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("health on sds.listen: %v", err)
	}
	s := open(t, context.Background(), c, "sidecar", "", "api")
	if name, _ := secretOf(t, s.recv()); name != "api" {
		t.Errorf("secret name: got %q, want api", name)
	}
	main, _ := dial(t, h.addr)
	m := open(t, context.Background(), main, "sidecar", "", "api")
	if _, err := m.recvErr(); status.Code(err) != codes.Unimplemented {
		t.Errorf("SDS on the gRPC listener with sds.listen set: got %v, want Unimplemented", err)
	}
	h.stop(t)
	if _, err := s.recvErr(); status.Code(err) != codes.Unavailable {
		t.Errorf("after shutdown: got %v, want Unavailable", err)
	}
}

// waitMetric waits, at most wait, for the series sample to reach want:
// the server counts an ACK after the client sent it, with nothing the
// client could wait for.
func waitMetric(t *testing.T, h *harness, sample string, want float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := metric(t, h, sample)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: got %v, want %v", sample, got, want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metric returns the value of the series named sample on /metrics.
func metric(t *testing.T, h *harness, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + h.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}
