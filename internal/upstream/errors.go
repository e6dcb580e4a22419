package upstream

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"slices"
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

// scrubRun is the length of the runs of a secret's forms that the
// scrubber looks for: text holding any scrubRun consecutive bytes of one of
// the forms loses them, so a truncated copy, or one with a prefix or a
// suffix, is caught as well as a whole one.
const scrubRun = 12

// scrubber removes a client's secret from text that came from the endpoint
// before the text is put in an Error. It matches case-insensitively (ASCII
// letters), so upper- and lower-case copies of the secret and of its hex
// and base64 forms are caught too.
type scrubber struct {
	// secret is the secret; the runs are made from it when first needed
	// (most fetches never clean any text).
	secret string
	built  bool
	// runs are the lower-cased scrubRun-byte runs of the forms.
	runs map[string]struct{}
	// short are the lower-cased forms shorter than scrubRun, matched whole.
	short []string
}

// newScrubber returns a scrubber for the request's secret in the forms an
// endpoint might echo (see secretForms), as sanitise renders them: it
// works on sanitised text, where every character is one byte, so a run
// is scrubRun characters and any non-ASCII character of the secret
// matches whatever non-ASCII character (sanitised to '?') stands in its
// place.
func newScrubber(r Request) *scrubber {
	return &scrubber{secret: r.ClientSecret.Reveal()}
}

// build makes the runs and short forms, once.
func (sc *scrubber) build() {
	if sc.built {
		return
	}
	sc.built = true
	if sc.secret == "" {
		return
	}
	sc.runs = map[string]struct{}{}
	seen := map[string]bool{}
	for _, f := range secretForms(sc.secret) {
		n := asciiLower(sanitise(f))
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		if len(n) < scrubRun {
			sc.short = append(sc.short, n)
			continue
		}
		for i := 0; i+scrubRun <= len(n); i++ {
			sc.runs[n[i:i+scrubRun]] = struct{}{}
		}
	}
}

// secretForms returns the forms of secret s an endpoint might echo: as
// sent, URL-encoded (query and path escaping), hex, and standard and URL
// base64 (padded and raw) of each of those. The base64 forms are also
// given for the text with its first one or two bytes dropped, whole groups
// only: base64 of the secret behind a prefix of any length (the Basic
// credentials "id:secret", for one) holds one of them.
func secretForms(s string) []string {
	plain := []string{s, url.QueryEscape(s), url.PathEscape(s)}
	forms := append([]string(nil), plain...)
	forms = append(forms, hex.EncodeToString([]byte(s)))
	for _, p := range plain {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			forms = append(forms, enc.EncodeToString([]byte(p)))
		}
		for skip := 1; skip < 3 && skip < len(p); skip++ {
			rest := p[skip:]
			rest = rest[:len(rest)/3*3]
			forms = append(forms,
				base64.RawStdEncoding.EncodeToString([]byte(rest)),
				base64.RawURLEncoding.EncodeToString([]byte(rest)))
		}
	}
	return forms
}

// clean turns endpoint-supplied text into something safe to show:
// printable ASCII only, the secret removed, at most limit bytes.
func (s *scrubber) clean(text string, limit int) string {
	text = s.scrub(sanitise(text))
	text = strings.TrimSpace(text)
	if len(text) > limit {
		text = strings.TrimSpace(text[:limit])
	}
	return text
}

// scrub replaces every stretch of text (sanitised already) covered by a
// run or a short form of the secret, ignoring ASCII case, with
// secret.Redacted; overlapping and adjacent matches make one stretch.
func (s *scrubber) scrub(text string) string {
	s.build()
	if len(s.runs) == 0 && len(s.short) == 0 {
		return text
	}
	low := asciiLower(text)
	var spans [][2]int // [start, end), sorted by start
	for i := 0; i+scrubRun <= len(low); i++ {
		if _, ok := s.runs[low[i:i+scrubRun]]; ok {
			spans = append(spans, [2]int{i, i + scrubRun})
		}
	}
	for _, n := range s.short {
		for from := 0; from < len(low); {
			j := strings.Index(low[from:], n)
			if j < 0 {
				break
			}
			spans = append(spans, [2]int{from + j, from + j + len(n)})
			from += j + 1
		}
	}
	if len(spans) == 0 {
		return text
	}
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	var b strings.Builder
	b.Grow(len(text))
	last := 0 // text[:last] is written or redacted
	for i := 0; i < len(spans); {
		start, end := spans[i][0], spans[i][1]
		for i++; i < len(spans) && spans[i][0] <= end; i++ {
			end = max(end, spans[i][1])
		}
		b.WriteString(text[last:start])
		b.WriteString(secret.Redacted)
		last = end
	}
	b.WriteString(text[last:])
	return b.String()
}

// asciiLower lower-cases the ASCII letters of s, byte for byte, so that
// offsets in the result are offsets in s.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
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
