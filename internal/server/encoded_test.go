package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/access"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestGetTokenEncodesOncePerToken checks that GetToken calls getting the
// same token share one encoding of the response, that a new token (or a
// new expiry) is encoded afresh and is what the next caller gets, and that
// a shared encoding never skips the authorization of a call.
func TestGetTokenEncodesOncePerToken(t *testing.T) {
	issued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var (
		mu      sync.Mutex
		current = broker.Token{AccessToken: "at-one", TokenType: "Bearer", Scopes: []string{"payments/read"},
			IssuedAt: issued, ExpiresAt: issued.Add(time.Hour), RefreshAt: issued.Add(45 * time.Minute), KeyID: "k-enc"}
		verdict error
	)
	set := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		f()
	}
	sb := &stubBroker{getToken: func(context.Context, broker.Request) (broker.Token, error) {
		mu.Lock()
		defer mu.Unlock()
		tok := current
		// A fresh copy of the token's bytes on every call, as the sealed
		// cache opens it.
		tok.AccessToken = secret.String(fmt.Sprint(tok.AccessToken.Reveal()))
		return tok, nil
	}}
	ts := startServer(t, Config{Broker: sb, Authorize: func(context.Context, broker.Selector) error {
		mu.Lock()
		defer mu.Unlock()
		return verdict
	}})
	check := func(step string, want broker.Token) {
		t.Helper()
		resp, err := ts.client.GetToken(rpcContext(t), heldReq())
		if err != nil {
			t.Fatalf("%s: GetToken: %v", step, err)
		}
		if exp := (&tokenbrokerv1.GetTokenResponse{Token: toProtoToken(want)}); !proto.Equal(resp, exp) {
			t.Fatalf("%s: got %v, want %v", step, resp, exp)
		}
	}

	before := encodedEncodes.Load()
	tok := current
	for i := range 3 {
		check(fmt.Sprintf("call %d", i+1), tok)
	}
	if got := encodedEncodes.Load() - before; got != 1 {
		t.Errorf("3 calls getting one token: got %d encodings, want 1", got)
	}

	// A refreshed token, then the same token with another expiry: each is
	// encoded once and told as it is.
	refreshed := tok
	refreshed.AccessToken, refreshed.IssuedAt = "at-two", issued.Add(time.Minute)
	longer := refreshed
	longer.ExpiresAt = refreshed.ExpiresAt.Add(time.Minute)
	for _, next := range []broker.Token{refreshed, longer} {
		set(func() { current = next })
		before = encodedEncodes.Load()
		check("after the token changed", next)
		check("again", next)
		if got := encodedEncodes.Load() - before; got != 1 {
			t.Errorf("2 calls after the token changed: got %d encodings, want 1", got)
		}
	}

	// A caller no longer granted the key is refused, though its response
	// is encoded and held.
	set(func() { verdict = fmt.Errorf("client %q is not granted: %w", "payments", access.ErrPermissionDenied) })
	_, err := ts.client.GetToken(rpcContext(t), heldReq())
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied {
		t.Fatalf("GetToken after the grant was withdrawn: got %v, want PermissionDenied", err)
	}
	set(func() { verdict = nil })
	check("granted again", longer)
}

// TestEncodedResponsesBounded checks that the held encodings stop growing
// at maxEncodedResponses keys: further keys are answered, encoded per call.
func TestEncodedResponsesBounded(t *testing.T) {
	p := newEncodedResponses()
	tok := broker.Token{AccessToken: "at", TokenType: "Bearer"}
	for i := range maxEncodedResponses + 10 {
		tok.KeyID = fmt.Sprintf("k%d", i)
		m, err := p.get(tok)
		if err != nil || len(m.b) == 0 {
			t.Fatalf("key %d: got %d bytes, %v", i, len(m.b), err)
		}
	}
	if n := p.m.Len(); n != maxEncodedResponses {
		t.Errorf("got %d held encodings, want %d", p.m.Len(), maxEncodedResponses)
	}
	var resp tokenbrokerv1.GetTokenResponse
	m, _ := p.get(tok)
	if err := proto.Unmarshal(m.b, &resp); err != nil || resp.GetToken().GetKeyId() != tok.KeyID {
		t.Errorf("a key past the bound: got %v, %v", &resp, err)
	}
}
