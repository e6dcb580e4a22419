package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// The broker implements AdminBroker.
var _ AdminBroker = (*broker.Broker)(nil)

const adminServiceName = "tokenbroker.v1.AdminService"

// stubAdmin is an AdminBroker whose behaviour is in function fields. A nil
// field fails the call with an error the server maps to Internal (Stats
// returns zero statistics). calls counts the calls of every method.
type stubAdmin struct {
	invalidate func(broker.InvalidateSelector) (int, error)
	list       func(pageSize int, pageToken string) ([]broker.EntryInfo, string, error)
	stats      func() broker.Stats
	calls      atomic.Int32
}

func (a *stubAdmin) Invalidate(_ context.Context, sel broker.InvalidateSelector) (int, error) {
	a.calls.Add(1)
	if a.invalidate == nil {
		return 0, errors.New("stub: no invalidate")
	}
	return a.invalidate(sel)
}

func (a *stubAdmin) List(pageSize int, pageToken string) ([]broker.EntryInfo, string, error) {
	a.calls.Add(1)
	if a.list == nil {
		return nil, "", errors.New("stub: no list")
	}
	return a.list(pageSize, pageToken)
}

func (a *stubAdmin) Stats() broker.Stats {
	a.calls.Add(1)
	if a.stats == nil {
		return broker.Stats{}
	}
	return a.stats()
}

// recordingAdmin returns a stub whose Invalidate records its selector and
// reports n entries.
func recordingAdmin(n int) (*stubAdmin, func() broker.InvalidateSelector) {
	var (
		mu  sync.Mutex
		got broker.InvalidateSelector
	)
	a := &stubAdmin{invalidate: func(sel broker.InvalidateSelector) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		got = sel
		return n, nil
	}}
	return a, func() broker.InvalidateSelector {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

func byKeyID(id string) *tokenbrokerv1.InvalidateTokensRequest {
	return &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_KeyId{KeyId: id}}
}

func byClientID(provider, clientID string, scopes ...string) *tokenbrokerv1.InvalidateTokensRequest {
	return &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_ClientId{
		ClientId: &tokenbrokerv1.ClientIdSelector{Provider: provider, ClientId: clientID, Scopes: scopes},
	}}
}

func byClient(name string) *tokenbrokerv1.InvalidateTokensRequest {
	return &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_Client{Client: name}}
}

func byAll(all bool) *tokenbrokerv1.InvalidateTokensRequest {
	return &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_All{All: all}}
}

// TestInvalidateTokensSelectors checks that every selector reaches the
// broker converted, and that the count comes back.
func TestInvalidateTokensSelectors(t *testing.T) {
	admin, got := recordingAdmin(7)
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: admin})
	for _, tt := range []struct {
		name   string
		req    *tokenbrokerv1.InvalidateTokensRequest
		expect broker.InvalidateSelector
	}{
		{"key id", byKeyID("0123456789abcdef"), broker.InvalidateSelector{KeyID: "0123456789abcdef"}},
		{"client id, every scope set", byClientID("cognito", "abc123"), broker.InvalidateSelector{Provider: "cognito", ClientID: "abc123"}},
		{
			"client id, one scope set", byClientID("cognito", "abc123", "b/read", "a/write", "b/read"),
			broker.InvalidateSelector{Provider: "cognito", ClientID: "abc123", Scopes: []string{"b/read", "a/write", "b/read"}, ScopesSet: true},
		},
		{"client id, 128-byte names", byClientID(strings.Repeat("p", 128), strings.Repeat("c", 128)), broker.InvalidateSelector{Provider: strings.Repeat("p", 128), ClientID: strings.Repeat("c", 128)}},
		{"client", byClient("payments"), broker.InvalidateSelector{Client: "payments"}},
		{"all", byAll(true), broker.InvalidateSelector{All: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := ts.admin.InvalidateTokens(rpcContext(t), tt.req)
			if err != nil {
				t.Fatalf("InvalidateTokens: got error %v, want nil", err)
			}
			if resp.GetInvalidated() != 7 {
				t.Errorf("invalidated: got %d, want 7", resp.GetInvalidated())
			}
			if sel := got(); !reflect.DeepEqual(sel, tt.expect) {
				t.Errorf("selector: got %+v, want %+v", sel, tt.expect)
			}
		})
	}
}

