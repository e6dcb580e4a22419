package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/backoff"
)

const (
	// maxRetryAfter caps the delay an endpoint may ask for with Retry-After.
	maxRetryAfter = 5 * time.Minute
	// maxDrain is how much of an unread body is drained so that the
	// connection can be reused; a longer body costs the connection.
	maxDrain = 64 << 10
	// userAgent is sent with every request.
	userAgent = "tokenbroker"
)

// Options tune a Client. MaxAttempts, BaseBackoff and MaxBackoff have no
// defaults here: the configuration holds them (config.DefaultProvider), and
// New refuses a zero value.
type Options struct {
	// HTTPClient sends the requests; nil means a new client with Go's
	// default transport. It is copied, and the copy never follows
	// redirects (a redirected request could carry the client secret
	// elsewhere). Per-attempt timeouts come from Provider.Timeout.
	HTTPClient *http.Client
	// Logger receives warnings and retry notes; nil means slog.Default().
	Logger *slog.Logger
	// MaxAttempts is how many HTTP attempts Fetch makes at most, the first
	// included; at least 1.
	MaxAttempts int
	// BaseBackoff is the backoff ceiling before the first retry; it doubles
	// with each retry up to MaxBackoff. Greater than 0.
	BaseBackoff time.Duration
	// MaxBackoff is the largest backoff ceiling; at least BaseBackoff.
	MaxBackoff time.Duration
	// Fleet, when set, is the provider's fleet-wide request budget, taken
	// after the replica's own (budget.go).
	Fleet *Fleet
	// WrapTransport, when set, wraps every HTTP transport the client
	// sends with (HTTPClient's, and each per-certificate one for mTLS):
	// tracing's client spans and traceparent header.
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// Client fetches tokens from one provider's token endpoint. It is safe for
// concurrent use; all its requests share the provider's request budget.
type Client struct {
	p           Provider
	tokenURL    string
	hc          *http.Client
	log         *slog.Logger
	maxAttempts int
	baseBackoff time.Duration
	maxBackoff  time.Duration
	budget      *budget
	tls         tlsClients // per client certificate (auth.go)
	// assertionReads holds the client_assertion_file paths read so far
	// (auth.go readAssertion warns about a file's mode once).
	assertionReads sync.Map
	// base is HTTPClient's own transport (nil: Go's default), which the
	// per-certificate transports clone; wrap is Options.WrapTransport.
	base http.RoundTripper
	wrap func(http.RoundTripper) http.RoundTripper

	// Seams for tests.
	now    func() time.Time
	wait   func(ctx context.Context, d time.Duration) error
	jitter func(n int64) int64 // uniform in [0, n)
}

// New returns a Client for p. It checks p and o and returns an error naming
// the first bad field; a zero value is an error like any other bad value.
func New(p Provider, o Options) (*Client, error) {
	if err := validateProvider(p); err != nil {
		return nil, err
	}
	if err := validateOptions(p, o); err != nil {
		return nil, err
	}
	hc := &http.Client{}
	if o.HTTPClient != nil {
		copied := *o.HTTPClient
		hc = &copied
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	base := hc.Transport
	if o.WrapTransport != nil {
		rt := base
		if rt == nil {
			rt = http.DefaultTransport
		}
		hc.Transport = o.WrapTransport(rt)
	}
	return &Client{
		p:           p,
		tokenURL:    p.TokenURL,
		hc:          hc,
		base:        base,
		wrap:        o.WrapTransport,
		log:         o.Logger,
		maxAttempts: o.MaxAttempts,
		baseBackoff: o.BaseBackoff,
		maxBackoff:  o.MaxBackoff,
		budget:      newBudget(p, o.Fleet),
		now:         time.Now,
		wait:        sleepCtx,
		jitter:      rand.Int64N,
	}, nil
}

func validateProvider(p Provider) error {
	bad := func(field, rule string) error {
		return fmt.Errorf("upstream: provider %q: %s: %s", p.Name, field, rule)
	}
	if strings.TrimSpace(p.Name) == "" {
		return bad("Name", "must not be empty")
	}
	u, err := url.Parse(p.TokenURL)
	switch {
	case err != nil || p.TokenURL == "":
		return bad("TokenURL", "must be a valid URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("TokenURL", "scheme must be http or https")
	case u.Host == "":
		return bad("TokenURL", "must name a host")
	case u.User != nil:
		return bad("TokenURL", "must not contain user information")
	case u.Fragment != "" || strings.Contains(p.TokenURL, "#"):
		return bad("TokenURL", "must not contain a fragment")
	}
	switch p.AuthMethod {
	case AuthBasic, AuthPost:
	default:
		return bad("AuthMethod", fmt.Sprintf("must be %q or %q", AuthBasic, AuthPost))
	}
	if p.Timeout <= 0 {
		return bad("Timeout", "must be greater than 0")
	}
	if math.IsNaN(p.RateLimit) || p.RateLimit <= 0 {
		return bad("RateLimit", "must be greater than 0")
	}
	if p.Burst < 1 {
		return bad("Burst", "must be at least 1")
	}
	for _, f := range []struct {
		name  string
		share float64
	}{{"PassthroughShare", p.PassthroughShare}, {"PassthroughCallerShare", p.PassthroughCallerShare}, {"PassthroughClientShare", p.PassthroughClientShare}} {
		if !(f.share > 0 && f.share <= 1) {
			return bad(f.name, "must be greater than 0 and at most 1")
		}
	}
	if p.DefaultLifetime <= 0 || p.DefaultLifetime > maxLifetime {
		return bad("DefaultLifetime", "must be greater than 0 and at most 8760h")
	}
	return nil
}

func validateOptions(p Provider, o Options) error {
	bad := func(field, rule string) error {
		return fmt.Errorf("upstream: provider %q: Options.%s: %s", p.Name, field, rule)
	}
	if o.MaxAttempts < 1 {
		return bad("MaxAttempts", "must be at least 1")
	}
	if o.BaseBackoff <= 0 {
		return bad("BaseBackoff", "must be greater than 0")
	}
	if o.MaxBackoff < o.BaseBackoff {
		return bad("MaxBackoff", "must not be less than BaseBackoff")
	}
	return nil
}

// Provider returns the provider the Client was made for.
func (c *Client) Provider() Provider { return c.p }

// Fetch obtains a token with the client-credentials grant.
//
// Throttling and transient failures (ErrThrottled, ErrUnavailable) are
// retried up to Options.MaxAttempts times, after the delay the endpoint asks
// for with Retry-After or else an exponential backoff with full jitter. Every
// attempt first takes a token from the provider's request budget, and a
// pass-through request (Request.Passthrough) from the pass-through share
// and its caller's and client id's limits as well (see budget). Nothing
// waits past ctx's deadline: when the next wait would end after it, Fetch
// returns the last failure at once (throttling errors with RetryAfter set to
// the wait). When the very first attempt would have to wait past the
// deadline for the budget, Fetch sends nothing and returns a Local
// ErrThrottled error with RetryAfter set.
//
// Errors are *Error values, except that a ctx that ends before any answer
// was received yields ctx's error (wrapped). An invalid Request yields a
// Local ErrRejected error naming the field.
//
// The token, or the *Error, says how many requests were sent for it
// (Token.Requests, Error.Requests), retries included.
func (c *Client) Fetch(ctx context.Context, r Request) (Token, error) {
	sent := 0
	tok, err := c.fetch(ctx, r, &sent)
	if err != nil {
		var ue *Error
		if errors.As(err, &ue) {
			ue.Requests = sent
		}
		return Token{}, err
	}
	tok.Requests = sent
	return tok, nil
}

// fetch is Fetch, counting in *sent the requests it sends.
func (c *Client) fetch(ctx context.Context, r Request, sent *int) (Token, error) {
	if err := c.validateRequest(r); err != nil {
		return Token{}, err
	}
	if err := ctx.Err(); err != nil {
		return Token{}, c.ctxError(err)
	}
	form := c.form(r)
	scrub := newScrubber(r)

	maxAttempts := c.maxAttempts
	if r.MaxAttempts > 0 {
		maxAttempts = min(maxAttempts, r.MaxAttempts)
	}
	var last *Error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if attempt > 1 {
			d := c.retryDelay(attempt-2, last)
			if !c.fits(ctx, d) {
				return Token{}, withDelay(last, d)
			}
			c.log.DebugContext(ctx, "retrying token request",
				"provider", c.p.Name, "attempt", attempt, "delay", d, "error", last.Error())
			if c.wait(ctx, d) != nil {
				return Token{}, last
			}
		}
		if err := c.takeBudget(ctx, r, last); err != nil {
			return Token{}, err
		}
		plan, perr := c.plan(r, scrub)
		if perr != nil {
			if last != nil {
				return Token{}, last
			}
			return Token{}, perr
		}
		*sent++
		tok, err := c.attempt(ctx, r.Scopes, form, plan)
		if err == nil {
			return tok, nil
		}
		var ue *Error
		if errors.As(err, &ue) {
			c.noteRejected(r.Credential, ue)
		}
		if !errors.As(err, &ue) {
			// ctx ended during the attempt.
			if last != nil {
				return Token{}, last
			}
			return Token{}, err
		}
		if !ue.Retryable() {
			return Token{}, ue
		}
		last = ue
	}
	if last.Kind == ErrThrottled && last.RetryAfter == 0 {
		last.RetryAfter = c.backoff().Ceiling(maxAttempts - 1)
	}
	return Token{}, last
}

// withDelay returns e, a retryable failure that will not be retried, with
// RetryAfter raised to d when e is throttling.
func withDelay(e *Error, d time.Duration) *Error {
	if e.Kind == ErrThrottled && e.RetryAfter < d {
		e.RetryAfter = d
	}
	return e
}

// validateRequest checks r before anything is sent.
func (c *Client) validateRequest(r Request) error {
	bad := func(field, rule string) error {
		return &Error{
			Kind:        ErrRejected,
			Provider:    c.p.Name,
			Local:       true,
			Description: "invalid request: " + field + ": " + rule,
		}
	}
	if r.ClientID == "" {
		return bad("ClientID", "must not be empty")
	}
	if r.Credential == nil && r.ClientSecret.Reveal() == "" {
		return bad("ClientSecret", "must not be empty")
	}
	if len(r.Params) > MaxParams {
		return bad("Params", "must hold at most "+strconv.Itoa(MaxParams)+" parameters")
	}
	for i, p := range r.Params {
		if rule := ParamRule(p[0], p[1]); rule != "" {
			return bad(fmt.Sprintf("Params[%d]", i), rule)
		}
	}
	for i, s := range r.Scopes {
		if rule := ScopeRule(s); rule != "" {
			return bad(fmt.Sprintf("Scopes[%d]", i), rule)
		}
	}
	return nil
}

// form returns the request body (RFC 6749 section 4.4.2) without the
// client authentication, which each attempt adds (see plan).
func (c *Client) form(r Request) url.Values {
	v := url.Values{}
	v.Set("grant_type", "client_credentials")
	if len(r.Scopes) > 0 {
		v.Set("scope", strings.Join(r.Scopes, " "))
	}
	if r.Audience != "" {
		v.Set("audience", r.Audience)
	}
	if r.Resource != "" {
		v.Set("resource", r.Resource)
	}
	for _, p := range r.Params {
		v.Add(p[0], p[1])
	}
	return v
}

// fits reports whether a wait of d ends no later than ctx's deadline.
func (c *Client) fits(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return !ok || !c.now().Add(d).After(deadline)
}

// retryDelay is the wait before retry number n (from 0) after failure last:
// full jitter, or the endpoint's Retry-After when it sent a longer one (a
// Retry-After of 0 does not turn retries into a tight loop).
func (c *Client) retryDelay(n int, last *Error) time.Duration {
	var retryAfter time.Duration
	if last.retryAfterSet {
		retryAfter = last.RetryAfter
	}
	return c.backoff().Delay(n, retryAfter)
}

// backoff is the retry policy: Options.BaseBackoff doubling up to
// Options.MaxBackoff, full jitter from c.jitter.
func (c *Client) backoff() backoff.Policy {
	return backoff.Policy{Base: c.baseBackoff, Max: c.maxBackoff, Rand: c.jitter}
}

// ctxError wraps a context error with the provider's name.
func (c *Client) ctxError(err error) error {
	return fmt.Errorf("upstream: provider %q: %w", c.p.Name, err)
}

// attempt sends one request. Its error is an *Error, or a wrapped context
// error when ctx ended first.
func (c *Client) attempt(ctx context.Context, requested []string, base url.Values, plan authPlan) (Token, error) {
	actx, cancel := context.WithTimeout(ctx, c.p.Timeout)
	defer cancel()
	form := base
	if len(plan.form) > 0 {
		form = make(url.Values, len(base)+len(plan.form))
		for k, v := range base {
			form[k] = v
		}
		for _, p := range plan.form {
			form.Set(p[0], p[1])
		}
	}
	scrub := plan.scrub
	req, err := http.NewRequestWithContext(actx, http.MethodPost, c.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		// Not reachable: the URL was checked by New.
		return Token{}, &Error{Kind: ErrRejected, Provider: c.p.Name, Local: true, Description: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if plan.basicID != "" {
		// RFC 6749 section 2.3.1: form-encode each part, then Basic.
		req.SetBasicAuth(url.QueryEscape(plan.basicID), url.QueryEscape(plan.basicSecret))
	}

	sentAt := c.now()
	resp, err := plan.hc.Do(req)
	if err != nil {
		return Token{}, c.transportError(ctx, actx, 0, err, scrub)
	}
	defer drainClose(resp.Body)
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodySize+1))
	if err != nil {
		return Token{}, c.transportError(ctx, actx, resp.StatusCode, err, scrub)
	}

	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		tok, usedDefault, err := parseTokenResponse(body, sentAt, requested, c.p.DefaultLifetime)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = malformed("")
			}
			e.Provider = c.p.Name
			e.Status = resp.StatusCode
			return Token{}, e
		}
		if usedDefault {
			c.log.WarnContext(ctx, "token endpoint reported no lifetime; assuming the default",
				"provider", c.p.Name, "lifetime", tok.ExpiresAt.Sub(tok.IssuedAt))
		}
		if plan.certThumbprint != "" {
			tok.CertThumbprint = BoundThumbprint(tok.AccessToken.Reveal())
		}
		return tok, nil
	}
	return Token{}, c.classify(resp, body, scrub)
}

