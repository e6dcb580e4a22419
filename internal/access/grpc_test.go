package access

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// callTimeout bounds every RPC of these tests.
const callTimeout = 10 * time.Second

// The identities and keys the gRPC tests use.
const (
	workerID    = "spiffe://prod/ns/payments/sa/worker"
	opsAdminID  = "spiffe://prod/ns/ops/sa/admin"
	dnsOnlyID   = "dns:www.example.test"
	dnsOnlySAN  = "www.example.test"
	batchID     = "apikey:batch-job"
	opsCLIID    = "apikey:ops-cli"
	batchKey    = "tb_batch_0123456789abcdef"
	opsCLIKey   = "tb_opscli_fedcba9876543210"
	knownSecret = "s3cr3t-client-secret-value"
)

// stubBroker is a TokenBrokerService and AdminService that reports the
// caller's identity in response headers and applies the policy as the real
// server does.
type stubBroker struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	tokenbrokerv1.UnimplementedAdminServiceServer
	auth *Authenticator
}

func identityHeader(ctx context.Context) metadata.MD {
	id, ok := FromContext(ctx)
	if !ok {
		return metadata.Pairs("x-identity", "<none>")
	}
	return metadata.Pairs("x-identity", id.Name, "x-source", id.Source)
}

func toSelector(s *tokenbrokerv1.TokenSelector) broker.Selector {
	sel := broker.Selector{Scopes: s.GetScopes()}
	switch c := s.GetCredentials().(type) {
	case *tokenbrokerv1.TokenSelector_Client:
		sel.Client = c.Client
	case *tokenbrokerv1.TokenSelector_ClientCredentials:
		sel.Credentials = &broker.Credentials{
			Provider:     c.ClientCredentials.GetProvider(),
			ClientID:     c.ClientCredentials.GetClientId(),
			ClientSecret: secret.String(c.ClientCredentials.GetClientSecret()),
		}
	}
	return sel
}

func (s *stubBroker) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	if err := grpc.SetHeader(ctx, identityHeader(ctx)); err != nil {
		return nil, err
	}
	if err := s.auth.Authorize(ctx, toSelector(req.GetSelector())); err != nil {
		return nil, err
	}
	return &tokenbrokerv1.GetTokenResponse{}, nil
}

func (s *stubBroker) WatchToken(req *tokenbrokerv1.WatchTokenRequest, stream grpc.ServerStreamingServer[tokenbrokerv1.WatchTokenResponse]) error {
	if err := stream.SetHeader(identityHeader(stream.Context())); err != nil {
		return err
	}
	if err := s.auth.Authorize(stream.Context(), toSelector(req.GetSelector())); err != nil {
		return err
	}
	return stream.Send(&tokenbrokerv1.WatchTokenResponse{})
}

func (s *stubBroker) GetStats(ctx context.Context, _ *tokenbrokerv1.GetStatsRequest) (*tokenbrokerv1.GetStatsResponse, error) {
	if err := grpc.SetHeader(ctx, identityHeader(ctx)); err != nil {
		return nil, err
	}
	return &tokenbrokerv1.GetStatsResponse{}, nil
}

// startServer serves the stub, health and reflection on a loopback port
// behind a's interceptors and returns the address.
func startServer(t *testing.T, a *Authenticator, creds credentials.TransportCredentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	gs := grpc.NewServer(
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor()),
	)
	stub := &stubBroker{auth: a}
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, stub)
	tokenbrokerv1.RegisterAdminServiceServer(gs, stub)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	reflection.Register(gs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().String()
}

// dial returns a client connection closed at the end of the test.
func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// fixture is a TLS server with a policy, API keys and admin identities.
type fixture struct {
	serverCA, clientCA, otherCA *testCA
	auth                        *Authenticator
	addr                        string
}

func digest(key string) [32]byte { return sha256.Sum256([]byte(key)) }

