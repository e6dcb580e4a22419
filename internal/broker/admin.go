package broker

// This file is the operators' side: invalidation (applied here and told
// to the fleet), the listing of entries, and the statistics. No listing,
// statistic or error holds a token or a secret.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// InvalidateSelector selects entries to invalidate: exactly one of KeyID,
// Provider+ClientID (with Scopes when ScopesSet), Client and All.
type InvalidateSelector struct {
	// KeyID selects one entry by its key id.
	KeyID string
	// Provider and ClientID select the entries of one client id.
	Provider string
	// ClientID is the client id (with Provider).
	ClientID string
	// Scopes, when ScopesSet, narrows Provider+ClientID to one scope set.
	Scopes []string
	// ScopesSet says whether Scopes applies (an empty set is a set too).
	ScopesSet bool
	// Client selects the entries of a broker-held client, by name.
	Client string
	// All selects every entry.
	All bool
}

// EntryInfo describes an entry for operators. It never holds the token or
// the secret.
type EntryInfo struct {
	// KeyID is the entry's key id.
	KeyID string
	// Provider is the provider's name.
	Provider string
	// ClientID is the OAuth 2.0 client id.
	ClientID string
	// Scopes are the requested scopes, sorted.
	Scopes []string
	// Audience and Resource are the requested audience and resource.
	Audience string
	// Resource is the requested resource.
	Resource string
	// IssuedAt, ExpiresAt and RefreshAt describe the current token (zero
	// when the entry has none yet).
	IssuedAt time.Time
	// ExpiresAt is when the current token expires.
	ExpiresAt time.Time
	// RefreshAt is the current token's refresh point.
	RefreshAt time.Time
	// Watchers is the number of watchers.
	Watchers int
	// Hits counts the calls the entry served.
	Hits int64
	// LastUsed is when a caller last used the entry.
	LastUsed time.Time
}

// Stats are the broker's counters since it started, and its gauges.
type Stats struct {
	// Hits counts calls served from the cache.
	Hits int64
	// Misses counts calls that needed an upstream fetch.
	Misses int64
	// CoalescedWaits counts calls that waited for another caller's fetch.
	CoalescedWaits int64
	// Refreshes counts background refreshes started.
	Refreshes int64
	// Invalidations counts entries invalidated.
	Invalidations int64
	// Entries is the number of tracked entries.
	Entries int64
	// CostUsed and MaxCost are the cache's bytes in use and capacity.
	CostUsed int64
	// MaxCost is the cache's capacity in bytes.
	MaxCost int64
	// Evictions counts records the cache evicted.
	Evictions int64
	// Watchers is the number of open watchers.
	Watchers int64
	// Providers counts upstream fetches per provider, by provider name.
	Providers map[string]ProviderStats
	// Fleet describes the Redis tier; nil without one.
	Fleet *FleetStats
}

// FleetStats describes a replica's use of the fleet (the Redis tier).
type FleetStats struct {
	// State is the tier's circuit breaker state: "closed" (in use),
	// "half_open" or "open" (skipped).
	State string
	// Transitions counts breaker state changes.
	Transitions int64
	// Hits counts fetches answered by a token another replica filed.
	Hits int64
	// Waits counts fetches that waited for another replica's lock.
	Waits int64
	// Fetches counts upstream fetches made under the fleet lock.
	Fetches int64
	// Fallbacks counts fetches made without the fleet.
	Fallbacks int64
	// Errors counts failed Redis operations.
	Errors int64
	// Received counts announcements from other replicas.
	Received int64
}

// ProviderStats counts one provider's upstream fetches by outcome.
type ProviderStats struct {
	// OK counts fetches that obtained a token.
	OK int64
	// Throttled counts fetches the endpoint throttled (429,
	// TooManyRequestsException).
	Throttled int64
	// BudgetRefused counts fetches the request budget refused (never
	// sent).
	BudgetRefused int64
	// Unavailable counts fetches failed on 5xx, network or bad answers.
	Unavailable int64
	// Rejected counts fetches the endpoint rejected.
	Rejected int64
	// Other counts the remaining failures.
	Other int64
}

// MaxPageSize is the largest page List returns; DefaultPageSize is used
// when the caller asks for none.
const (
	MaxPageSize     = 1000
	DefaultPageSize = 100
)

// ErrBadPageToken: List was given a page token it did not issue. It comes
// wrapped in a *FieldError.
var ErrBadPageToken = errors.New("invalid page token")

// counters are the broker's own statistics.
type counters struct {
	hits, misses, coalesced, refreshes, invalidations atomic.Int64
}

