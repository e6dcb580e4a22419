package server

import (
	"cmp"
	"context"
	"errors"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"math"
	"slices"
	"strconv"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// AdminBroker is what the AdminService needs from the domain.
// *broker.Broker implements it.
type AdminBroker interface {
	// Invalidate drops the entries sel selects and reports how many there
	// were, or fails with an error that StatusFromError maps to a status
	// (broker.ErrUnknownClient for a client name the broker does not
	// hold). ctx is the caller's: its deadline and cancellation reach
	// the fleet.
	Invalidate(ctx context.Context, sel broker.InvalidateSelector) (int, error)
	// List returns up to pageSize entries (1 to broker.MaxPageSize)
	// starting after pageToken, and the next page's token ("" on the last
	// page). A page token it did not issue fails with
	// broker.ErrBadPageToken.
	List(pageSize int, pageToken string) ([]broker.EntryInfo, string, error)
	// Stats returns the broker's statistics.
	Stats() broker.Stats
}

// SavingsSource reports the cost accounting GetStats includes. When the
// AdminBroker also implements it (the app's adapter over the broker and
// *metrics.Metrics), GetStats reports its figures.
type SavingsSource interface {
	// Savings returns the figures, and whether they are the fleet's.
	Savings(ctx context.Context) ([]metrics.ClientSavings, bool)
	// Price returns provider's price per 1,000 requests, if it has one.
	Price(provider string) (float64, bool)
}

// AdminService request limits, part of the API contract.
const (
	// KeyIDChars is the length of a key id: 16 lowercase hex characters.
	KeyIDChars = 16
	// MaxPageTokenBytes bounds ListTokensRequest.page_token.
	MaxPageTokenBytes = 1024
)

// AdminService field paths and rules.
const (
	fieldInvalidateSelector = "selector"
	fieldKeyID              = "key_id"
	fieldAdminProvider      = "client_id.provider"
	fieldAdminClientID      = "client_id.client_id"
	fieldAdminScopes        = "client_id.scopes"
	fieldAdminClient        = "client"
	fieldAll                = "all"
	fieldPageSize           = "page_size"
	fieldPageToken          = "page_token"

	ruleOneSelector = "exactly one of key_id, client_id, client or all is required"
	ruleKeyID       = "must be 16 lowercase hex characters"
	ruleAllTrue     = "must be true when chosen"
)

// adminHandler implements the AdminService: each RPC validates its request,
// calls the AdminBroker and maps the result. No response carries a token
// or a secret: the broker's EntryInfo and Stats hold none, and errors go
// through StatusFromError.
type adminHandler struct {
	tokenbrokerv1.UnimplementedAdminServiceServer

	admin AdminBroker
}

// InvalidateTokens validates the selector (see toInvalidateSelector),
// invalidates the entries it selects and reports how many there were.
func (h *adminHandler) InvalidateTokens(ctx context.Context, in *tokenbrokerv1.InvalidateTokensRequest) (*tokenbrokerv1.InvalidateTokensResponse, error) {
	sel, err := toInvalidateSelector(in)
	if err != nil {
		return nil, StatusFromError(err, false).Err()
	}
	if sel.KeyID != "" {
		setLogKeyID(ctx, sel.KeyID)
	}
	n, err := h.admin.Invalidate(ctx, sel)
	if err != nil {
		return nil, StatusFromError(adminFieldError(err), false).Err()
	}
	return &tokenbrokerv1.InvalidateTokensResponse{Invalidated: int64(n)}, nil
}

// ListTokens validates the paging parameters and returns one page of
// entries. page_size 0 means broker.DefaultPageSize.
func (h *adminHandler) ListTokens(_ context.Context, in *tokenbrokerv1.ListTokensRequest) (*tokenbrokerv1.ListTokensResponse, error) {
	size, token, err := toListParams(in)
	if err != nil {
		return nil, StatusFromError(err, false).Err()
	}
	entries, next, err := h.admin.List(size, token)
	if err != nil {
		return nil, StatusFromError(err, false).Err()
	}
	out := &tokenbrokerv1.ListTokensResponse{NextPageToken: next}
	if len(entries) > 0 {
		out.Entries = make([]*tokenbrokerv1.TokenEntry, len(entries))
		for i, e := range entries {
			out.Entries[i] = toProtoEntry(e)
		}
	}
	return out, nil
}

// GetStats returns the broker's statistics, providers sorted by name.
func (h *adminHandler) GetStats(ctx context.Context, _ *tokenbrokerv1.GetStatsRequest) (*tokenbrokerv1.GetStatsResponse, error) {
	out := toProtoStats(h.admin.Stats())
	if src, ok := h.admin.(SavingsSource); ok {
		figures, fleet := src.Savings(ctx)
		out.SavingsFleetWide = fleet
		for _, f := range figures {
			cs := &tokenbrokerv1.ClientSavings{Provider: f.Provider, Client: f.Client,
				CallsServed: f.Served, UpstreamRequests: f.Upstream, RequestsSaved: f.Saved()}
			if price, ok := src.Price(f.Provider); ok {
				cs.CostSaved = wrapperspb.Double(float64(f.Saved()) * price / 1000)
			}
			out.Savings = append(out.Savings, cs)
		}
	}
	return out, nil
}

// toInvalidateSelector checks an InvalidateTokensRequest and converts it.
// The first broken rule is returned as a *broker.FieldError of kind
// broker.ErrInvalidArgument naming the field; the value is never part of
// the error. The rules:
//   - exactly one selector is set;
//   - key_id is 16 lowercase hex characters;
//   - client_id.provider and client_id.client_id, and client, are 1-128
//     bytes of printable ASCII (as in GetToken);
//   - client_id.scopes follow GetToken's scope rules; a non-empty list
//     narrows the selection to that scope set (ScopesSet). An empty list
//     selects every scope set of the client id, so the empty scope set
//     alone cannot be selected;
//   - all, when chosen, is true.
//
// It never panics; a nil request is reported as a missing selector.
func toInvalidateSelector(in *tokenbrokerv1.InvalidateTokensRequest) (broker.InvalidateSelector, error) {
	switch s := in.GetSelector().(type) {
	case *tokenbrokerv1.InvalidateTokensRequest_KeyId:
		if !isKeyID(s.KeyId) {
			return broker.InvalidateSelector{}, invalid(fieldKeyID, ruleKeyID)
		}
		return broker.InvalidateSelector{KeyID: s.KeyId}, nil
	case *tokenbrokerv1.InvalidateTokensRequest_ClientId:
		c := s.ClientId
		if err := checkName(fieldAdminProvider, c.GetProvider()); err != nil {
			return broker.InvalidateSelector{}, err
		}
		if err := checkName(fieldAdminClientID, c.GetClientId()); err != nil {
			return broker.InvalidateSelector{}, err
		}
		scopes := c.GetScopes()
		if err := checkScopes(fieldAdminScopes, scopes); err != nil {
			return broker.InvalidateSelector{}, err
		}
		out := broker.InvalidateSelector{Provider: c.GetProvider(), ClientID: c.GetClientId()}
		if len(scopes) > 0 {
			out.Scopes = append([]string(nil), scopes...)
			out.ScopesSet = true
		}
		return out, nil
	case *tokenbrokerv1.InvalidateTokensRequest_Client:
		if err := checkName(fieldAdminClient, s.Client); err != nil {
			return broker.InvalidateSelector{}, err
		}
		return broker.InvalidateSelector{Client: s.Client}, nil
	case *tokenbrokerv1.InvalidateTokensRequest_All:
		if !s.All {
			return broker.InvalidateSelector{}, invalid(fieldAll, ruleAllTrue)
		}
		return broker.InvalidateSelector{All: true}, nil
	}
	return broker.InvalidateSelector{}, invalid(fieldInvalidateSelector, ruleOneSelector)
}

// isKeyID reports whether s is KeyIDChars lowercase hex characters.
func isKeyID(s string) bool {
	if len(s) != KeyIDChars {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// toListParams checks a ListTokensRequest: page_size in [0,
// broker.MaxPageSize] (0 means broker.DefaultPageSize) and page_token at
// most MaxPageTokenBytes. The token is otherwise opaque: the broker checks
// it.
func toListParams(in *tokenbrokerv1.ListTokensRequest) (int, string, error) {
	size := int(in.GetPageSize())
	if size < 0 || size > broker.MaxPageSize {
		return 0, "", invalid(fieldPageSize, "must be between 0 and "+strconv.Itoa(broker.MaxPageSize))
	}
	if size == 0 {
		size = broker.DefaultPageSize
	}
	token := in.GetPageToken()
	if len(token) > MaxPageTokenBytes {
		return 0, "", invalid(fieldPageToken, "must be at most "+strconv.Itoa(MaxPageTokenBytes)+" bytes")
	}
	return size, token, nil
}

// adminFieldError names the AdminService field of broker errors that come
// without a *broker.FieldError: an unknown client is the request's
// "client", an unknown provider its "client_id.provider". Other errors,
// and errors that already name a field, are returned as they are.
func adminFieldError(err error) error {
	var fe *broker.FieldError
	if errors.As(err, &fe) {
		return err
	}
	switch {
	case errors.Is(err, broker.ErrUnknownClient):
		return &broker.FieldError{Field: fieldAdminClient, Rule: "unknown client", Kind: broker.ErrUnknownClient}
	case errors.Is(err, broker.ErrUnknownProvider):
		return &broker.FieldError{Field: fieldAdminProvider, Rule: "unknown provider", Kind: broker.ErrUnknownProvider}
	}
	return err
}

// toProtoEntry converts an entry description. Zero times are left unset.
func toProtoEntry(e broker.EntryInfo) *tokenbrokerv1.TokenEntry {
	out := &tokenbrokerv1.TokenEntry{
		KeyId:     e.KeyID,
		Provider:  e.Provider,
		ClientId:  e.ClientID,
		Audience:  e.Audience,
		Resource:  e.Resource,
		IssuedAt:  timestamp(e.IssuedAt),
		ExpiresAt: timestamp(e.ExpiresAt),
		RefreshAt: timestamp(e.RefreshAt),
		Watchers:  int32(min(max(e.Watchers, 0), math.MaxInt32)),
		Hits:      e.Hits,
		LastUsed:  timestamp(e.LastUsed),
	}
	if len(e.Scopes) > 0 {
		out.Scopes = append([]string(nil), e.Scopes...)
	}
	return out
}

// toProtoStats converts the broker's statistics, providers sorted by name.
// sharedTierStates maps broker.FleetStats.State to its API form; an
// unknown state is STATE_UNSPECIFIED.
var sharedTierStates = map[string]tokenbrokerv1.SharedTierStats_State{
	"closed":    tokenbrokerv1.SharedTierStats_STATE_CLOSED,
	"half_open": tokenbrokerv1.SharedTierStats_STATE_HALF_OPEN,
	"open":      tokenbrokerv1.SharedTierStats_STATE_OPEN,
}

func toProtoStats(s broker.Stats) *tokenbrokerv1.GetStatsResponse {
	out := &tokenbrokerv1.GetStatsResponse{
		Hits:           s.Hits,
		Misses:         s.Misses,
		CoalescedWaits: s.CoalescedWaits,
		Refreshes:      s.Refreshes,
		Invalidations:  s.Invalidations,
		Entries:        s.Entries,
		CostUsed:       s.CostUsed,
		MaxCost:        s.MaxCost,
		Evictions:      s.Evictions,
		Watchers:       s.Watchers,
	}
	for name, p := range s.Providers {
		out.Providers = append(out.Providers, &tokenbrokerv1.ProviderStats{
			Provider:      name,
			Ok:            p.OK,
			Throttled:     p.Throttled,
			BudgetRefused: p.BudgetRefused,
			Unavailable:   p.Unavailable,
			Rejected:      p.Rejected,
			Other:         p.Other,
		})
	}
	slices.SortFunc(out.Providers, func(a, b *tokenbrokerv1.ProviderStats) int {
		return cmp.Compare(a.GetProvider(), b.GetProvider())
	})
	if f := s.Fleet; f != nil {
		out.SharedTier = &tokenbrokerv1.SharedTierStats{
			State:       sharedTierStates[f.State],
			Transitions: f.Transitions,
			Hits:        f.Hits,
			Waits:       f.Waits,
			Fetches:     f.Fetches,
			Fallbacks:   f.Fallbacks,
			Errors:      f.Errors,
			Received:    f.Received,
		}
	}
	return out
}