func newFixture(t *testing.T, clientAuth tls.ClientAuthType) *fixture {
	t.Helper()
	f := &fixture{
		serverCA: newTestCA(t, "server CA"),
		clientCA: newTestCA(t, "client CA"),
		otherCA:  newTestCA(t, "other CA"),
	}
	srv := f.serverCA.issue(t, true, nil, []string{"localhost"})
	dir := t.TempDir()
	now := time.Now()
	certFile := writeFile(t, dir, "server.crt", srv.certPEM, now)
	keyFile := writeFile(t, dir, "server.key", srv.keyPEM, now)
	caFile := writeFile(t, dir, "clients.pem", f.clientCA.pem, now)
	tlsCfg, stop, err := ServerTLSConfig(certFile, keyFile, caFile, clientAuth)
	if err != nil {
		t.Fatalf("ServerTLSConfig: %v", err)
	}
	t.Cleanup(stop)
	policy, err := NewPolicy([]Rule{
		{Identity: workerID, Clients: []string{"payments"}, Scopes: []string{"payments/read"}},
		{Identity: dnsOnlyID, Clients: []string{"payments"}, Scopes: []string{"payments/read"}},
		{Identity: batchID, Clients: []string{"reports"}, Scopes: []string{"*"}},
	})
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	f.auth, err = New(Config{
		APIKeys: []APIKey{
			{Identity: "batch-job", SHA256: digest(batchKey)},
			{Identity: "ops-cli", SHA256: digest(opsCLIKey)},
		},
		AdminIdentities: []string{"spiffe://prod/ns/ops/*"},
		Policy:          policy,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.addr = startServer(t, f.auth, credentials.NewTLS(tlsCfg))
	return f
}

// client returns a connection presenting cert (nil: none). The
// certificate is sent even when the server's list of acceptable CAs does
// not name its issuer.
func (f *fixture) client(t *testing.T, cert *leaf) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.serverCA.pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.tls, nil }
	}
	return dial(t, f.addr, credentials.NewTLS(cfg))
}

func clientSelector(client string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: client}, Scopes: scopes}
}

func passthroughSelector(scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{ClientCredentials: &tokenbrokerv1.ClientCredentials{
			Provider: "cognito", ClientId: "abc", ClientSecret: knownSecret,
		}},
		Scopes: scopes,
	}
}

// outcome is what a call returned.
type outcome struct {
	code     codes.Code
	msg      string
	identity string
	source   string
}

func callOutcome(err error, md metadata.MD) outcome {
	st := status.Convert(err)
	o := outcome{code: st.Code(), msg: st.Message()}
	if v := md.Get("x-identity"); len(v) == 1 {
		o.identity = v[0]
	}
	if v := md.Get("x-source"); len(v) == 1 {
		o.source = v[0]
	}
	return o
}

func withAuth(ctx context.Context, auth string) context.Context {
	if auth == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", auth)
}

func getToken(t *testing.T, cc *grpc.ClientConn, auth string, sel *tokenbrokerv1.TokenSelector) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(withAuth(t.Context(), auth), callTimeout)
	defer cancel()
	var md metadata.MD
	_, err := tokenbrokerv1.NewTokenBrokerServiceClient(cc).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: sel}, grpc.Header(&md))
	return callOutcome(err, md)
}

func watchToken(t *testing.T, cc *grpc.ClientConn, auth string, sel *tokenbrokerv1.TokenSelector) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(withAuth(t.Context(), auth), callTimeout)
	defer cancel()
	stream, err := tokenbrokerv1.NewTokenBrokerServiceClient(cc).WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: sel})
	if err != nil {
		return callOutcome(err, nil)
	}
	_, err = stream.Recv()
	md, _ := stream.Header()
	return callOutcome(err, md)
}

func getStats(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(withAuth(t.Context(), auth), callTimeout)
	defer cancel()
	var md metadata.MD
	_, err := tokenbrokerv1.NewAdminServiceClient(cc).GetStats(ctx, &tokenbrokerv1.GetStatsRequest{}, grpc.Header(&md))
	return callOutcome(err, md)
}