// TestInvalidateTokensValidation checks that invalid selectors are
// InvalidArgument naming the field, and never reach the broker.
func TestInvalidateTokensValidation(t *testing.T) {
	admin, _ := recordingAdmin(1)
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: admin})
	long := strings.Repeat("x", MaxNameBytes+1)
	for _, tt := range []struct {
		name      string
		req       *tokenbrokerv1.InvalidateTokensRequest
		expectMsg string
	}{
		{"no selector", &tokenbrokerv1.InvalidateTokensRequest{}, "selector: " + ruleOneSelector},
		{"all false", byAll(false), "all: must be true when chosen"},
		{"empty key id", byKeyID(""), "key_id: " + ruleKeyID},
		{"short key id", byKeyID("0123456789abcde"), "key_id: " + ruleKeyID},
		{"long key id", byKeyID("0123456789abcdef0"), "key_id: " + ruleKeyID},
		{"upper-case key id", byKeyID("0123456789ABCDEF"), "key_id: " + ruleKeyID},
		{"non-hex key id", byKeyID("0123456789abcdeg"), "key_id: " + ruleKeyID},
		{"empty client id selector", &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_ClientId{}}, "client_id.provider: is required"},
		{"missing provider", byClientID("", "abc123"), "client_id.provider: is required"},
		{"missing client id", byClientID("cognito", ""), "client_id.client_id: is required"},
		{"long provider", byClientID(long, "abc123"), "client_id.provider: must be at most 128 bytes"},
		{"long client id", byClientID("cognito", long), "client_id.client_id: must be at most 128 bytes"},
		{"control character in client id", byClientID("cognito", "abc\n123"), "client_id.client_id: must be printable ASCII"},
		{"empty scope", byClientID("cognito", "abc123", "a/read", ""), "client_id.scopes[1]: must not be empty"},
		{"scope with a space", byClientID("cognito", "abc123", "a read"), "client_id.scopes[0]: " + ruleScopeChars},
		{"long scope", byClientID("cognito", "abc123", strings.Repeat("s", MaxScopeBytes+1)), "client_id.scopes[0]: must be at most 256 bytes"},
		{"too many scopes", byClientID("cognito", "abc123", nScopes(MaxScopes+1)...), "client_id.scopes: must have at most 50 entries"},
		{"empty client", byClient(""), "client: is required"},
		{"long client", byClient(long), "client: must be at most 128 bytes"},
		{"non-ASCII client", byClient("paymënts"), "client: must be printable ASCII"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.admin.InvalidateTokens(rpcContext(t), tt.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || st.Message() != tt.expectMsg {
				t.Errorf("got %v %q, want InvalidArgument %q", st.Code(), st.Message(), tt.expectMsg)
			}
		})
	}
	if n := admin.calls.Load(); n != 0 {
		t.Errorf("broker calls: got %d, want 0", n)
	}
}

// TestToInvalidateSelectorNil checks that Go-only shapes (a nil request, a
// nil ClientIdSelector) are reported, not panicked on.
func TestToInvalidateSelectorNil(t *testing.T) {
	for _, tt := range []struct {
		name      string
		req       *tokenbrokerv1.InvalidateTokensRequest
		expectErr string
	}{
		{"nil request", nil, "selector: " + ruleOneSelector},
		{"nil client id selector", &tokenbrokerv1.InvalidateTokensRequest{Selector: &tokenbrokerv1.InvalidateTokensRequest_ClientId{}}, "client_id.provider: is required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := toInvalidateSelector(tt.req)
			if err == nil || err.Error() != tt.expectErr {
				t.Fatalf("got error %v, want %q", err, tt.expectErr)
			}
		})
	}
}

