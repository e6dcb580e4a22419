package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
)

// MaxJWKSSize is the largest JWKS or discovery document read, in bytes.
const MaxJWKSSize = 1 << 20

// MaxKeys is the most keys of one JWKS that are kept; further ones are
// ignored.
const MaxKeys = 100

// DiscoveryPath is appended to a provider's issuer to find its OpenID
// discovery document.
const DiscoveryPath = "/.well-known/openid-configuration"

// keySet is one fetched JWKS: its usable public signing keys.
type keySet struct {
	keys []jose.JSONWebKey
}

// find returns the keys with id kid, or every key when kid is "".
func (s *keySet) find(kid string) []jose.JSONWebKey {
	if s == nil {
		return nil
	}
	if kid == "" {
		return s.keys
	}
	var out []jose.JSONWebKey
	for _, k := range s.keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// has reports whether the set holds a key with id kid.
func (s *keySet) has(kid string) bool {
	if s == nil {
		return false
	}
	for _, k := range s.keys {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

// keySource holds one provider's keys: it fetches them, keeps the last
// good set, and refreshes it on demand (coalesced and rate-limited) and on
// schedule.
type keySource struct {
	provider    string
	issuer      string // for discovery; "" with jwksURI or jwksFile
	jwksURI     string // configured, or found by discovery
	jwksFile    string
	client      *http.Client
	timeout     time.Duration
	minInterval time.Duration
	observer    Observer
	logger      *slog.Logger
	// removed is called with the key ids a refresh dropped.
	removed func(kids []string)
	// base bounds every fetch; wg counts the fetches running.
	base context.Context
	wg   *sync.WaitGroup

	cur atomic.Pointer[keySet]
	sf  singleflight.Group

	mu       sync.Mutex
	inflight bool
	gen      uint64
	lastTry  time.Time
	tried    bool
	// discovered is the jwks_uri found by discovery.
	discovered string
}

// keys returns the current key set, nil before the first good fetch.
func (s *keySource) keys() *keySet { return s.cur.Load() }

// lookup returns the keys with id kid (every key for ""). When the set
// does not have one, it fetches the keys again, unless a fetch started
// less than minInterval ago; callers arriving while a fetch runs wait for
// it instead of starting another. It returns an error wrapping
// ErrUnavailable only when no key set was ever fetched.
func (s *keySource) lookup(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	if ks := s.keys().find(kid); len(ks) > 0 {
		return ks, nil
	}
	if ch, ok := s.startRefresh(false); ok {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	set := s.keys()
	if set == nil {
		return nil, unavailable("the keys of provider %q could not be fetched yet", s.provider)
	}
	return set.find(kid), nil
}

// startRefresh starts a fetch, or joins the one in flight, and returns a
// channel closed when it ends. Unless force is set, no new fetch starts
// within minInterval of the previous start; ok is then false.
func (s *keySource) startRefresh(force bool) (<-chan singleflight.Result, bool) {
	s.mu.Lock()
	if !s.inflight {
		// After Close cancelled base, no fetch starts: Close's wg.Wait
		// must not race a wg.Add (see closeFetches).
		if s.base.Err() != nil {
			s.mu.Unlock()
			return nil, false
		}
		if !force && s.tried && time.Since(s.lastTry) < s.minInterval {
			s.mu.Unlock()
			return nil, false
		}
		s.inflight, s.tried, s.lastTry = true, true, time.Now()
		s.gen++
		s.wg.Add(1)
	}
	// Each fetch has a key of its own, so that a caller arriving after
	// one ended (inflight is false) never joins it.
	ch := s.sf.DoChan(strconv.FormatUint(s.gen, 10), func() (any, error) {
		defer s.wg.Done()
		err := s.refresh()
		s.mu.Lock()
		s.inflight = false
		s.mu.Unlock()
		return nil, err
	})
	s.mu.Unlock()
	return ch, true
}

// refresh fetches the key set and installs it if it is good; a failure
// keeps the previous set. It runs on its own deadline, not a caller's.
func (s *keySource) refresh() error {
	ctx, cancel := context.WithTimeout(s.base, s.timeout)
	defer cancel()
	set, err := s.fetch(ctx)
	if s.observer != nil {
		s.observer.KeysFetched(s.provider, err)
	}
	if err != nil {
		s.logger.Warn("verifier: JWKS fetch failed; the keys fetched before stay in use", "provider", s.provider, "error", err.Error(), "keys_held", len(s.keys().find("")))
		return err
	}
	old := s.cur.Swap(set)
	var gone []string
	for _, k := range old.find("") {
		if !set.has(k.KeyID) {
			gone = append(gone, k.KeyID)
		}
	}
	if len(gone) > 0 && s.removed != nil {
		s.removed(gone)
	}
	return nil
}

// fetch reads the JWKS from the file, the URI, or the URI the discovery
// document names.
func (s *keySource) fetch(ctx context.Context) (*keySet, error) {
	if s.jwksFile != "" {
		data, err := readLimited(s.jwksFile)
		if err != nil {
			return nil, err
		}
		return parseJWKS(data)
	}
	uri := s.jwksURI
	if uri == "" {
		s.mu.Lock()
		uri = s.discovered
		s.mu.Unlock()
		if uri == "" {
			var err error
			if uri, err = s.discover(ctx); err != nil {
				return nil, err
			}
			s.mu.Lock()
			s.discovered = uri
			s.mu.Unlock()
		}
	}
	data, err := s.get(ctx, uri, "JWKS")
	if err != nil {
		return nil, err
	}
	return parseJWKS(data)
}

// discover reads the OpenID discovery document and returns its jwks_uri.
func (s *keySource) discover(ctx context.Context) (string, error) {
	data, err := s.get(ctx, strings.TrimSuffix(s.issuer, "/")+DiscoveryPath, "discovery document")
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", errors.New("discovery document is not a JSON object with string issuer and jwks_uri")
	}
	if doc.Issuer != s.issuer {
		return "", errors.New("discovery document's issuer differs from the configured issuer")
	}
	if msg := checkURL(doc.JWKSURI); msg != "" {
		return "", fmt.Errorf("discovery document's jwks_uri %s", msg)
	}
	return doc.JWKSURI, nil
}

// get GETs uri and returns its body (at most MaxJWKSSize bytes). Errors
// name what was fetched and the status, never the body.
func (s *keySource) get(ctx context.Context, uri, what string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("%s request: bad URL", what)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%s request failed: %v", what, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxJWKSSize))
		return nil, fmt.Errorf("%s request: HTTP %d", what, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s read failed: %v", what, err)
	}
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, MaxJWKSSize)
	}
	return data, nil
}

// readLimited reads a JWKS file of at most MaxJWKSSize bytes.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("jwks_file: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("jwks_file: %v", err)
	}
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("jwks_file is larger than %d bytes", MaxJWKSSize)
	}
	return data, nil
}

