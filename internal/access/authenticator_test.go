package access

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

func TestParseSHA256Hex(t *testing.T) {
	t.Parallel()
	want := sha256.Sum256([]byte("tb_key"))
	lower := hex.EncodeToString(want[:])
	for _, s := range []string{lower, strings.ToUpper(lower)} {
		got, err := ParseSHA256Hex(s)
		if err != nil || got != want {
			t.Errorf("ParseSHA256Hex(%q): got (%x, %v), want (%x, nil)", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "tb_key", lower[:63], lower + "0", "zz" + lower[2:], " " + lower[1:]} {
		_, err := ParseSHA256Hex(bad)
		if err == nil {
			t.Errorf("ParseSHA256Hex(%q): got nil error, want one", bad)
			continue
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("ParseSHA256Hex error %q repeats the input", err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		cfg       Config
		wantField string
		wantRule  string
	}{
		{"empty identity", Config{APIKeys: []APIKey{{SHA256: digest("a")}}}, "api_keys[0].identity", "must not be empty"},
		{"identity with spaces", Config{APIKeys: []APIKey{{Identity: "a ", SHA256: digest("a")}}}, "api_keys[0].identity", "spaces"},
		{"reserved identity", Config{APIKeys: []APIKey{{Identity: "anonymous", SHA256: digest("a")}}}, "api_keys[0].identity", "reserved"},
		{"missing digest", Config{APIKeys: []APIKey{{Identity: "a"}}}, "api_keys[0].sha256", "must be set"},
		{"duplicate digest", Config{APIKeys: []APIKey{{Identity: "a", SHA256: digest("k")}, {Identity: "b", SHA256: digest("k")}}},
			"api_keys[1].sha256", "must differ from api_keys[0].sha256"},
		{"key name with its kind", Config{APIKeys: []APIKey{{Identity: "apikey:a", SHA256: digest("a")}}}, "api_keys[0].identity", "without its kind"},
		{"bad admin pattern", Config{AdminIdentities: []string{"apikey:ok", "apikey:a*"}}, "admin_identities[1]", `"*" is allowed only`},
		{"untyped admin identity", Config{AdminIdentities: []string{"apikey:ok", "ops-cli"}}, "admin_identities[1]", "must name its kind"},
		{"anonymous admin without unauthenticated callers", Config{AdminIdentities: []string{"anonymous"}}, "admin_identities[0]", "auth.allow_unauthenticated"},
		{"anonymous policy rule without unauthenticated callers", Config{Policy: mustPolicy(t, []Rule{{Identity: "*"}, {Identity: "anonymous"}})}, "rules[1].identity", "auth.allow_unauthenticated"},
		{"empty admin pattern", Config{AdminIdentities: []string{""}}, "admin_identities[0]", "must not be empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.cfg)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *ConfigError", err)
			}
			if ce.Field != tc.wantField || !strings.Contains(ce.Rule, tc.wantRule) {
				t.Errorf("got %q, want field %q and rule containing %q", err, tc.wantField, tc.wantRule)
			}
		})
	}
}

func TestKeyLookup(t *testing.T) {
	t.Parallel()
	keys := keyTable{
		{Identity: "a", SHA256: digest("key-a")},
		{Identity: "b", SHA256: digest("key-b")},
		{Identity: "c", SHA256: digest("key-c")},
	}
	for _, tc := range []struct{ key, want string }{{"key-a", "a"}, {"key-b", "b"}, {"key-c", "c"}} {
		if got, ok := keys.lookup(tc.key); !ok || got != tc.want {
			t.Errorf("lookup(%q): got (%q, %v), want (%q, true)", tc.key, got, ok, tc.want)
		}
	}
	for _, key := range []string{"", "key-d", "key-a "} {
		if got, ok := keys.lookup(key); ok {
			t.Errorf("lookup(%q): got (%q, true), want no match", key, got)
		}
	}
	if got, ok := keyTable(nil).lookup("key-a"); ok {
		t.Errorf("lookup in an empty table: got (%q, true), want no match", got)
	}
}

func TestAuthenticateMetadata(t *testing.T) {
	t.Parallel()
	a, err := New(Config{APIKeys: []APIKey{{Identity: "batch-job", SHA256: digest(batchKey)}}})
	const batch = "apikey:batch-job"
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name     string
		values   []string
		wantName string
		wantMsg  string
	}{
		{"valid", []string{"Bearer " + batchKey}, batch, ""},
		{"valid, extra spaces after the scheme", []string{"Bearer   " + batchKey}, batch, ""},
		{"valid, upper-case scheme", []string{"BEARER " + batchKey}, batch, ""},
		{"two values", []string{"Bearer " + batchKey, "Bearer " + batchKey}, "", "more than one value"},
		{"tab in key", []string{"Bearer " + batchKey + "\tx"}, "", "malformed"},
		{"scheme only", []string{"Bearer"}, "", "malformed"},
		{"empty value", []string{""}, "", "unsupported authorization scheme"},
		{"token without scheme", []string{batchKey}, "", "unsupported authorization scheme"},
		{"invalid", []string{"Bearer " + batchKey + "x"}, "", msgInvalidKey},
		{"none", nil, "", msgAuthRequired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			md := metadata.MD{}
			for _, v := range tc.values {
				md.Append("authorization", v)
			}
			id, err := a.Authenticate(metadata.NewIncomingContext(t.Context(), md))
			if tc.wantMsg == "" {
				if err != nil || id.Name != tc.wantName || id.Source != SourceAPIKey {
					t.Fatalf("got (%+v, %v), want (%q, api_key)", id, err, tc.wantName)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Fatalf("got %v, want Unauthenticated containing %q", err, tc.wantMsg)
			}
			if strings.Contains(st.Message(), batchKey) {
				t.Errorf("message %q contains the key", st.Message())
			}
		})
	}
}

