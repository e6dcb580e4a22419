package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/devissuer"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestServeDevIssuer: -dev-issuer serves a token endpoint for the demo
// client on a loopback address only, with the secret it was given.
func TestServeDevIssuer(t *testing.T) {
	discard := slog.New(slog.NewJSONHandler(io.Discard, nil))
	for _, tc := range []struct{ addr, sec, want string }{
		{"0.0.0.0:0", "s", "must be a loopback address"},
		{"example.com:80", "s", "must be a loopback address"},
		{"127.0.0.1", "s", "must be host:port"},
		{"127.0.0.1:0", "", "TOKENBROKER_DEV_SECRET must hold the client secret"},
	} {
		err := ServeDevIssuer(context.Background(), tc.addr, secret.String(tc.sec), time.Minute, discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ServeDevIssuer(%q) = %v, want an error containing %q", tc.addr, err, tc.want)
		}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeDevIssuer(ctx, addr, "dev-secret", time.Minute, discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeDevIssuer: %v", err)
		}
	}()
	post := func(sec string) int {
		for deadline := time.Now().Add(10 * time.Second); ; {
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+devissuer.TokenPath, strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth(DevIssuerClientID, sec)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				return resp.StatusCode
			}
			if time.Now().After(deadline) {
				t.Fatalf("token endpoint never answered: %v", err)
			}
			time.Sleep(10 * time.Millisecond) // the listener is not up yet
		}
	}
	if got := post("dev-secret"); got != http.StatusOK {
		t.Errorf("with the secret: got status %d, want 200", got)
	}
	if got := post("wrong"); got != http.StatusUnauthorized {
		t.Errorf("with a wrong secret: got status %d, want 401", got)
	}
}
