package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestMain fails the run when a goroutine outlives the package's tests.
func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }

// started is a run of benchserver in the test's process.
type started struct {
	addrs map[string]string // "grpc" and "http" to their addresses
	stdin *io.PipeWriter    // closing it ends the run
	done  chan error        // run's result
}

// start runs benchserver with args until the test ends (or until its
// stdin is closed) and returns the addresses of its listening line.
func start(t *testing.T, args ...string) *started {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &started{addrs: map[string]string{}, stdin: inW, done: make(chan error, 1)}
	go func() {
		s.done <- run(context.Background(), args, inR, outW)
		outW.Close()
	}()
	t.Cleanup(func() {
		inW.Close()
		<-s.done
	})
	sc := bufio.NewScanner(outR)
	if !sc.Scan() {
		inW.Close()
		t.Fatalf("no listening line: %v", <-s.done)
	}
	line := sc.Text()
	go io.Copy(io.Discard, outR) // nothing more is written; ends with run
	rest, ok := strings.CutPrefix(line, "benchserver listening ")
	if !ok {
		t.Fatalf("got line %q, want \"benchserver listening ...\"", line)
	}
	for f := range strings.FieldsSeq(rest) {
		k, v, _ := strings.Cut(f, "=")
		s.addrs[k] = v
	}
	return s
}

func TestServesGRPCAndHTTP(t *testing.T) {
	dir := t.TempDir()
	want := &tokenbrokerv1.GetTokenResponse{Token: &tokenbrokerv1.Token{AccessToken: "not-a-real-token", TokenType: "Bearer", KeyId: "k1"}}
	raw, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	respFile, bodyFile := filepath.Join(dir, "resp.pb"), filepath.Join(dir, "body.json")
	body := `{"access_token":"x","token_type":"Bearer","expires_in":60}`
	if err := os.WriteFile(respFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bodyFile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, "-grpc-response", respFile, "-http-body", bodyFile,
		"-http-header", "Content-Type: application/json", "-http-header", "cache-control: no-store")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(s.addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{})
	if err != nil || !proto.Equal(got, want) {
		t.Errorf("GetToken: got %v, %v; want %v", got, err, want)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.addrs["http"]+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(b) != body {
		t.Errorf("POST: got %d %q, %v; want 200 %q", resp.StatusCode, b, err, body)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", got)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control: got %q, want no-store", got)
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addrs["http"]+"/", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: got %v, %v; want 405", resp, err)
	} else {
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()

	// The end of stdin ends the run cleanly.
	s.stdin.Close()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("after stdin closed: got %v, want a clean exit", err)
		}
		s.done <- nil // for the cleanup
	case <-ctx.Done():
		t.Fatal("still running after stdin closed")
	}
}

// TestWatchPublishesOnEachStdinLine: with -watch-message, WatchToken
// sends the file's message as EVENT_INITIAL, then, for each line written
// to stdin, a new one as EVENT_REFRESHED whose token is issued later and
// is otherwise the same; GetToken is unimplemented; the stream limit per
// connection is the one asked for.
func TestWatchPublishesOnEachStdinLine(t *testing.T) {
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	initial := &tokenbrokerv1.WatchTokenResponse{Event: tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL, Token: &tokenbrokerv1.Token{
		AccessToken: "not-a-real-token", TokenType: "Bearer", KeyId: "k1",
		IssuedAt: timestamppb.New(t0), ExpiresAt: timestamppb.New(t0.Add(time.Hour)),
	}}
	raw, err := proto.Marshal(initial)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "watch.pb")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, "-watch-message", file, "-max-concurrent-streams", "1")
	if _, ok := s.addrs["http"]; ok || s.addrs["grpc"] == "" {
		t.Fatalf("got addresses %v, want grpc only", s.addrs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(s.addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	if _, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetToken: got %v, want Unimplemented", err)
	}
	st, err := client.WatchToken(ctx, &tokenbrokerv1.WatchTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := st.Recv(); err != nil || !proto.Equal(got, initial) {
		t.Fatalf("first message: got %v, %v; want %v", got, err, initial)
	}
	// A second stream on the connection waits for the first to end.
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if st2, err := client.WatchToken(sctx, &tokenbrokerv1.WatchTokenRequest{}); err == nil {
		if _, err := st2.Recv(); status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("second stream on the connection: got %v, want DeadlineExceeded (max 1 stream)", err)
		}
	}
	prev := t0
	for k := range 2 {
		if _, err := io.WriteString(s.stdin, "publish\n"); err != nil {
			t.Fatal(err)
		}
		got, err := st.Recv()
		if err != nil {
			t.Fatalf("after line %d: %v", k+1, err)
		}
		issued := got.GetToken().GetIssuedAt().AsTime()
		if got.GetEvent() != tokenbrokerv1.WatchTokenResponse_EVENT_REFRESHED || !issued.After(prev) {
			t.Errorf("after line %d: got %v issued at %v, want EVENT_REFRESHED issued after %v", k+1, got.GetEvent(), issued, prev)
		}
		if life := got.GetToken().GetExpiresAt().AsTime().Sub(issued); life != time.Hour {
			t.Errorf("after line %d: lifetime %v, want 1h", k+1, life)
		}
		if got.GetToken().GetAccessToken() != initial.GetToken().GetAccessToken() {
			t.Errorf("after line %d: another access token", k+1)
		}
		prev = issued
	}
}

func TestOnlyOneServer(t *testing.T) {
	body := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(body, []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, "-http-body", body)
	if _, ok := s.addrs["grpc"]; ok || s.addrs["http"] == "" {
		t.Errorf("got addresses %v, want http only", s.addrs)
	}
}

func TestBadArguments(t *testing.T) {
	dir := t.TempDir()
	notProto := filepath.Join(dir, "not.pb")
	if err := os.WriteFile(notProto, []byte{0xff, 0xff, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "-grpc-response, -watch-message and -http-body: at least one is required"},
		{[]string{"-watch-message", notProto}, "is not a serialized tokenbroker.v1.WatchTokenResponse"},
		{[]string{"-http-body", notProto, "-max-concurrent-streams", "10"}, "-max-concurrent-streams: needs -grpc-response or -watch-message"},
		{[]string{"-watch-message", notProto, "-max-concurrent-streams", "4294967296"}, "-max-concurrent-streams: must be from 0 to 4294967295"},
		{[]string{"-http-header", "X: y", "-grpc-response", notProto}, "-http-header: needs -http-body"},
		{[]string{"-http-body", notProto, "-http-header", "no colon"}, `must be "Name: value"`},
		{[]string{"-grpc-response", notProto}, "is not a serialized tokenbroker.v1.GetTokenResponse"},
		{[]string{"-grpc-response", filepath.Join(dir, "missing")}, "-grpc-response: open"},
		{[]string{"-http-body", notProto, "extra"}, "unexpected arguments"},
	} {
		err := run(context.Background(), tc.args, strings.NewReader(""), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
