package app

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/shared"
	"github.com/tokenbroker/tokenbroker/internal/shared/redistest"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// TestRedisWrongPassword runs a replica against a real redis-server that
// requires a password the replica's configuration gets wrong. Without any
// traffic, the log says once that authentication failed (never quoting a
// password); the replica stays ready and serves tokens on its own, its
// /readyz body names the tier's state and reason, and /metrics counts the
// failures by reason. When Redis accepts the password, one info line
// reports the recovery and /readyz is plain "ok" again.
func TestRedisWrongPassword(t *testing.T) {
	right, wrong := "right-"+randomB64(t), "wrong-"+randomB64(t)
	srv := redistest.Start(t, redistest.WithPassword(right))
	_, tokenURL := startIssuer(t, nil)
	cfg := stackConfig(tokenURL)
	cfg.Shared.Redis.Addrs = []string{srv.Addr()}
	cfg.Shared.Redis.Password = secret.String(wrong)
	cfg.Shared.Redis.BreakerCooldown = config.Duration(100 * time.Millisecond)
	cfg.Shared.Redis.OpTimeout = config.Duration(time.Second)
	keys := Keys{Sealing: []byte("k1:" + randomB64(t) + "\n")}
	hmac, err := base64.StdEncoding.DecodeString(randomB64(t))
	if err != nil {
		t.Fatal(err)
	}
	keys.HMAC = hmac
	logs := &testkit.LogBuffer{}
	logger := testkit.JSONLogger(logs)
	addr, httpAddr, _ := serveAppHTTP(t, cfg, keys, logger)

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20s\nlogs:\n%s", what, logs)
			}
			<-time.After(10 * time.Millisecond)
		}
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	const (
		msgDown = "redis tier unavailable: authentication failed"
		msgUp   = "redis tier available again"
	)

	waitFor("the authentication failure logged", func() bool { return logs.Count(slog.LevelWarn, msgDown) > 0 })
	if status, body := get("/readyz"); status != http.StatusOK || !strings.HasPrefix(body, "ok\nredis tier: ") || !strings.Contains(body, "(auth_failed)") {
		t.Errorf("/readyz during the outage: got %d %q, want 200 \"ok\\nredis tier: … (auth_failed)…\"", status, body)
	}
	failures := regexp.MustCompile(`(?m)^tokenbroker_shared_errors_total\{reason="auth_failed"\} (\d+)$`)
	_, body := get("/metrics")
	for _, r := range shared.Reasons { // the metric knows every reason the tier reports
		if !strings.Contains(body, `tokenbroker_shared_errors_total{reason="`+r+`"}`) {
			t.Errorf("/metrics: no tokenbroker_shared_errors_total series for reason %q", r)
		}
	}
	if !failures.MatchString(body) {
		t.Errorf("/metrics: no auth_failed count, want one\n%s", grepLines(body, "tokenbroker_shared"))
	} else if n, _ := strconv.Atoi(failures.FindStringSubmatch(body)[1]); n < 1 {
		t.Errorf("/metrics: got %d auth_failed errors, want at least 1", n)
	}

	// The replica serves on its own meanwhile.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Selector: heldSelector("api/read")}); err != nil {
		t.Errorf("GetToken during the outage: got %v, want a token", err)
	}

	// The operator gives Redis the password the replica has.
	if err := srv.Client().ConfigSet(ctx, "requirepass", wrong).Err(); err != nil {
		t.Fatalf("CONFIG SET requirepass: %v", err)
	}
	waitFor("the recovery logged", func() bool { return logs.Count(slog.LevelInfo, msgUp) > 0 })
	if status, body := get("/readyz"); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/readyz after the recovery: got %d %q, want 200 \"ok\\n\"", status, body)
	}
	if n := logs.Count(slog.LevelWarn, "redis tier"); n != 1 {
		t.Errorf("warnings about the tier: got %d, want 1\n%s", n, logs)
	}
	if n := logs.Count(slog.LevelInfo, msgUp); n != 1 {
		t.Errorf("recovery lines: got %d, want 1\n%s", n, logs)
	}
	for _, pw := range []string{right, wrong} {
		if strings.Contains(logs.String(), pw) {
			t.Errorf("logs: got a Redis password, want none")
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			b.WriteString(line)
		}
	}
	return b.String()
}
