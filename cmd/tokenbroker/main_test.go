package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
)

// TestDevBinaryEndToEnd builds the real binary, starts it in -dev mode on a
// free loopback port, and talks to it over TCP the way grpcurl does:
// reflection, health, GetToken. Then it stops it with SIGTERM.
func TestDevBinaryEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "tokenbroker")
	// Built as make build builds (static, -trimpath), so its packages are
	// already compiled.
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-dev", "-listen", "127.0.0.1:0", "-http-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "TOKENBROKER_DEV_SECRET=e2e-dev-secret")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// The broker logs its address as JSON on stderr.
	addrc, httpc := make(chan string, 1), make(chan string, 1)
	logs := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			select {
			case logs <- line:
			default:
			}
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil {
				switch {
				case rec.Msg == "tokenbroker listening":
					addrc <- rec.Addr
				case strings.HasPrefix(rec.Msg, "http listening"):
					httpc <- rec.Addr
				}
			}
		}
		close(logs)
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-ctx.Done():
		t.Fatal("the broker did not log its address")
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// Reflection, as `grpcurl list` uses it.
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	for _, want := range []string{"tokenbroker.v1.TokenBrokerService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, want %s among them", services, want)
		}
	}
	// describe: the file descriptor of the service.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "tokenbroker.v1.TokenBrokerService"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("reflection describe: got %v, %v; want a file descriptor", resp, err)
	}
	stream.CloseSend()

	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: got %v, %v; want SERVING", hc, err)
	}

	client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	req := &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "demo"},
		Scopes:      []string{"demo/read"},
	}}
	first, err := client.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	tok := first.GetToken()
	if tok.GetAccessToken() == "" || tok.GetTokenType() != "Bearer" || tok.GetKeyId() == "" {
		t.Errorf("GetToken: got %v, want a bearer token with a key id", tok)
	}
	if life := tok.GetExpiresAt().AsTime().Sub(tok.GetIssuedAt().AsTime()); life != 5*time.Minute {
		t.Errorf("lifetime: got %v, want the -dev default 5m", life)
	}
	// The drop-in HTTP endpoint, with the demo credentials: the same key,
	// so the same cached token.
	httpAddr := <-httpc
	form := strings.NewReader("grant_type=client_credentials&scope=demo%2Fread")
	hreq, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+httpAddr+"/oauth2/token", form)
	hreq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hreq.SetBasicAuth("demo-client", "e2e-dev-secret")
	hresp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(hresp.Body).Decode(&body); err != nil || hresp.StatusCode != http.StatusOK || body.AccessToken != tok.GetAccessToken() {
		t.Errorf("drop-in endpoint: status %d, %v; want 200 with GetToken's cached token", hresp.StatusCode, err)
	}
	hresp.Body.Close()
	second, err := client.GetToken(ctx, req)
	if err != nil || second.GetToken().GetAccessToken() != tok.GetAccessToken() {
		t.Errorf("second GetToken: got %v, %v; want the cached token", second, err)
	}
	_, err = client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: req.Selector, MinTtl: durationpb.New(-time.Second)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "min_ttl") {
		t.Errorf("negative min_ttl: got %v, want InvalidArgument naming min_ttl", err)
	}
	_, err = client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "demo"}, Scopes: []string{"demo/admin"},
	}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("scope the client does not have: got %v, want InvalidArgument (invalid_scope)", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: got %v, want a clean exit", err)
	}
	if !strings.Contains(stdout.String(), "grant_type=client_credentials http://"+httpAddr+"/oauth2/token") {
		t.Errorf("the -dev banner does not show the drop-in endpoint at %s:\n%s", httpAddr, stdout.String())
	}
	if !strings.Contains(stdout.String(), "grpcurl -plaintext "+addr) {
		t.Errorf("the -dev banner does not show grpcurl commands for %s:\n%s", addr, stdout.String())
	}
	for line := range logs {
		if strings.Contains(line, tok.GetAccessToken()) {
			t.Errorf("a log line contains the access token: %s", line)
		}
	}
}

func TestInvalidConfigNamesTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("cache:\n  refresh_fraction: 1.5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err := run(context.Background(), []string{"-config", path}, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "cache.refresh_fraction") {
		t.Errorf("got %v, want an error naming cache.refresh_fraction", err)
	}
}
