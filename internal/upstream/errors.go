package upstream

import (
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Limits on text taken from the endpoint's answers into an Error.
const (
	maxDescriptionLen = 200
	maxCodeLen        = 64
)

// Error implements the error interface. The message names the provider, the
// OAuth error code (or the kind when the endpoint sent none), the HTTP status
// when there was one, and the sanitised description, for example:
//
//	provider "cognito": invalid_client (401): Client authentication failed
func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString("provider ")
	b.WriteString(strconv.Quote(e.Provider))
	b.WriteString(": ")
	switch {
	case e.Code != "":
		b.WriteString(e.Code)
	case e.Kind != nil:
		b.WriteString(e.Kind.Error())
	default:
		b.WriteString("error")
	}
	if e.Status != 0 {
		b.WriteString(" (")
		b.WriteString(strconv.Itoa(e.Status))
		b.WriteString(")")
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	if e.RetryAfter > 0 {
		b.WriteString("; retry after ")
		b.WriteString(e.RetryAfter.String())
	}
	return b.String()
}

// Unwrap returns the error's kind, so errors.Is(err, ErrThrottled) and the
// like work.
func (e *Error) Unwrap() error {
	if e == nil {
		return nil
	}
	return e.Kind
}

// Retryable reports whether the same request may succeed later: true for
// ErrThrottled and ErrUnavailable.
func (e *Error) Retryable() bool {
	if e == nil {
		return false
	}
	return e.Kind == ErrThrottled || e.Kind == ErrUnavailable
}

// RetryDelay returns RetryAfter. It lets layers that know nothing of this
// package find the delay through interface{ RetryDelay() time.Duration }.
func (e *Error) RetryDelay() time.Duration {
	if e == nil {
		return 0
	}
	return e.RetryAfter
}

// scrubber removes a client's credentials from text that came from the
// endpoint before the text is put in an Error.
type scrubber struct {
	needles []string
}

// newScrubber returns a scrubber for the request's secret in the forms an
// endpoint might echo: as sent, form-encoded, inside the Basic credentials,
// and as sanitise would render each of them.
func newScrubber(r Request) scrubber {
	s := r.ClientSecret.Reveal()
	if s == "" {
		return scrubber{}
	}
	basic := url.QueryEscape(r.ClientID) + ":" + url.QueryEscape(s)
	forms := []string{
		s,
		url.QueryEscape(s),
		url.PathEscape(s),
		base64.StdEncoding.EncodeToString([]byte(basic)),
		base64.StdEncoding.EncodeToString([]byte(r.ClientID + ":" + s)),
	}
	var needles []string
	seen := map[string]bool{}
	for _, f := range forms {
		for _, n := range []string{f, sanitise(f)} {
			if n != "" && !seen[n] {
				seen[n] = true
				needles = append(needles, n)
			}
		}
	}
	return scrubber{needles: needles}
}

// clean turns endpoint-supplied text into something safe to show: the
// secret removed, printable ASCII only, at most limit bytes.
func (s scrubber) clean(text string, limit int) string {
	text = s.scrub(text)
	text = sanitise(text)
	text = s.scrub(text)
	text = strings.TrimSpace(text)
	if len(text) > limit {
		text = strings.TrimSpace(text[:limit])
	}
	return text
}

func (s scrubber) scrub(text string) string {
	for _, n := range s.needles {
		text = strings.ReplaceAll(text, n, secret.Redacted)
	}
	return text
}

// sanitise maps text to printable ASCII: whitespace becomes a space, any
// other control character, non-ASCII character or invalid UTF-8 becomes '?'.
func sanitise(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	for _, r := range text {
		switch {
		case r >= 0x20 && r <= 0x7e:
			b.WriteRune(r)
		case r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f':
			b.WriteByte(' ')
		default:
			b.WriteByte('?')
		}
	}
	return b.String()
}
