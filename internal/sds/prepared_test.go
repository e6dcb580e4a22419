package sds_test

import (
	"context"
	"testing"
	"time"

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
