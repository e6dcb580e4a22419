package upstream

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

const (
	// maxBodySize caps how much of a response body is read.
	maxBodySize = 1 << 20
	// maxLifetime is the longest token lifetime believed; anything longer is
	// treated as a malformed answer.
	maxLifetime = 365 * 24 * time.Hour
	// fallbackLifetime is used when the provider configures no
	// DefaultLifetime (Amazon Cognito's default access token lifetime).
	fallbackLifetime = time.Hour
)

// tokenResponse is the successful token response of RFC 6749 section 5.1.
// expires_in and scope are kept raw because endpoints differ in how they
// encode them.
type tokenResponse struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	Scope       json.RawMessage `json:"scope"`
}

// malformed returns the error for a response that cannot be used. The
// description is always one of ours: the body is never quoted.
func malformed(detail string) *Error {
	d := "malformed response"
	if detail != "" {
		d += ": " + detail
	}
	return &Error{Kind: ErrUnavailable, Description: d}
}

// parseTokenResponse parses a successful token response body. sentAt is when
// the request was sent; the token's lifetime is counted from it. requested
// are the scopes asked for, reported when the endpoint names none.
// defaultLifetime is assumed when the body gives neither expires_in nor a JWT
// exp claim; usedDefault reports that case, so the caller can warn.
//
// Errors are *Error of kind ErrUnavailable without Provider or Status; their
// descriptions never contain any part of body.
func parseTokenResponse(body []byte, sentAt time.Time, requested []string, defaultLifetime time.Duration) (tok Token, usedDefault bool, err error) {
	if len(body) > maxBodySize {
		return Token{}, false, malformed("body larger than 1 MiB")
	}
	var resp tokenResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return Token{}, false, malformed("")
	}
	if resp.AccessToken == "" {
		return Token{}, false, malformed("missing access_token")
	}
	if resp.TokenType == "" {
		return Token{}, false, malformed("missing token_type")
	}

	lifetime, found, err := parseExpiresIn(resp.ExpiresIn)
	if err != nil {
		return Token{}, false, err
	}
	if !found {
		lifetime, found, err = jwtLifetime(resp.AccessToken, sentAt)
		if err != nil {
			return Token{}, false, err
		}
	}
	if !found {
		usedDefault = true
		lifetime = defaultLifetime
		if lifetime <= 0 || lifetime > maxLifetime {
			lifetime = fallbackLifetime
		}
	}

	scopes := parseScope(resp.Scope)
	if scopes == nil && len(requested) > 0 {
		scopes = append([]string(nil), requested...)
	}
	return Token{
		AccessToken: secret.String(resp.AccessToken),
		TokenType:   resp.TokenType,
		Scopes:      scopes,
		IssuedAt:    sentAt,
		ExpiresAt:   sentAt.Add(lifetime),
	}, usedDefault, nil
}

// parseExpiresIn reads expires_in given as a JSON number or a numeric
// string. found is false when it is absent, null or an empty string.
func parseExpiresIn(raw json.RawMessage) (lifetime time.Duration, found bool, err error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false, nil
	}
	var text string
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, false, malformed("invalid expires_in")
		}
		text = strings.TrimSpace(text)
		if text == "" {
			return 0, false, nil
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		text = string(raw)
	default:
		return 0, false, malformed("expires_in is not a number")
	}
	secs, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return 0, false, malformed("expires_in is not a number")
	}
	d, ok := secondsToLifetime(secs)
	if !ok {
		return 0, false, malformed("expires_in out of range")
	}
	return d, true, nil
}

// secondsToLifetime converts a number of seconds to a lifetime, or reports
// that it is not a sane one (not finite, not positive, over a year).
func secondsToLifetime(secs float64) (time.Duration, bool) {
	if math.IsNaN(secs) || secs <= 0 || secs > maxLifetime.Seconds() {
		return 0, false
	}
	d := time.Duration(secs * float64(time.Second))
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// jwtLifetime reads the lifetime of an access token that is a JWS compact
// serialisation, from its unverified payload. The claims are read for this
// one purpose and trusted for nothing else. When the payload has iat, the
// lifetime is exp - iat (immune to clock skew between us and the issuer);
// capped by exp - sentAt. found is false when the token is not a readable
// JWT or has no exp claim.
func jwtLifetime(token string, sentAt time.Time) (lifetime time.Duration, found bool, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return 0, false, nil
	}
	payload, decErr := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if decErr != nil {
		return 0, false, nil
	}
	var claims struct {
		Exp json.Number `json:"exp"`
		Iat json.Number `json:"iat"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == "" {
		return 0, false, nil
	}
	exp, convErr := claims.Exp.Float64()
	if convErr != nil || math.IsNaN(exp) || math.IsInf(exp, 0) {
		return 0, false, nil
	}
	secs := exp - (float64(sentAt.Unix()) + float64(sentAt.Nanosecond())/1e9)
	d, ok := secondsToLifetime(secs)
	if !ok {
		if secs <= 0 {
			return 0, false, malformed("token already expired")
		}
		return 0, false, malformed("token lifetime out of range")
	}
	// exp - iat is immune to an issuer clock running ahead of ours; the
	// shorter of the two never overstates the remaining life.
	if iat, convErr := claims.Iat.Float64(); claims.Iat != "" && convErr == nil {
		if li, ok := secondsToLifetime(exp - iat); ok && li < d {
			d = li
		}
	}
	return d, true, nil
}

// parseScope reads the granted scopes: a space-separated string (RFC 6749
// section 3.3), or a JSON array of strings as some endpoints send. It returns
// nil when the field is absent, empty or of another shape.
func parseScope(raw json.RawMessage) []string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if f := strings.Fields(s); len(f) > 0 {
			return f
		}
		return nil
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		var out []string
		for _, item := range list {
			out = append(out, strings.Fields(item)...)
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}
