package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/go-jose/go-jose/v4"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/credential"
	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// The known values the leak test hunts for. Each is distinctive enough that
// an accidental substring match is impossible.
const (
	leakHeldID        = "leak-held-client"
	leakHeldSecret    = "LEAK-held-s3cret-7f1c9a"
	leakPassID        = "leak-pass-client"
	leakPassSecret    = "LEAK-pass-s3cret-2b8d4e"
	leakWrongSecret   = "LEAK-wrong-s3cret-9e3a61"
	leakBadSecret     = "LEAK-bad-upstream-s3cret-5c0f2d"
	leakBadHeldSecret = "LEAK-bad-held-s3cret-31e6b0"
	leakAPIKey        = "LEAK-valid-api-key-a41b7c"
	leakBadBearerKey  = "LEAK-invalid-bearer-key-d82e19"
	leakJWTID         = "leak-jwt-client"
)

// leakMaterial holds the private key and assertions of the leak stack's
// private_key_jwt and client_assertion_file clients (set by
// startLeakStack): none may appear anywhere either.
var leakMaterial []string

// leakStack is the whole product, as startStackHandler builds it, but
// logging at debug level into logs, plus a second token endpoint that
// misbehaves on purpose (providers "bad500" and "bad400").
type leakStack struct {
	logs   *testkit.LogBuffer
	conn   *grpc.ClientConn
	client tokenbrokerv1.TokenBrokerServiceClient
	admin  tokenbrokerv1.AdminServiceClient
}

func startLeakStack(t *testing.T) *leakStack {
	t.Helper()
	issuer, err := devissuer.New(devissuer.Config{Lifetime: time.Hour, Clients: []devissuer.Client{
		{ID: leakHeldID, Secret: leakHeldSecret, Scopes: []string{"api/read", "api/write"}},
		{ID: leakPassID, Secret: leakPassSecret, Scopes: []string{"api/read"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	good := httptest.NewServer(issuer.Handler())
	t.Cleanup(good.Close)
	// A private_key_jwt client, and a client_assertion_file one sent to
	// the endpoint that echoes what it got.
	jwtKey := genKey(t)
	issuer.AddClient(devissuer.Client{ID: leakJWTID, PublicKeys: []jose.JSONWebKey{{Key: jwtKey.Public()}}, Scopes: []string{"api/read"}})
	dir := t.TempDir()
	jwtPEM := keyPEM(t, jwtKey)
	assertion := signedAssertion(t, jwtKey, "https://example.com/token")
	leakMaterial = []string{string(jwtPEM[40:100]), assertion, assertion[:80]}

	// The misbehaving endpoint echoes the client secret it was sent in its
	// bodies, as a careless real one might.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, sec, ok := r.BasicAuth()
		if !ok {
			sec = r.PostFormValue("client_secret")
		}
		if a := r.PostFormValue("client_assertion"); a != "" {
			sec = a
		}
		switch r.URL.Path {
		case "/500":
			http.Error(w, "internal error while checking secret "+sec, http.StatusInternalServerError)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_request","error_description":"bad secret %s"}`, sec)
		}
	}))
	t.Cleanup(bad.Close)

	logs := &testkit.LogBuffer{}
	logger := testkit.JSONLogger(logs)
	prev := slog.Default()
	slog.SetDefault(logger)
	t.Cleanup(func() { slog.SetDefault(prev) })

	cfg := config.Default()
	p := config.DefaultProvider()
	p.Name, p.TokenURL, p.RateLimit, p.Burst = "test", good.URL+devissuer.TokenPath, 1000, 100
	p500 := config.DefaultProvider()
	p500.Name, p500.TokenURL, p500.RateLimit, p500.Burst = "bad500", bad.URL+"/500", 1000, 100
	p400 := config.DefaultProvider()
	p400.Name, p400.TokenURL, p400.RateLimit, p400.Burst = "bad400", bad.URL+"/400", 1000, 100
	p400.AuthMethod = config.AuthClientSecretPost
	cfg.Providers = []config.Provider{p, p500, p400}
	cfg.Clients = []config.Client{
		{Name: "held", Provider: "test", ClientID: leakHeldID, Secret: secret.String(leakHeldSecret)},
		{Name: "held500", Provider: "bad500", ClientID: leakHeldID, Secret: secret.String(leakBadHeldSecret)},
		{Name: "held400", Provider: "bad400", ClientID: leakHeldID, Secret: secret.String(leakBadHeldSecret)},
		{Name: "heldjwt", Provider: "test", ClientID: leakJWTID, AuthMethod: config.AuthPrivateKeyJWT,
			ClientKeyFile: writePrivate(t, dir, "jwt.pem", jwtPEM)},
		{Name: "heldassert400", Provider: "bad400", ClientID: leakJWTID, AuthMethod: config.AuthPrivateKeyJWT,
			ClientAssertionFile: writePrivate(t, dir, "assertion", []byte(assertion))},
		{Name: "heldjwt500", Provider: "bad500", ClientID: leakJWTID, AuthMethod: config.AuthPrivateKeyJWT,
			ClientKeyFile: filepath.Join(dir, "jwt.pem")},
	}
	for i := range cfg.Clients {
		if cfg.Clients[i].AuthMethod == config.AuthPrivateKeyJWT {
			cr, err := credential.New(cfg.CredentialSpec(i), nil, logger)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Clients[i].Credential = cr
		}
	}
	cfg.Passthrough = true
	// Retries of the 500s end soon.
	cfg.Cache.FetchTimeout = config.Duration(time.Second)
	cfg.Auth.AllowUnauthenticated = true
	sum := sha256.Sum256([]byte(leakAPIKey))
	cfg.Auth.APIKeys = []config.APIKey{{Identity: "ops", SHA256: hex.EncodeToString(sum[:])}}
	cfg.Admin.Identities = []string{"*", "anonymous"}

	addr, _ := serveApp(t, cfg, Keys{}, logger)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &leakStack{
		logs:   logs,
		conn:   conn,
		client: tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		admin:  tokenbrokerv1.NewAdminServiceClient(conn),
	}
}

func leakPass(provider, id, sec string, scopes ...string) *tokenbrokerv1.GetTokenRequest {
	return &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{
			ClientCredentials: &tokenbrokerv1.ClientCredentials{Provider: provider, ClientId: id, ClientSecret: sec},
		},
		Scopes: scopes,
	}}
}