// upstreamCounters count one provider's fetches by outcome.
type upstreamCounters struct {
	ok, throttled, budgetRefused, unavailable, rejected, other atomic.Int64
}

// countUpstream counts the outcome of one upstream fetch.
func (b *Broker) countUpstream(provider string, err error) {
	c := b.byUpstream[provider]
	if c == nil {
		return
	}
	switch upstream.OutcomeOf(err) {
	case upstream.OutcomeOK:
		c.ok.Add(1)
	case upstream.OutcomeThrottled:
		c.throttled.Add(1)
	case upstream.OutcomeBudgetRefused:
		c.budgetRefused.Add(1)
	case upstream.OutcomeUnavailable:
		c.unavailable.Add(1)
	case upstream.OutcomeInvalidClient, upstream.OutcomeInvalidScope, upstream.OutcomeUnauthorizedClient, upstream.OutcomeRejected:
		c.rejected.Add(1)
	default:
		c.other.Add(1)
	}
}

// Invalidate drops the entries sel selects from the cache, the entry map
// and the negative cache, and reports how many entries there were. A fetch
// in flight for an invalidated key does not install its result. Keys with
// watchers are refetched at once; their watchers get the new token as
// EventInvalidated.
//
// With a Fleet, the fleet is told first, so that no replica's refetch
// finds the old token in Redis; when it cannot be told, the invalidation
// still applies here and the error wraps ErrFleetNotTold.
//
// ctx is the caller's: its deadline and cancellation bound telling the
// fleet.
func (b *Broker) Invalidate(ctx context.Context, sel InvalidateSelector) (int, error) {
	match, err := b.selectEntries(sel)
	if err != nil {
		return 0, err
	}
	var told error
	if b.cfg.Fleet != nil {
		enc, err := json.Marshal(sel)
		if err != nil {
			return 0, err
		}
		if err := b.cfg.Fleet.Invalidated(ctx, enc); err != nil {
			b.cfg.Logger.Warn("invalidation applied on this replica only", "error", err)
			told = ErrFleetNotTold
		}
	}
	return b.invalidate(match), told
}

// ApplyInvalidation applies an invalidation another replica announced
// (shared.Receiver). A selector this replica cannot apply (such as a
// broker-held client it does not hold) is logged and ignored.
func (b *Broker) ApplyInvalidation(selector []byte) {
	var sel InvalidateSelector
	if err := json.Unmarshal(selector, &sel); err != nil {
		b.cfg.Logger.Warn("ignored an invalidation from the fleet: malformed selector")
		return
	}
	match, err := b.selectEntries(sel)
	if err != nil {
		b.cfg.Logger.Warn("ignored an invalidation from the fleet", "error", err)
		return
	}
	b.invalidate(match)
}

// invalidate drops the entries match selects; see Invalidate.
func (b *Broker) invalidate(match func(target) bool) int {
	b.negMu.Lock()
	for key, r := range b.negative {
		if match(r.t) {
			delete(b.negative, key)
		}
	}
	b.negMu.Unlock()

	// Under the lock: bump the generations (fencing off fetches in
	// flight) and forget the entries. Outside it: delete the tokens from
	// the cache (a Del may wait), then refetch the watched keys, so that
	// their new tokens are not deleted too.
	b.mu.Lock()
	var keys []string
	var watched []*entry
	for key, e := range b.entries {
		if !match(e.t) {
			continue
		}
		keys = append(keys, key)
		e.gen++
		b.flights.Forget(key)
		b.unscheduleLocked(e)
		if len(e.watchers) == 0 {
			delete(b.entries, key)
			continue
		}
		// Watched: refetched below. The watchers keep the old token until
		// the new one arrives as EventInvalidated.
		e.tok, e.fp = timing{}, 0
		e.invalidated = true
		e.failures, e.lastErr, e.stopped = 0, nil, false
		watched = append(watched, e)
	}
	b.mu.Unlock()
	for _, key := range keys {
		b.cfg.Cache.Del(key)
	}
	b.mu.Lock()
	for _, e := range watched {
		if b.entries[e.t.key] == e && len(e.watchers) > 0 {
			b.startFetchLocked(e)
		}
	}
	b.mu.Unlock()
	b.stats.invalidations.Add(int64(len(keys)))
	return len(keys)
}

