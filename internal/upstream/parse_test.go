package upstream

import (
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTokenResponse(t *testing.T) {
	sentAt := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	const def = 45 * time.Minute
	unsigned := func(payload string) string {
		enc := base64.RawURLEncoding.EncodeToString
		return enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(payload)) + "."
	}
	tests := []struct {
		name         string
		body         string
		requested    []string
		wantLifetime time.Duration
		wantDefault  bool
		wantScopes   []string
		wantErr      string // description of the *Error; "" means success
	}{
		{name: "number", body: `{"access_token":"t","token_type":"Bearer","expires_in":3600}`, wantLifetime: time.Hour},
		{name: "fractional number", body: `{"access_token":"t","token_type":"Bearer","expires_in":1.5}`, wantLifetime: 1500 * time.Millisecond},
		{name: "exponent", body: `{"access_token":"t","token_type":"Bearer","expires_in":3.6e3}`, wantLifetime: time.Hour},
		{name: "string", body: `{"access_token":"t","token_type":"Bearer","expires_in":"3600"}`, wantLifetime: time.Hour},
		{name: "string with spaces", body: `{"access_token":"t","token_type":"Bearer","expires_in":" 60 "}`, wantLifetime: time.Minute},
		{name: "one year", body: `{"access_token":"t","token_type":"Bearer","expires_in":31536000}`, wantLifetime: maxLifetime},
		{name: "null expires_in", body: `{"access_token":"t","token_type":"Bearer","expires_in":null}`, wantLifetime: def, wantDefault: true},
		{name: "empty string expires_in", body: `{"access_token":"t","token_type":"Bearer","expires_in":""}`, wantLifetime: def, wantDefault: true},
		{name: "absent", body: `{"access_token":"t","token_type":"Bearer"}`, wantLifetime: def, wantDefault: true},
		{
			name:         "unsigned JWT exp",
			body:         `{"access_token":"` + unsigned(`{"exp":1893457800}`) + `","token_type":"Bearer"}`,
			wantLifetime: 30 * time.Minute, // 1893457800 is sentAt + 1800s
		},
		{
			// The issuer's clock runs a minute ahead: exp - iat wins.
			name:         "JWT exp and iat",
			body:         `{"access_token":"` + unsigned(`{"iat":1893456060,"exp":1893456360}`) + `","token_type":"Bearer"}`,
			wantLifetime: 5 * time.Minute,
		},
		{
			// Issued long ago: the remaining life, not exp - iat.
			name:         "JWT issued long ago",
			body:         `{"access_token":"` + unsigned(`{"iat":1893450000,"exp":1893456600}`) + `","token_type":"Bearer"}`,
			wantLifetime: 10 * time.Minute,
		},
		{
			name:         "JWT with absurd iat falls back to exp",
			body:         `{"access_token":"` + unsigned(`{"iat":1,"exp":1893457800}`) + `","token_type":"Bearer"}`,
			wantLifetime: 30 * time.Minute,
		},
		{
			name:        "JWT without exp",
			body:        `{"access_token":"` + unsigned(`{"sub":"x"}`) + `","token_type":"Bearer"}`,
			wantDefault: true, wantLifetime: def,
		},
		{
			name:        "JWT with non-numeric exp",
			body:        `{"access_token":"` + unsigned(`{"exp":"soon"}`) + `","token_type":"Bearer"}`,
			wantDefault: true, wantLifetime: def,
		},
		{
			name:        "not base64 payload",
			body:        `{"access_token":"a.!!!.c","token_type":"Bearer"}`,
			wantDefault: true, wantLifetime: def,
		},
		{
			name:    "expired JWT",
			body:    `{"access_token":"` + unsigned(`{"exp":1000}`) + `","token_type":"Bearer"}`,
			wantErr: "malformed response: token already expired",
		},
		{name: "scope string", body: `{"access_token":"t","token_type":"Bearer","expires_in":60,"scope":"a  b"}`, requested: []string{"z"}, wantLifetime: time.Minute, wantScopes: []string{"a", "b"}},
		{name: "scope array", body: `{"access_token":"t","token_type":"Bearer","expires_in":60,"scope":["a","b"]}`, wantLifetime: time.Minute, wantScopes: []string{"a", "b"}},
		{name: "scope absent", body: `{"access_token":"t","token_type":"Bearer","expires_in":60}`, requested: []string{"z"}, wantLifetime: time.Minute, wantScopes: []string{"z"}},
		{name: "scope of odd type", body: `{"access_token":"t","token_type":"Bearer","expires_in":60,"scope":7}`, requested: []string{"z"}, wantLifetime: time.Minute, wantScopes: []string{"z"}},

		{name: "missing access_token", body: `{"token_type":"Bearer","expires_in":60}`, wantErr: "malformed response: missing access_token"},
		{name: "empty access_token", body: `{"access_token":"","token_type":"Bearer","expires_in":60}`, wantErr: "malformed response: missing access_token"},
		{name: "missing token_type", body: `{"access_token":"t","expires_in":60}`, wantErr: "malformed response: missing token_type"},
		{name: "access_token not a string", body: `{"access_token":5,"token_type":"Bearer"}`, wantErr: "malformed response"},
		{name: "truncated JSON", body: `{"access_token":"t",`, wantErr: "malformed response"},
		{name: "array", body: `[1,2]`, wantErr: "malformed response"},
		{name: "null", body: `null`, wantErr: "malformed response: missing access_token"},
		{name: "empty", body: ``, wantErr: "malformed response"},
		{name: "zero expires_in", body: `{"access_token":"t","token_type":"Bearer","expires_in":0}`, wantErr: "malformed response: expires_in out of range"},
		{name: "negative expires_in", body: `{"access_token":"t","token_type":"Bearer","expires_in":-5}`, wantErr: "malformed response: expires_in out of range"},
		{name: "huge expires_in", body: `{"access_token":"t","token_type":"Bearer","expires_in":1e300}`, wantErr: "malformed response: expires_in out of range"},
		{name: "over a year", body: `{"access_token":"t","token_type":"Bearer","expires_in":31536001}`, wantErr: "malformed response: expires_in out of range"},
		{name: "non-numeric string", body: `{"access_token":"t","token_type":"Bearer","expires_in":"soon"}`, wantErr: "malformed response: expires_in is not a number"},
		{name: "NaN string", body: `{"access_token":"t","token_type":"Bearer","expires_in":"NaN"}`, wantErr: "malformed response: expires_in out of range"},
		{name: "Inf string", body: `{"access_token":"t","token_type":"Bearer","expires_in":"+Inf"}`, wantErr: "malformed response: expires_in out of range"},
		{name: "bool", body: `{"access_token":"t","token_type":"Bearer","expires_in":true}`, wantErr: "malformed response: expires_in is not a number"},
		{name: "oversized", body: `{"access_token":"t","token_type":"Bearer","pad":"` + strings.Repeat("x", maxBodySize) + `"}`, wantErr: "malformed response: body larger than 1 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, usedDefault, err := parseTokenResponse([]byte(tt.body), sentAt, tt.requested, def)
			if tt.wantErr != "" {
				var ue *Error
				if !errors.As(err, &ue) || ue.Kind != ErrUnavailable {
					t.Fatalf("error: got %v, want ErrUnavailable %q", err, tt.wantErr)
				}
				if ue.Description != tt.wantErr {
					t.Errorf("Description: got %q, want %q", ue.Description, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: got %v, want nil", err)
			}
			if usedDefault != tt.wantDefault {
				t.Errorf("usedDefault: got %v, want %v", usedDefault, tt.wantDefault)
			}
			if got := tok.ExpiresAt.Sub(tok.IssuedAt); got != tt.wantLifetime {
				t.Errorf("lifetime: got %v, want %v", got, tt.wantLifetime)
			}
			if !tok.IssuedAt.Equal(sentAt) {
				t.Errorf("IssuedAt: got %v, want %v", tok.IssuedAt, sentAt)
			}
			if !slices.Equal(tok.Scopes, tt.wantScopes) {
				t.Errorf("Scopes: got %q, want %q", tok.Scopes, tt.wantScopes)
			}
		})
	}
}

func TestParseTokenResponseRealJWT(t *testing.T) {
	sentAt := time.Now().Truncate(time.Second)
	tok := makeJWT(t, time.Time{}, sentAt.Add(10*time.Minute))
	got, usedDefault, err := parseTokenResponse([]byte(`{"access_token":"`+tok+`","token_type":"Bearer"}`), sentAt, nil, time.Hour)
	if err != nil || usedDefault {
		t.Fatalf("parse: got %v, usedDefault %v, want success from exp", err, usedDefault)
	}
	if d := got.ExpiresAt.Sub(sentAt); d != 10*time.Minute {
		t.Errorf("lifetime: got %v, want 10m", d)
	}
}

func TestParseTokenResponseCopiesRequested(t *testing.T) {
	requested := []string{"a", "b"}
	tok, _, err := parseTokenResponse([]byte(`{"access_token":"t","token_type":"Bearer","expires_in":60}`), time.Now(), requested, time.Hour)
	if err != nil {
		t.Fatalf("parse: got %v, want nil", err)
	}
	tok.Scopes[0] = "changed"
	if requested[0] != "a" {
		t.Errorf("requested scopes: got %q, want them untouched", requested)
	}
}

func TestParseTokenResponseDefaultFallback(t *testing.T) {
	for _, def := range []time.Duration{0, -time.Second, 2 * maxLifetime} {
		tok, usedDefault, err := parseTokenResponse([]byte(`{"access_token":"t","token_type":"Bearer"}`), time.Now(), nil, def)
		if err != nil || !usedDefault {
			t.Fatalf("default %v: got %v, usedDefault %v, want success with default", def, err, usedDefault)
		}
		if got := tok.ExpiresAt.Sub(tok.IssuedAt); got != fallbackLifetime {
			t.Errorf("default %v: got lifetime %v, want %v", def, got, fallbackLifetime)
		}
	}
}

func FuzzParseTokenResponse(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	jwtTok := enc([]byte(`{"alg":"ES256","typ":"JWT"}`)) + "." + enc([]byte(`{"exp":1893457800,"iat":1893456000}`)) + ".sig"
	seeds := []string{
		`{"access_token":"t","token_type":"Bearer","expires_in":3600}`,
		`{"access_token":"t","token_type":"Bearer","expires_in":"3600","scope":"a b"}`,
		`{"access_token":"` + jwtTok + `","token_type":"Bearer"}`,
		`{"access_token":"t","token_type":"Bearer"}`,
		`{"access_token":"t","token_type":"Bearer","expires_in":1e-9}`,
		`{"access_token":"t","token_type":"Bearer","expires_in":"-0"}`,
		`{"access_token":"a.e30.c","token_type":"Bearer","scope":["x",1]}`,
		`{"error":"invalid_client"}`,
		`<html>garbage</html>`,
		"\x00\xff{",
		``,
	}
	for _, s := range seeds {
		f.Add([]byte(s), int64(1893456000), "a b")
	}
	f.Fuzz(func(t *testing.T, body []byte, sentUnix int64, requested string) {
		// Keep sentAt in the range a real clock gives.
		sentAt := time.Unix(1_000_000_000+sentUnix%2_000_000_000, 0)
		if sentUnix < 0 {
			sentAt = time.Unix(1_000_000_000, 0)
		}
		tok, usedDefault, err := parseTokenResponse(body, sentAt, strings.Fields(requested), time.Hour)
		if err != nil {
			var ue *Error
			if !errors.As(err, &ue) || ue.Kind != ErrUnavailable {
				t.Fatalf("error: got %v (%T), want an ErrUnavailable *Error", err, err)
			}
			if !strings.HasPrefix(ue.Description, "malformed response") {
				t.Fatalf("Description: got %q, want one of ours", ue.Description)
			}
			if tok.AccessToken != "" || !tok.ExpiresAt.IsZero() || tok.Scopes != nil {
				t.Fatalf("token on error: got %+v, want zero", tok)
			}
			return
		}
		if tok.AccessToken.Reveal() == "" || tok.TokenType == "" {
			t.Fatalf("token: got empty access_token or token_type")
		}
		if !tok.IssuedAt.Equal(sentAt) {
			t.Fatalf("IssuedAt: got %v, want %v", tok.IssuedAt, sentAt)
		}
		if !tok.ExpiresAt.After(sentAt) {
			t.Fatalf("ExpiresAt: got %v, want after %v", tok.ExpiresAt, sentAt)
		}
		if life := tok.ExpiresAt.Sub(sentAt); life > maxLifetime {
			t.Fatalf("lifetime: got %v, want <= %v", life, maxLifetime)
		}
		if usedDefault && tok.ExpiresAt.Sub(sentAt) != time.Hour {
			t.Fatalf("default lifetime: got %v, want 1h", tok.ExpiresAt.Sub(sentAt))
		}
		for _, s := range tok.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\n") {
				t.Fatalf("Scopes: got %q, want no empty or blank-containing scope", tok.Scopes)
			}
		}
	})
}
