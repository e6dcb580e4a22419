package metrics

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenbroker/tokenbroker/internal/verifier"
)

// TestVerifierMetrics counts verifications by provider, outcome and
// source, and JWKS fetches by result.
func TestVerifierMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewVerifier(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Verified("cognito", "ok", verifier.SourceSignature)
	m.Verified("cognito", "ok", verifier.SourceCache)
	m.Verified("cognito", "ok", verifier.SourceCache)
	m.Verified(verifier.UnknownProvider, verifier.ReasonWrongIssuer.String(), verifier.SourceSignature)
	m.KeysFetched("cognito", nil)
	m.KeysFetched("cognito", errors.New("JWKS request: HTTP 503"))
	if got := testutil.ToFloat64(m.verifications.WithLabelValues("cognito", "ok", "cache")); got != 2 {
		t.Errorf("cache hits = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.verifications.WithLabelValues("_other", "wrong_issuer", "signature")); got != 1 {
		t.Errorf("wrong_issuer = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.fetches.WithLabelValues("cognito", "failed")); got != 1 {
		t.Errorf("failed fetches = %v, want 1", got)
	}
	if _, err := NewVerifier(reg); err == nil {
		t.Error("second NewVerifier on one registry = nil error, want one")
	}
	var nilM *VerifierMetrics
	nilM.Verified("p", "ok", verifier.SourceCache)
	nilM.KeysFetched("p", nil)
}