// parseJWKS parses a JWKS and keeps its public signing keys (private
// halves are dropped, symmetric keys and keys for encryption ignored). A
// document that is not a JWKS, or holds no usable key, is an error: the
// previous keys then stay in use.
func parseJWKS(data []byte) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || doc.Keys == nil {
		return nil, errors.New("JWKS is not a JSON object with a keys array")
	}
	set := &keySet{}
	for _, raw := range doc.Keys {
		if len(set.keys) == MaxKeys {
			break
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil || !k.Valid() {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		pub := k.Public()
		if !pub.Valid() || !pub.IsPublic() {
			continue // symmetric
		}
		set.keys = append(set.keys, pub)
	}
	if len(set.keys) == 0 {
		return nil, errors.New("JWKS holds no usable public signing key")
	}
	return set, nil
}

// checkURL returns what is wrong with a JWKS or introspection URL, ""
// if nothing: it must be absolute https, or http on a loopback host.
func checkURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Hostname() == "" {
		return "must be an absolute https URL"
	}
	switch u.Scheme {
	case "https":
		return ""
	case "http":
		if h := u.Hostname(); h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1" {
			return ""
		}
	}
	return "must be an absolute https URL (http only for loopback hosts)"
}

// closeFetches is called by Close after base is cancelled and before it
// waits for the fetches: once it has held mu, every startRefresh either
// added its fetch to wg already or sees base cancelled and starts none.
func (s *keySource) closeFetches() {
	s.mu.Lock()
	//lint:ignore SA2001 the empty critical section is the barrier described above
	s.mu.Unlock()
}

// checkRedirect is the CheckRedirect of the verifier's HTTP clients: every
// hop of a redirect must pass checkURL, as the configured URL did (no
// https to http downgrade, no plain http off loopback).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if msg := checkURL(req.URL.String()); msg != "" {
		return fmt.Errorf("refused a redirect: the target %s", msg)
	}
	return nil
}

// safeClient returns c (nil: a new client) with checkRedirect as its
// CheckRedirect unless it has one of its own; c itself is not changed.
func safeClient(c *http.Client) *http.Client {
	if c == nil {
		return &http.Client{CheckRedirect: checkRedirect}
	}
	if c.CheckRedirect != nil {
		return c
	}
	cc := *c
	cc.CheckRedirect = checkRedirect
	return &cc
}

// run refreshes the keys until ctx ends: at once, then every interval;
// after a failure again after minInterval, doubling up to interval.
func (s *keySource) run(ctx context.Context, interval time.Duration) {
	retry := s.minInterval
	for {
		ch, ok := s.startRefresh(true)
		if !ok {
			return // closed
		}
		var err error
		select {
		case r := <-ch:
			err = r.Err
		case <-ctx.Done():
			return
		}
		wait := interval
		if err != nil {
			wait = retry
			retry = min(retry*2, interval)
		} else {
			retry = s.minInterval
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}