func checkOutcome(t *testing.T, got outcome, want outcome) {
	t.Helper()
	if got.code != want.code {
		t.Fatalf("code: got %v (%q), want %v", got.code, got.msg, want.code)
	}
	if want.msg != "" && !strings.Contains(got.msg, want.msg) {
		t.Errorf("message: got %q, want it to contain %q", got.msg, want.msg)
	}
	if got.identity != want.identity || got.source != want.source {
		t.Errorf("identity: got %q (%q), want %q (%q)", got.identity, got.source, want.identity, want.source)
	}
}

func TestInterceptorsTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t, tls.VerifyClientCertIfGiven)
	worker := f.clientCA.issue(t, false, []string{workerID}, []string{"worker.payments.svc"})
	dnsOnly := f.clientCA.issue(t, false, nil, []string{dnsOnlySAN})
	admin := f.clientCA.issue(t, false, []string{opsAdminID}, nil)
	noSAN := f.clientCA.issue(t, false, nil, nil)
	foreign := f.otherCA.issue(t, false, []string{opsAdminID}, nil)

	type call func(t *testing.T, cc *grpc.ClientConn, auth string) outcome
	get := func(sel *tokenbrokerv1.TokenSelector) call {
		return func(t *testing.T, cc *grpc.ClientConn, auth string) outcome { return getToken(t, cc, auth, sel) }
	}
	watch := func(sel *tokenbrokerv1.TokenSelector) call {
		return func(t *testing.T, cc *grpc.ClientConn, auth string) outcome { return watchToken(t, cc, auth, sel) }
	}
	var stats call = getStats

	tests := []struct {
		name string
		cert *leaf
		auth string
		call call
		want outcome
	}{
		// mTLS identities.
		{"mtls URI SAN allowed", &worker, "", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.OK, identity: workerID, source: SourceMTLS}},
		{"mtls stream allowed", &worker, "", watch(clientSelector("payments", "payments/read")),
			outcome{code: codes.OK, identity: workerID, source: SourceMTLS}},
		{"mtls client denied", &worker, "", get(clientSelector("reports", "payments/read")),
			outcome{code: codes.PermissionDenied, msg: `identity may not use client "reports"`, identity: workerID, source: SourceMTLS}},
		{"mtls stream scope denied", &worker, "", watch(clientSelector("payments", "payments/write")),
			outcome{code: codes.PermissionDenied, msg: `identity may not request scope "payments/write"`, identity: workerID, source: SourceMTLS}},
		{"mtls default scopes denied", &worker, "", get(clientSelector("payments")),
			outcome{code: codes.PermissionDenied, msg: "default scopes", identity: workerID, source: SourceMTLS}},
		{"mtls passthrough denied", &worker, "", get(passthroughSelector("payments/read")),
			outcome{code: codes.PermissionDenied, msg: "identity may not present its own credentials", identity: workerID, source: SourceMTLS}},
		{"mtls DNS SAN only", &dnsOnly, "", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.OK, identity: dnsOnlyID, source: SourceMTLS}},
		{"mtls cert wins over a bad key", &worker, "Bearer not-a-key", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.OK, identity: workerID, source: SourceMTLS}},
		{"mtls cert without SAN", &noSAN, "", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.Unauthenticated, msg: msgCertNoSAN}},
		{"mtls cert from another CA", &foreign, "", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.Unavailable}},
		{"no cert no key", nil, "", get(clientSelector("payments", "payments/read")),
			outcome{code: codes.Unauthenticated, msg: msgAuthRequired}},
		{"no cert no key stream", nil, "", watch(clientSelector("payments", "payments/read")),
			outcome{code: codes.Unauthenticated, msg: msgAuthRequired}},

		// Bearer keys.
		{"key valid", nil, "Bearer " + batchKey, get(clientSelector("reports", "reports/read")),
			outcome{code: codes.OK, identity: batchID, source: SourceAPIKey}},
		{"key valid lowercase scheme, default scopes", nil, "bearer " + batchKey, get(clientSelector("reports")),
			outcome{code: codes.OK, identity: batchID, source: SourceAPIKey}},
		{"key valid stream", nil, "Bearer " + batchKey, watch(clientSelector("reports")),
			outcome{code: codes.OK, identity: batchID, source: SourceAPIKey}},
		{"key valid but client denied", nil, "Bearer " + batchKey, get(clientSelector("payments", "payments/read")),
			outcome{code: codes.PermissionDenied, msg: `identity may not use client "payments"`, identity: batchID, source: SourceAPIKey}},
		{"key invalid", nil, "Bearer tb_wrong_key_value", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: msgInvalidKey}},
		{"key invalid with no-SAN cert", &noSAN, "Bearer tb_wrong_key_value", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: msgInvalidKey}},
		{"key with no-SAN cert", &noSAN, "Bearer " + batchKey, get(clientSelector("reports")),
			outcome{code: codes.OK, identity: batchID, source: SourceAPIKey}},
		{"header without key", nil, "Bearer", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: "malformed authorization"}},
		{"header with blank key", nil, "Bearer   ", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: "malformed authorization"}},
		{"header with two words", nil, "Bearer " + batchKey + " extra", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: "malformed authorization"}},
		{"header with another scheme", nil, "Basic dXNlcjpwYXNz", get(clientSelector("reports")),
			outcome{code: codes.Unauthenticated, msg: "unsupported authorization scheme"}},

		// Admin.
		{"admin by cert", &admin, "", stats, outcome{code: codes.OK, identity: opsAdminID, source: SourceMTLS}},
		{"admin denied to non-admin cert", &worker, "", stats, outcome{code: codes.PermissionDenied, msg: msgAdminDenied}},
		{"admin denied to non-admin key", nil, "Bearer " + opsCLIKey, stats, outcome{code: codes.PermissionDenied, msg: msgAdminDenied}},
		{"admin unauthenticated", nil, "", stats, outcome{code: codes.Unauthenticated, msg: msgAuthRequired}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cc := f.client(t, tc.cert)
			got := tc.call(t, cc, tc.auth)
			checkOutcome(t, got, tc.want)
			for _, leak := range []string{batchKey, opsCLIKey, "tb_wrong_key_value", "not-a-key", "dXNlcjpwYXNz", knownSecret} {
				if strings.Contains(got.msg, leak) {
					t.Errorf("message %q contains a key or secret", got.msg)
				}
			}
		})
	}
}

