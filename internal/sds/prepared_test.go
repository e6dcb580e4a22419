package sds_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"

	"github.com/tokenbroker/tokenbroker/internal/apptest"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/sds"
)

// TestEncodesOncePerVersion: 20 streams subscribed to one secret (one of
// them to two secrets) receive its token from one encoded response: the
// same nonce on every stream, derived from the name and version, which
// each stream's ACK matches (every ACK counted, none taken for stale).
func TestEncodesOncePerVersion(t *testing.T) {
	// No response expires from the share while the streams open, however
	// slow the machine.
	t.Cleanup(sds.SetPreparedLinger(time.Hour)) // restored after the broker stopped
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)

	// Warm the key so that every stream below sees the same token.
	first := open(t, context.Background(), c, "sidecar-0", "", "api")
	r0 := first.recv()
	first.ack(r0, "api")
	before := sds.PreparedEncodes()

	const n = 20
	for i := 1; i < n; i++ {
		names := []string{"api"}
		if i == n-1 {
			names = append(names, "api-write")
		}
		s := open(t, context.Background(), c, "sidecar", "", names...)
		got := map[string]string{}
		for range names {
			r := s.recv()
			name, _ := secretOf(t, r)
			got[name] = r.GetNonce()
			if name == "api" && (r.GetNonce() != r0.GetNonce() || r.GetVersionInfo() != r0.GetVersionInfo()) {
				t.Errorf("stream %d: got version %s nonce %q, want the first stream's %s %q", i, r.GetVersionInfo(), r.GetNonce(), r0.GetVersionInfo(), r0.GetNonce())
			}
			s.ack(r, names...)
		}
		if len(names) == 2 && got["api"] == got["api-write"] {
			t.Errorf("two secrets on one stream share the nonce %q", got["api"])
		}
	}
	// api at one version once; api-write once.
	if got := sds.PreparedEncodes() - before; got != 1 {
		t.Errorf("responses encoded for %d more streams: got %d, want 1 (api-write's)", n-1, got)
	}
	waitMetric(t, h, `tokenbroker_sds_acks_total{secret="api"}`, n)
	waitMetric(t, h, `tokenbroker_sds_acks_total{secret="api-write"}`, 1)
}

// TestExpiredTokenIsWithdrawn: during an outage that outlasts the token,
// the sidecar keeps its token until it expires, then gets the secret
// with an empty value (Envoy's generic injector then sends no credential
// rather than an expired one), ACKs it, and gets the recovery's token
// when the token endpoint is back.
func TestExpiredTokenIsWithdrawn(t *testing.T) {
	// Waits out real token lifetimes on its own app, issuer and ports;
	// shares no package state with the other tests.
	t.Parallel()
	issuer, err := devissuer.New(devissuer.Config{Lifetime: 2 * time.Second, Clients: []devissuer.Client{
		{ID: apptest.HeldID, Secret: apptest.HeldSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		issuer.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	cfg := apptest.Config(hs.URL + devissuer.TokenPath)
	cfg.Cache.MinRemaining = config.Duration(100 * time.Millisecond)
	cfg.SDS.Enabled = true
	cfg.SDSSecrets = []config.SDSSecret{{Name: "api", Client: apptest.HeldClient, Scopes: []string{"api/read"}}}
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)

	s := open(t, context.Background(), c, "sidecar", "", "api")
	r1 := s.recv()
	_, value := secretOf(t, r1)
	exp := claims(t, value).Expiry.Time().Add(-time.Second) // whole seconds
	down.Store(true)
	s.ack(r1, "api")

	r2 := s.recv()
	var sec tlsv3.Secret
	if err := r2.GetResources()[0].UnmarshalTo(&sec); err != nil {
		t.Fatal(err)
	}
	if v := sec.GetGenericSecret().GetSecret().GetInlineString(); v != "" || sec.GetName() != "api" {
		t.Fatalf("after the token expired: got secret %q with a value of %d bytes, want api empty", sec.GetName(), len(v))
	}
	if now := time.Now(); now.Before(exp) {
		t.Errorf("the empty secret came at %v, before the token's expiry %v", now, exp)
	}
	if want := r1.GetVersionInfo() + "-expired"; r2.GetVersionInfo() != want {
		t.Errorf("version of the empty secret: got %q, want %q", r2.GetVersionInfo(), want)
	}
	s.ack(r2, "api")
	down.Store(false)

	r3 := s.recv()
	if name, _ := secretOf(t, r3); name != "api" {
		t.Errorf("after recovery: got secret %q, want api", name)
	}
	waitMetric(t, h, `tokenbroker_sds_acks_total{secret="api"}`, 2)
	if n := h.logs.Count(slog.LevelWarn, "sent the empty secret"); n != 1 {
		t.Errorf("log lines of the withdrawal: got %d, want 1", n)
	}
}

// TestCompressedStreamSharesNoBytes: a sidecar whose client compresses
// (grpc-encoding: gzip, so the broker compresses its responses) opens
// first and gets the secret encoded for it; a plain sidecar of the same
// secret and version opening next gets the response uncompressed and
// intact, not the gzip stream's bytes.
func TestCompressedStreamSharesNoBytes(t *testing.T) {
	// The gzip stream's response is still shared when the plain one opens,
	// however slow the machine.
	t.Cleanup(sds.SetPreparedLinger(time.Hour)) // restored after the broker stopped
	cfg, issuer := sdsConfig(t)
	issuer.SetLifetime(time.Hour)
	h := start(t, cfg, issuer)
	c, _ := dial(t, h.addr)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := c.StreamSecrets(ctx, grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatalf("StreamSecrets with gzip: %v", err)
	}
	zipped := &sidecar{t: t, stream: st, cancel: cancel, node: &corev3.Node{Id: "sidecar-gzip", Cluster: "test"}}
	zipped.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"api"}})
	r0 := zipped.recv()
	_, want := secretOf(t, r0)
	zipped.ack(r0, "api")

	plain := open(t, context.Background(), c, "sidecar-plain", "", "api")
	r1, err := plain.recvErr()
	if err != nil {
		t.Fatalf("plain sidecar's Recv: got %v, want the secret", err)
	}
	if _, got := secretOf(t, r1); got != want || r1.GetVersionInfo() != r0.GetVersionInfo() || r1.GetNonce() != r0.GetNonce() {
		t.Errorf("plain sidecar: got version %s nonce %q (same value: %t), want the gzip sidecar's %s %q",
			r1.GetVersionInfo(), r1.GetNonce(), got == want, r0.GetVersionInfo(), r0.GetNonce())
	}
}