func leakHeld(scopes ...string) *tokenbrokerv1.TokenSelector {
	return leakHeldNamed("held", scopes...)
}

func leakHeldNamed(name string, scopes ...string) *tokenbrokerv1.TokenSelector {
	return &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: name}, Scopes: scopes}
}

// TestNoSecretOrTokenLeaks runs a full scenario with known client secrets,
// API keys and the access tokens the broker hands out, and proves none of
// them appears in any log line, any error a client receives (message and
// details) or any admin response.
func TestNoSecretOrTokenLeaks(t *testing.T) {
	s := startLeakStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	forbidden := []string{leakHeldSecret, leakPassSecret, leakWrongSecret, leakBadSecret, leakBadHeldSecret, leakAPIKey, leakBadBearerKey}
	forbidden = append(forbidden, leakMaterial...)
	// texts maps a description of what a client saw to its text.
	type seen struct{ what, text string }
	var texts []seen
	addErr := func(what string, err error) {
		if err == nil {
			return
		}
		st := status.Convert(err)
		texts = append(texts, seen{what + " (message)", st.Message()}, seen{what + " (error)", err.Error()})
		for i, d := range st.Details() {
			texts = append(texts, seen{fmt.Sprintf("%s (detail %d)", what, i), fmt.Sprint(d)})
		}
	}
	addMsg := func(what string, m proto.Message) {
		texts = append(texts, seen{what + " (prototext)", prototext.Format(m)}, seen{what + " (%v)", fmt.Sprintf("%v", m)})
	}
	wantCode := func(what string, err error, want codes.Code) {
		t.Helper()
		addErr(what, err)
		if got := status.Code(err); got != want {
			t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
		}
	}

	// Broker-held and pass-through tokens.
	held, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: leakHeld("api/read")})
	if err != nil {
		t.Fatalf("held GetToken: %v", err)
	}
	pass, err := s.client.GetToken(ctx, leakPass("test", leakPassID, leakPassSecret, "api/read"))
	if err != nil {
		t.Fatalf("pass-through GetToken: %v", err)
	}
	jwtTok, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: leakHeldNamed("heldjwt", "api/read")})
	if err != nil {
		t.Fatalf("private_key_jwt GetToken: %v", err)
	}
	forbidden = append(forbidden, jwtTok.GetToken().GetAccessToken())
	for _, tok := range []string{held.GetToken().GetAccessToken(), pass.GetToken().GetAccessToken()} {
		if tok == "" {
			t.Fatal("got an empty access token, want one")
		}
		forbidden = append(forbidden, tok)
	}

	// Failures.
	_, err = s.client.GetToken(ctx, leakPass("test", leakPassID, leakWrongSecret, "api/read"))
	wantCode("wrong secret", err, codes.Unauthenticated)
	_, err = s.client.GetToken(ctx, leakPass("test", leakPassID, leakPassSecret, "api/admin"))
	addErr("invalid scope", err)
	if err == nil {
		t.Error("invalid scope: got no error, want one")
	}
	_, err = s.client.GetToken(ctx, leakPass("", leakPassID, leakPassSecret, "api/read"))
	wantCode("missing provider", err, codes.InvalidArgument)
	_, err = s.client.GetToken(ctx, leakPass("test", "bad id with spaces", leakPassSecret, "bad scope\"\\"))
	wantCode("invalid request", err, codes.InvalidArgument)
	_, err = s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{})
	wantCode("empty request", err, codes.InvalidArgument)
	for _, c := range []struct {
		what string
		req  *tokenbrokerv1.GetTokenRequest
	}{
		{"upstream 500, pass-through", leakPass("bad500", leakPassID, leakBadSecret, "api/read")},
		{"upstream 400, pass-through", leakPass("bad400", leakPassID, leakBadSecret, "api/read")},
		{"upstream 500, broker-held", &tokenbrokerv1.GetTokenRequest{Selector: leakHeldNamed("held500", "api/read")}},
		{"upstream 400, broker-held", &tokenbrokerv1.GetTokenRequest{Selector: leakHeldNamed("held400", "api/read")}},
		{"upstream 400 echoing the assertion", &tokenbrokerv1.GetTokenRequest{Selector: leakHeldNamed("heldassert400", "api/read")}},
		{"upstream 500, private_key_jwt", &tokenbrokerv1.GetTokenRequest{Selector: leakHeldNamed("heldjwt500", "api/read")}},
	} {
		_, err = s.client.GetToken(ctx, c.req)
		addErr(c.what, err)
		if err == nil {
			t.Errorf("%s: got no error, want one", c.what)
		}
	}

	// WatchToken: the initial token, then the caller goes away.
	wctx, wcancel := context.WithCancel(ctx)
	stream, err := s.client.WatchToken(wctx, &tokenbrokerv1.WatchTokenRequest{Selector: leakHeld("api/read", "api/write")})
	if err != nil {
		t.Fatalf("WatchToken: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("WatchToken Recv: %v", err)
	}
	if tok := first.GetToken().GetAccessToken(); tok == "" {
		t.Error("watch: got an empty access token, want one")
	} else {
		forbidden = append(forbidden, tok)
	}
	wcancel()
	_, err = stream.Recv()
	wantCode("watch after cancel", err, codes.Canceled)

	// A failing watch.
	fstream, err := s.client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{Selector: leakPass("test", leakPassID, leakWrongSecret, "api/read").GetSelector()})
	if err == nil {
		_, err = fstream.Recv()
	}
	addErr("watch with wrong secret", err)
	if err == nil {
		t.Error("watch with wrong secret: got no error, want one")
	}

	// Bearer keys: an invalid one is refused; a valid one reaches the admin.
	badCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+leakBadBearerKey)
	_, err = s.client.GetToken(badCtx, &tokenbrokerv1.GetTokenRequest{Selector: leakHeld("api/read")})
	wantCode("invalid bearer key", err, codes.Unauthenticated)
	_, err = s.admin.GetStats(badCtx, &tokenbrokerv1.GetStatsRequest{})
	wantCode("invalid bearer key (admin)", err, codes.Unauthenticated)
	keyCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+leakAPIKey)

	// Admin calls.
	list, err := s.admin.ListTokens(keyCtx, &tokenbrokerv1.ListTokensRequest{})
	if err != nil {
		t.Fatalf("ListTokens: %v", err)
	}
	if len(list.GetEntries()) == 0 {
		t.Error("ListTokens: got no entries, want some")
	}
	addMsg("ListTokens", list)
	stats, err := s.admin.GetStats(ctx, &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		t.Fatalf("GetStats: %v", err)
	}
	addMsg("GetStats", stats)
	inv, err := s.admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_Client{Client: "held"}})
	if err != nil {
		t.Fatalf("InvalidateTokens client: %v", err)
	}
	addMsg("InvalidateTokens client", inv)
	inv, err = s.admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_ClientId{
		ClientId: &tokenbrokerv1.ClientIdSelector{Provider: "test", ClientId: leakPassID},
	}})
	if err != nil {
		t.Fatalf("InvalidateTokens client_id: %v", err)
	}
	addMsg("InvalidateTokens client_id", inv)
	_, err = s.admin.InvalidateTokens(ctx, &tokenbrokerv1.InvalidateTokensRequest{})
	wantCode("InvalidateTokens without selector", err, codes.InvalidArgument)

	// After invalidation a fresh token is fetched; it is forbidden too.
	again, err := s.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: leakHeld("api/read")})
	if err != nil {
		t.Fatalf("held GetToken after invalidation: %v", err)
	}
	forbidden = append(forbidden, again.GetToken().GetAccessToken())

	// The panic path cannot be reached through the product from outside;
	// the server package tests its recovery handler.

	// Let the last log lines of the calls above be written: close the
	// client connection so every server-side call has ended.
	s.conn.Close()

	logs := s.logs.String()
	if !strings.Contains(logs, "{") {
		t.Fatalf("got no log lines (%q), want the broker's call logs", logs)
	}
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	for _, f := range forbidden {
		for i, line := range lines {
			if strings.Contains(line, f) {
				t.Errorf("log line %d contains a secret or token %.12q...: %s", i, f, line)
			}
		}
		for _, x := range texts {
			if strings.Contains(x.text, f) {
				t.Errorf("%s contains a secret or token %.12q...: %s", x.what, f, x.text)
			}
		}
	}
	t.Logf("checked %d log lines and %d client-visible texts for %d forbidden strings", len(lines), len(texts), len(forbidden))
}
