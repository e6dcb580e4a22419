package httpapi

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// FuzzTokenRequest: whatever a caller sends, the endpoint answers with a
// well-formed status, never panics, and never echoes the client secret.
// The broker behind it hands out a token for any request that reaches it.
func FuzzTokenRequest(f *testing.F) {
	b := &stubBroker{getToken: func(_ context.Context, req broker.Request) (broker.Token, error) {
		return broker.Token{AccessToken: "fuzz-token", TokenType: "Bearer", ExpiresAt: time.Now().Add(time.Hour)}, nil
	}}
	h, err := New(Config{Broker: b, Providers: []string{"dev"}, MaxBodyBytes: 64 << 10, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/oauth2/token", "application/x-www-form-urlencoded", "Basic ZGVtbzpzM2NyZXQ=", "grant_type=client_credentials&scope=a%2Fb")
	f.Add("/oauth2/dev/token", "application/x-www-form-urlencoded", "", "grant_type=client_credentials&client_id=demo&client_secret=S3CRET-x")
	f.Add("/oauth2/token", "text/plain", "Bearer x", "grant_type=x&client_secret=S3CRET-y&client_secret=S3CRET-z")
	f.Fuzz(func(t *testing.T, path, contentType, authorization, body string) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req := httptest.NewRequest(http.MethodPost, "http://broker.test/", strings.NewReader(body))
		req.URL.Path = path
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", authorization)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code >= 600 {
			t.Fatalf("status %d", rec.Code)
		}
		if rec.Code >= 500 {
			t.Fatalf("status %d for a request the broker would serve or refuse: %s", rec.Code, rec.Body)
		}
		if i := strings.Index(body, "client_secret="); i >= 0 {
			sec := body[i+len("client_secret="):]
			if j := strings.IndexByte(sec, '&'); j >= 0 {
				sec = sec[:j]
			}
			// Only secrets carrying the marker are checked: a short or
			// common secret may be part of a legitimate answer.
			if strings.HasPrefix(sec, "S3CRET") && strings.Contains(rec.Body.String(), sec) {
				t.Fatalf("the answer echoes the client secret: %s", rec.Body)
			}
		}
	})
}