func TestInterceptorsOpenServices(t *testing.T) {
	t.Parallel()
	f := newFixture(t, tls.VerifyClientCertIfGiven)
	cc := f.client(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	defer cancel()

	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check without credentials: got %v, want success", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health status: got %v, want SERVING", resp.GetStatus())
	}

	v1, err := reflectionv1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection v1 stream: %v", err)
	}
	if err := v1.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection v1 send: %v", err)
	}
	r1, err := v1.Recv()
	if err != nil {
		t.Fatalf("reflection v1 without credentials: got %v, want success", err)
	}
	if len(r1.GetListServicesResponse().GetService()) == 0 {
		t.Errorf("reflection v1: got no services, want some")
	}

	v1a, err := reflectionv1alpha.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection v1alpha stream: %v", err)
	}
	//lint:ignore SA1019 the deprecated v1alpha service is still served, for older clients; this checks it needs no credentials either
	if err := v1a.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection v1alpha send: %v", err)
	}
	if _, err := v1a.Recv(); err != nil {
		t.Fatalf("reflection v1alpha without credentials: got %v, want success", err)
	}
}

func TestRequireClientCert(t *testing.T) {
	t.Parallel()
	f := newFixture(t, tls.RequireAndVerifyClientCert)
	worker := f.clientCA.issue(t, false, []string{workerID}, nil)

	got := getToken(t, f.client(t, &worker), "", clientSelector("payments", "payments/read"))
	checkOutcome(t, got, outcome{code: codes.OK, identity: workerID, source: SourceMTLS})

	// Without a certificate the handshake fails, even with a valid key.
	got = getToken(t, f.client(t, nil), "Bearer "+batchKey, clientSelector("reports"))
	checkOutcome(t, got, outcome{code: codes.Unavailable})
}