// TestInvalidateTokensErrors checks the mapping of the broker's errors.
func TestInvalidateTokensErrors(t *testing.T) {
	var (
		mu        sync.Mutex
		brokerErr error
	)
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{invalidate: func(broker.InvalidateSelector) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return 0, brokerErr
	}}})
	for _, tt := range []struct {
		name       string
		err        error
		expectCode codes.Code
		expectMsg  string
	}{
		{"unknown client", fmt.Errorf("client %q: %w", "nope", broker.ErrUnknownClient), codes.NotFound, "client: unknown client"},
		{"unknown provider", broker.ErrUnknownProvider, codes.InvalidArgument, "client_id.provider: unknown provider"},
		{
			"unknown provider naming its field",
			&broker.FieldError{Field: "client_id.provider", Rule: "unknown provider", Kind: broker.ErrUnknownProvider},
			codes.InvalidArgument, "client_id.provider: unknown provider",
		},
		{"field error", &broker.FieldError{Field: "key_id", Rule: "must be 16 lowercase hex characters", Kind: broker.ErrInvalidArgument}, codes.InvalidArgument, "key_id: must be 16 lowercase hex characters"},
		{"deadline", fmt.Errorf("waiting for lock: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "context deadline exceeded"},
		{"internal", fmt.Errorf("redis with %s: refused", leakyText), codes.Internal, "internal error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			brokerErr = tt.err
			mu.Unlock()
			_, err := ts.admin.InvalidateTokens(rpcContext(t), byClient("nope"))
			st := status.Convert(err)
			if st.Code() != tt.expectCode || st.Message() != tt.expectMsg {
				t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), tt.expectCode, tt.expectMsg)
			}
		})
	}
}

// TestListTokens checks paging parameters, their limits, the conversion of
// entries and the mapping of page token errors.
func TestListTokens(t *testing.T) {
	issued := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	full := broker.EntryInfo{
		KeyID:     "0123456789abcdef",
		Provider:  "cognito",
		ClientID:  "abc123",
		Scopes:    []string{"a/read", "b/write"},
		Audience:  "aud",
		Resource:  "https://api.example.com",
		IssuedAt:  issued,
		ExpiresAt: issued.Add(time.Hour),
		RefreshAt: issued.Add(45 * time.Minute),
		Watchers:  3,
		Hits:      42,
		LastUsed:  issued.Add(time.Minute),
	}
	bare := broker.EntryInfo{KeyID: "fedcba9876543210", Provider: "dev", ClientID: "demo", Watchers: math.MaxInt32 + 5}
	wantEntries := []*tokenbrokerv1.TokenEntry{
		{
			KeyId: "0123456789abcdef", Provider: "cognito", ClientId: "abc123",
			Scopes: []string{"a/read", "b/write"}, Audience: "aud", Resource: "https://api.example.com",
			IssuedAt: timestamppb.New(issued), ExpiresAt: timestamppb.New(issued.Add(time.Hour)),
			RefreshAt: timestamppb.New(issued.Add(45 * time.Minute)), Watchers: 3, Hits: 42,
			LastUsed: timestamppb.New(issued.Add(time.Minute)),
		},
		{KeyId: "fedcba9876543210", Provider: "dev", ClientId: "demo", Watchers: math.MaxInt32},
	}

	type call struct {
		size  int
		token string
	}
	var (
		mu        sync.Mutex
		calls     []call
		brokerErr error
	)
	admin := &stubAdmin{list: func(size int, token string) ([]broker.EntryInfo, string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, call{size, token})
		if brokerErr != nil {
			return nil, "", brokerErr
		}
		return []broker.EntryInfo{full, bare}, "next-" + token, nil
	}}
	lastCall := func() (call, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(calls) == 0 {
			return call{}, 0
		}
		return calls[len(calls)-1], len(calls)
	}
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: admin})

	t.Run("pages", func(t *testing.T) {
		for _, tt := range []struct {
			size       int32
			token      string
			expectSize int
		}{
			{7, "", 7},
			{7, "page-2", 7},
			{0, "", broker.DefaultPageSize},
			{broker.MaxPageSize, strings.Repeat("t", MaxPageTokenBytes), broker.MaxPageSize},
		} {
			resp, err := ts.admin.ListTokens(rpcContext(t), &tokenbrokerv1.ListTokensRequest{PageSize: tt.size, PageToken: tt.token})
			if err != nil {
				t.Fatalf("ListTokens(%d, %q): got error %v, want nil", tt.size, tt.token, err)
			}
			if c, _ := lastCall(); c != (call{tt.expectSize, tt.token}) {
				t.Errorf("List: got (%d, %q), want (%d, %q)", c.size, c.token, tt.expectSize, tt.token)
			}
			if got, want := resp.GetNextPageToken(), "next-"+tt.token; got != want {
				t.Errorf("next_page_token: got %q, want %q", got, want)
			}
			want := &tokenbrokerv1.ListTokensResponse{Entries: wantEntries, NextPageToken: "next-" + tt.token}
			if !proto.Equal(resp, want) {
				t.Errorf("response:\ngot  %v\nwant %v", resp, want)
			}
		}
	})

	t.Run("invalid", func(t *testing.T) {
		_, before := lastCall()
		for _, tt := range []struct {
			req       *tokenbrokerv1.ListTokensRequest
			expectMsg string
		}{
			{&tokenbrokerv1.ListTokensRequest{PageSize: broker.MaxPageSize + 1}, "page_size: must be between 0 and 1000"},
			{&tokenbrokerv1.ListTokensRequest{PageSize: -1}, "page_size: must be between 0 and 1000"},
			{&tokenbrokerv1.ListTokensRequest{PageToken: strings.Repeat("t", MaxPageTokenBytes+1)}, "page_token: must be at most 1024 bytes"},
		} {
			_, err := ts.admin.ListTokens(rpcContext(t), tt.req)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != tt.expectMsg {
				t.Errorf("ListTokens(%d, %d-byte token): got %v %q, want InvalidArgument %q",
					tt.req.GetPageSize(), len(tt.req.GetPageToken()), st.Code(), st.Message(), tt.expectMsg)
			}
		}
		if _, after := lastCall(); after != before {
			t.Errorf("broker calls: got %d, want %d", after, before)
		}
	})

	t.Run("broker errors", func(t *testing.T) {
		for _, tt := range []struct {
			name       string
			err        error
			expectCode codes.Code
			expectMsg  string
		}{
			{"bad page token", &broker.FieldError{Field: "page_token", Rule: "invalid page token", Kind: broker.ErrBadPageToken}, codes.InvalidArgument, "page_token: invalid page token"},
			{"bare bad page token", fmt.Errorf("decoding %q: %w", leakyText, broker.ErrBadPageToken), codes.InvalidArgument, "page_token: invalid page token"},
			{"internal", errors.New(leakyText), codes.Internal, "internal error"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				mu.Lock()
				brokerErr = tt.err
				mu.Unlock()
				_, err := ts.admin.ListTokens(rpcContext(t), &tokenbrokerv1.ListTokensRequest{PageToken: "garbage"})
				if st := status.Convert(err); st.Code() != tt.expectCode || st.Message() != tt.expectMsg {
					t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), tt.expectCode, tt.expectMsg)
				}
			})
		}
	})
}