// transportError describes a failure to send the request or read the
// answer.
func (c *Client) transportError(parent, actx context.Context, status int, err error, scrub *scrubber) error {
	if perr := parent.Err(); perr != nil {
		return c.ctxError(perr)
	}
	e := &Error{Kind: ErrUnavailable, Provider: c.p.Name, Status: status}
	if errors.Is(actx.Err(), context.DeadlineExceeded) {
		e.Description = "request timed out after " + c.p.Timeout.String()
		return e
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	e.Description = "request failed"
	if msg := scrub.clean(withoutQuoted(err.Error()), maxDescriptionLen); msg != "" {
		e.Description += ": " + msg
	}
	return e
}

// withoutQuoted cuts an error message at its first double quote: Go's
// HTTP client quotes what it could not parse of an answer (a status line,
// a header line, a Content-Length), and nothing the endpoint sent is
// relayed but the error code and error_description of an error body.
func withoutQuoted(msg string) string {
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimRight(msg[:i], " :")
	}
	return msg
}

// classify turns an unsuccessful answer into an *Error (RFC 6749 section
// 5.2, plus Amazon Cognito's throttling shape).
func (c *Client) classify(resp *http.Response, body []byte, scrub *scrubber) *Error {
	status := resp.StatusCode
	f := parseErrorBody(body)
	// Only the RFC 6749 error code and error_description are relayed, and
	// only once scrubbed; the other fields are looked at, never quoted.
	e := &Error{
		Provider:    c.p.Name,
		Status:      status,
		Code:        scrub.clean(f.errCode, maxCodeLen),
		Description: scrub.clean(f.description, maxDescriptionLen),
	}
	const cognitoThrottle = "TooManyRequestsException"
	throttleShape := strings.Contains(f.errCode, cognitoThrottle) ||
		strings.Contains(f.typ, cognitoThrottle) ||
		strings.Contains(f.message, cognitoThrottle)
	if e.Code == "" && throttleShape {
		e.Code = cognitoThrottle
	}

	switch {
	case status == http.StatusTooManyRequests:
		e.Kind = ErrThrottled
	case status >= 500:
		e.Kind = ErrUnavailable
	case status >= 400 && throttleShape:
		e.Kind = ErrThrottled
	case status >= 400 && f.errCode == "invalid_client":
		e.Kind = ErrInvalidClient
	case status >= 400 && f.errCode == "invalid_scope":
		e.Kind = ErrInvalidScope
	case status >= 400 && f.errCode == "unauthorized_client":
		e.Kind = ErrUnauthorizedClient
	case status == http.StatusUnauthorized && f.errCode == "":
		// RFC 6749 section 5.2: 401 is how client authentication fails.
		e.Kind = ErrInvalidClient
	case status == http.StatusRequestTimeout:
		e.Kind = ErrUnavailable
	default:
		e.Kind = ErrRejected
	}
	if status >= 300 && status < 400 {
		e.Description = "unexpected redirect"
	}
	if e.Code == "" && e.Description == "" {
		e.Description = http.StatusText(status)
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), c.now()); ok {
		e.RetryAfter = d
		e.retryAfterSet = true
	}
	return e
}