func TestInterceptorsPlaintext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		auth string
		call func(t *testing.T, cc *grpc.ClientConn, auth string) outcome
		want outcome
	}{
		{"anonymous allowed", Config{AllowUnauthenticated: true}, "",
			func(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
				return getToken(t, cc, auth, clientSelector("payments"))
			},
			outcome{code: codes.OK, identity: AnonymousName, source: SourceAnonymous}},
		{"anonymous allowed, stream", Config{AllowUnauthenticated: true}, "",
			func(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
				return watchToken(t, cc, auth, clientSelector("payments"))
			},
			outcome{code: codes.OK, identity: AnonymousName, source: SourceAnonymous}},
		{"anonymous allowed, key still checked",
			Config{AllowUnauthenticated: true, APIKeys: []APIKey{{Identity: "batch-job", SHA256: digest(batchKey)}}},
			"Bearer " + batchKey,
			func(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
				return getToken(t, cc, auth, clientSelector("payments"))
			},
			outcome{code: codes.OK, identity: batchID, source: SourceAPIKey}},
		{"anonymous allowed, invalid key refused", Config{AllowUnauthenticated: true}, "Bearer tb_wrong_key_value",
			func(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
				return getToken(t, cc, auth, clientSelector("payments"))
			},
			outcome{code: codes.Unauthenticated, msg: msgInvalidKey}},
		{"anonymous not allowed", Config{}, "",
			func(t *testing.T, cc *grpc.ClientConn, auth string) outcome {
				return getToken(t, cc, auth, clientSelector("payments"))
			},
			outcome{code: codes.Unauthenticated, msg: msgAuthRequired}},
		{"anonymous is no admin", Config{AllowUnauthenticated: true}, "", getStats,
			outcome{code: codes.PermissionDenied, msg: msgAdminDenied}},
		{"admin open", Config{AllowUnauthenticated: true, AdminOpen: true}, "", getStats,
			outcome{code: codes.OK, identity: AnonymousName, source: SourceAnonymous}},
		{"admin by key", Config{APIKeys: []APIKey{{Identity: "ops-cli", SHA256: digest(opsCLIKey)}}, AdminIdentities: []string{opsCLIID}},
			"Bearer " + opsCLIKey, getStats,
			outcome{code: codes.OK, identity: opsCLIID, source: SourceAPIKey}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := New(tc.cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			addr := startServer(t, a, insecure.NewCredentials())
			cc := dial(t, addr, insecure.NewCredentials())
			checkOutcome(t, tc.call(t, cc, tc.auth), tc.want)
		})
	}
}

func TestAuthorizeWithoutIdentity(t *testing.T) {
	t.Parallel()
	p, err := NewPolicy([]Rule{{Identity: "*", Clients: []string{"*"}, Scopes: []string{"*"}}})
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	a, err := New(Config{Policy: p})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Authorize(t.Context(), broker.Selector{Client: "payments"}); err == nil {
		t.Errorf("Authorize without identity: got nil, want a permission error")
	}
	ctx := NewContext(t.Context(), Identity{Name: "apikey:x", Source: SourceAPIKey})
	if err := a.Authorize(ctx, broker.Selector{Client: "payments"}); err != nil {
		t.Errorf("Authorize with identity: got %v, want nil", err)
	}
	open, err := New(Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := open.Authorize(t.Context(), broker.Selector{Client: "payments"}); err != nil {
		t.Errorf("Authorize without a policy: got %v, want nil", err)
	}
}