// TestListTokensEmpty checks the last, empty page.
func TestListTokensEmpty(t *testing.T) {
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{list: func(int, string) ([]broker.EntryInfo, string, error) {
		return nil, "", nil
	}}})
	resp, err := ts.admin.ListTokens(rpcContext(t), &tokenbrokerv1.ListTokensRequest{})
	if err != nil || len(resp.GetEntries()) != 0 || resp.GetNextPageToken() != "" {
		t.Fatalf("ListTokens: got %v, %v; want an empty last page", resp, err)
	}
}

// TestGetStats checks the conversion of the statistics, providers sorted
// by name.
func TestGetStats(t *testing.T) {
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{stats: func() broker.Stats {
		return broker.Stats{
			Hits: 1, Misses: 2, CoalescedWaits: 3, Refreshes: 4, Invalidations: 5,
			Entries: 6, CostUsed: 7, MaxCost: 8, Evictions: 9, Watchers: 10,
			Providers: map[string]broker.ProviderStats{
				"zeta":    {OK: 11, Throttled: 12, Unavailable: 13, Rejected: 14, Other: 15},
				"alpha":   {OK: 21},
				"cognito": {Rejected: 31, Other: 32},
			},
		}
	}}})
	resp, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{})
	if err != nil {
		t.Fatalf("GetStats: got error %v, want nil", err)
	}
	want := &tokenbrokerv1.GetStatsResponse{
		Hits: 1, Misses: 2, CoalescedWaits: 3, Refreshes: 4, Invalidations: 5,
		Entries: 6, CostUsed: 7, MaxCost: 8, Evictions: 9, Watchers: 10,
		Providers: []*tokenbrokerv1.ProviderStats{
			{Provider: "alpha", Ok: 21},
			{Provider: "cognito", Rejected: 31, Other: 32},
			{Provider: "zeta", Ok: 11, Throttled: 12, Unavailable: 13, Rejected: 14, Other: 15},
		},
	}
	if !proto.Equal(resp, want) {
		t.Errorf("GetStats:\ngot  %v\nwant %v", resp, want)
	}
}