// errorFields are the parts of an error body that are looked at. Only
// errCode and description may be relayed (scrubbed); typ and message only
// help recognise throttling.
type errorFields struct {
	errCode     string // error
	description string // error_description
	typ         string // __type (AWS)
	message     string // message (AWS)
}

// parseErrorBody reads what it can from a JSON error body; fields of
// unexpected types, and bodies that are not JSON objects, are ignored.
func parseErrorBody(body []byte) errorFields {
	var m map[string]json.RawMessage
	if len(body) > maxBodySize || json.Unmarshal(body, &m) != nil {
		return errorFields{}
	}
	str := func(key string) string {
		var s string
		if raw, ok := m[key]; ok && json.Unmarshal(raw, &s) == nil {
			return s
		}
		return ""
	}
	return errorFields{
		errCode:     str("error"),
		description: str("error_description"),
		typ:         str("__type"),
		message:     str("message"),
	}
}

// parseRetryAfter reads a Retry-After value (RFC 9110 section 10.2.3):
// delta-seconds or an HTTP-date, relative to now. Past dates give 0; the
// result is capped at maxRetryAfter.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			var numErr *strconv.NumError
			if errors.As(err, &numErr) && errors.Is(numErr.Err, strconv.ErrRange) {
				return maxRetryAfter, true
			}
			return 0, false
		}
		if secs > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	return min(max(d, 0), maxRetryAfter), true
}

// drainClose reads a little of what is left of body, so the connection can
// be reused, and closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain))
	_ = body.Close()
}

// sleepCtx waits for d or until ctx ends, whichever is first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