// selectEntries turns a selector into a predicate over entries' targets.
func (b *Broker) selectEntries(sel InvalidateSelector) (func(target) bool, error) {
	chosen := 0
	for _, set := range []bool{sel.KeyID != "", sel.Provider != "" || sel.ClientID != "" || sel.ScopesSet, sel.Client != "", sel.All} {
		if set {
			chosen++
		}
	}
	if chosen != 1 {
		return nil, &FieldError{Field: "selector", Rule: "exactly one of key_id, client_id, client and all must be set", Kind: ErrInvalidArgument}
	}
	switch {
	case sel.KeyID != "":
		return func(t target) bool { return t.keyID == sel.KeyID }, nil
	case sel.Client != "":
		c, ok := b.cfg.Clients[sel.Client]
		if !ok {
			return nil, fmt.Errorf("client %q: %w", sel.Client, ErrUnknownClient)
		}
		return func(t target) bool {
			return t.provider == c.Provider && t.req.ClientID == c.ClientID && t.req.ClientSecret == c.ClientSecret
		}, nil
	case sel.All:
		return func(target) bool { return true }, nil
	}
	if b.cfg.Providers[sel.Provider] == nil {
		return nil, &FieldError{Field: "client_id.provider", Rule: "must name a configured provider", Kind: ErrUnknownProvider}
	}
	scopes := normalizeScopes(sel.Scopes)
	return func(t target) bool {
		return t.provider == sel.Provider && t.req.ClientID == sel.ClientID &&
			(!sel.ScopesSet || slices.Equal(t.req.Scopes, scopes))
	}, nil
}

// List returns up to pageSize entries (DefaultPageSize when 0, at most
// MaxPageSize) ordered by key id, starting after pageToken, and the token
// of the next page ("" on the last).
func (b *Broker) List(pageSize int, pageToken string) ([]EntryInfo, string, error) {
	switch {
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize < 0 || pageSize > MaxPageSize:
		return nil, "", &FieldError{Field: "page_size", Rule: fmt.Sprintf("must be between 0 and %d", MaxPageSize), Kind: ErrInvalidArgument}
	}
	after := ""
	if pageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || len(raw) == 0 {
			return nil, "", &FieldError{Field: "page_token", Rule: "must be a next_page_token returned by ListTokens", Kind: ErrBadPageToken}
		}
		after = string(raw)
	}
	b.mu.RLock()
	infos := make([]EntryInfo, 0, len(b.entries))
	for _, e := range b.entries {
		if e.t.keyID > after {
			infos = append(infos, e.info())
		}
	}
	b.mu.RUnlock()
	slices.SortFunc(infos, func(x, y EntryInfo) int { return strings.Compare(x.KeyID, y.KeyID) })
	if len(infos) <= pageSize {
		return infos, "", nil
	}
	infos = infos[:pageSize]
	return infos, base64.RawURLEncoding.EncodeToString([]byte(infos[pageSize-1].KeyID)), nil
}

// info describes e. b.mu must be held (read).
func (e *entry) info() EntryInfo {
	in := EntryInfo{
		KeyID:    e.t.keyID,
		Provider: e.t.provider,
		ClientID: e.t.req.ClientID,
		Scopes:   slices.Clone(e.t.req.Scopes),
		Audience: e.t.req.Audience,
		Resource: e.t.req.Resource,
		Watchers: len(e.watchers),
		Hits:     e.hits.Load(),
	}
	if ns := e.lastUsed.Load(); ns != 0 {
		in.LastUsed = time.Unix(0, ns)
	}
	if e.hasToken() {
		in.IssuedAt, in.ExpiresAt, in.RefreshAt = e.tok.issuedAt, e.tok.expiresAt, e.tok.refreshAt
	}
	return in
}

// Stats returns the broker's statistics.
func (b *Broker) Stats() Stats {
	s := Stats{
		Hits:           b.stats.hits.Load(),
		Misses:         b.stats.misses.Load(),
		CoalescedWaits: b.stats.coalesced.Load(),
		Refreshes:      b.stats.refreshes.Load(),
		Invalidations:  b.stats.invalidations.Load(),
		CostUsed:       b.cfg.Cache.Used(),
		MaxCost:        b.cfg.Cache.MaxCost(),
		Evictions:      b.cfg.Cache.Evictions(),
		Providers:      make(map[string]ProviderStats, len(b.byUpstream)),
	}
	b.mu.RLock()
	s.Entries = int64(len(b.entries))
	for _, e := range b.entries {
		s.Watchers += int64(len(e.watchers))
	}
	b.mu.RUnlock()
	for name, c := range b.byUpstream {
		s.Providers[name] = ProviderStats{OK: c.ok.Load(), Throttled: c.throttled.Load(), BudgetRefused: c.budgetRefused.Load(),
			Unavailable: c.unavailable.Load(), Rejected: c.rejected.Load(), Other: c.other.Load()}
	}
	if b.cfg.Fleet != nil {
		fs := b.cfg.Fleet.Stats()
		s.Fleet = &fs
	}
	return s
}