// TestAdminRegistration checks that the AdminService is Unimplemented
// without Config.Admin, and served (with a health status) with it.
func TestAdminRegistration(t *testing.T) {
	t.Run("without Admin", func(t *testing.T) {
		ts := startServer(t, Config{Broker: okBroker(broker.Token{})})
		_, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{})
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("GetStats: got %v, want Unimplemented", err)
		}
	})
	t.Run("with Admin", func(t *testing.T) {
		ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: &stubAdmin{}})
		if _, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{}); err != nil {
			t.Errorf("GetStats: got error %v, want nil", err)
		}
		resp, err := healthpb.NewHealthClient(ts.conn).Check(rpcContext(t), &healthpb.HealthCheckRequest{Service: adminServiceName})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %s: got %v, %v; want SERVING", adminServiceName, resp.GetStatus(), err)
		}
	})
}

// TestAdminNeverLeaks plants a secret-looking value in every request field
// and every broker error the admin RPCs can see, and checks that it appears
// in no response, no status (message or details) and no log line.
func TestAdminNeverLeaks(t *testing.T) {
	const planted = "PLANTED-s3cr3t-Zq81"
	errs := []error{
		fmt.Errorf("client %q: %w", planted, broker.ErrUnknownClient),
		fmt.Errorf("provider %q: %w", planted, broker.ErrUnknownProvider),
		fmt.Errorf("token %q: %w", planted, broker.ErrBadPageToken),
		fmt.Errorf("redis auth %s failed", planted),
		fmt.Errorf("fetch with secret %s: %w", planted, context.DeadlineExceeded),
	}
	// Each method fails once with each error, then succeeds.
	var invalidates, lists atomic.Int32
	admin := &stubAdmin{
		invalidate: func(broker.InvalidateSelector) (int, error) {
			if i := int(invalidates.Add(1)) - 1; i < len(errs) {
				return 0, errs[i]
			}
			return 1, nil
		},
		list: func(int, string) ([]broker.EntryInfo, string, error) {
			if i := int(lists.Add(1)) - 1; i < len(errs) {
				return nil, "", errs[i]
			}
			return []broker.EntryInfo{{KeyID: "0123456789abcdef", Provider: "cognito", ClientID: "abc123", Hits: 1}}, "", nil
		},
		stats: func() broker.Stats {
			return broker.Stats{Hits: 1, Providers: map[string]broker.ProviderStats{"cognito": {OK: 1}}}
		},
	}
	ts := startServer(t, Config{Broker: okBroker(broker.Token{}), Admin: admin})

	var texts []string
	record := func(resp proto.Message, err error) {
		if err != nil {
			st := status.Convert(err)
			texts = append(texts, st.Message(), prototext.Format(st.Proto()))
			return
		}
		texts = append(texts, prototext.Format(resp))
	}
	// Invalid requests first (the value must not be echoed), then one
	// valid request per broker error and one that succeeds.
	reqs := []*tokenbrokerv1.InvalidateTokensRequest{
		byClient(planted + " \x00"), byClientID("cognito", planted+strings.Repeat("x", MaxNameBytes)),
		byClientID("cognito", "abc123", planted+" x"), byKeyID(planted),
	}
	for range len(errs) {
		reqs = append(reqs, byClient(planted))
	}
	reqs = append(reqs, byClientID(planted, planted, planted))
	for _, req := range reqs {
		resp, err := ts.admin.InvalidateTokens(rpcContext(t), req)
		record(resp, err)
	}
	for range len(errs) + 1 {
		resp, err := ts.admin.ListTokens(rpcContext(t), &tokenbrokerv1.ListTokensRequest{PageToken: planted})
		record(resp, err)
	}
	resp, err := ts.admin.ListTokens(rpcContext(t), &tokenbrokerv1.ListTokensRequest{PageToken: planted + strings.Repeat("x", MaxPageTokenBytes)})
	record(resp, err)
	stats, err := ts.admin.GetStats(rpcContext(t), &tokenbrokerv1.GetStatsRequest{})
	record(stats, err)

	if got, want := int(invalidates.Load()), len(errs)+1; got != want {
		t.Errorf("Invalidate calls: got %d, want %d", got, want)
	}
	if got, want := int(lists.Load()), len(errs)+1; got != want {
		t.Errorf("List calls: got %d, want %d", got, want)
	}
	for _, text := range texts {
		if strings.Contains(text, planted) {
			t.Errorf("admin response or status contains the planted value:\n%s", text)
		}
	}
	if logs := ts.logs.String(); strings.Contains(logs, planted) {
		t.Errorf("logs contain the planted value:\n%s", logs)
	}
}