// tlsPeerContext returns a context whose peer has a TLS connection with the
// given certificate, verified or not.
func tlsPeerContext(ctx context.Context, cert *x509.Certificate, verified bool) context.Context {
	state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	if verified {
		state.VerifiedChains = [][]*x509.Certificate{{cert}}
	}
	return peer.NewContext(ctx, &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: credentials.TLSInfo{State: state},
	})
}

func TestAuthenticateCertificate(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "client CA")
	both := ca.issue(t, false, []string{workerID, "spiffe://prod/second"}, []string{"dns.example.test"})
	dnsOnly := ca.issue(t, false, nil, []string{dnsOnlySAN, "second.example.test"})
	dnsUpper := ca.issue(t, false, nil, []string{"WWW.Example.TEST"})
	otherURI := ca.issue(t, false, []string{"https://example.test/worker"}, []string{"dns.example.test"})
	// A DNS SAN spelling another kind's name stays a DNS identity.
	dnsSpoof := ca.issue(t, false, nil, []string{workerID})
	a, err := New(Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name     string
		ctx      context.Context
		wantName string
	}{
		{"verified, first URI SAN", tlsPeerContext(t.Context(), both.tls.Leaf, true), workerID},
		{"verified, first DNS SAN", tlsPeerContext(t.Context(), dnsOnly.tls.Leaf, true), dnsOnlyID},
		{"verified, DNS SAN in lower case", tlsPeerContext(t.Context(), dnsUpper.tls.Leaf, true), dnsOnlyID},
		{"verified, URI SAN that is no SPIFFE ID", tlsPeerContext(t.Context(), otherURI.tls.Leaf, true), "uri:https://example.test/worker"},
		{"verified, DNS SAN spelling a SPIFFE ID", tlsPeerContext(t.Context(), dnsSpoof.tls.Leaf, true), "dns:" + workerID},
		{"unverified certificate ignored", tlsPeerContext(t.Context(), both.tls.Leaf, false), ""},
		{"peer without TLS", peer.NewContext(t.Context(), &peer.Peer{Addr: &net.TCPAddr{}}), ""},
		{"no peer", t.Context(), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := a.Authenticate(tc.ctx)
			if tc.wantName == "" {
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("got (%+v, %v), want Unauthenticated", id, err)
				}
				return
			}
			if err != nil || id != (Identity{Name: tc.wantName, Source: SourceMTLS}) {
				t.Fatalf("got (%+v, %v), want (%q, mtls)", id, err, tc.wantName)
			}
		})
	}
}

func TestIsAdmin(t *testing.T) {
	t.Parallel()
	a, err := New(Config{AdminIdentities: []string{"spiffe://prod/ns/ops/*", "apikey:ops-cli"}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	open, err := New(Config{AdminOpen: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	none, err := New(Config{AllowUnauthenticated: true, AdminIdentities: []string{"*"}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	anon, err := New(Config{AllowUnauthenticated: true, AdminIdentities: []string{"anonymous"}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		a    *Authenticator
		name string
		want bool
	}{
		{a, "spiffe://prod/ns/ops/sa/admin", true},
		{a, "apikey:ops-cli", true},
		{a, "apikey:ops-cli2", false},
		{a, "ops-cli", false},
		{a, "dns:spiffe://prod/ns/ops/sa/admin", false},
		{a, "spiffe://prod/ns/ops", false},
		{a, "", false},
		{open, "anyone", true},
		{open, "", false},
		{none, AnonymousName, false},
		{none, "apikey:x", true},
		{anon, AnonymousName, true},
		{anon, "apikey:x", false},
	}
	for _, tc := range tests {
		if got := tc.a.IsAdmin(Identity{Name: tc.name}); got != tc.want {
			t.Errorf("IsAdmin(%q): got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestContextRoundTrip(t *testing.T) {
	t.Parallel()
	if _, ok := FromContext(t.Context()); ok {
		t.Errorf("FromContext on a bare context: got ok, want not ok")
	}
	want := Identity{Name: workerID, Source: SourceMTLS}
	got, ok := FromContext(NewContext(t.Context(), want))
	if !ok || got != want {
		t.Errorf("FromContext: got (%+v, %v), want (%+v, true)", got, ok, want)
	}
}
