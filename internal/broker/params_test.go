package broker

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// TestParamsAndCredentialsInKey: every parameter that reaches the token
// endpoint is part of the cache key (the client's, the provider's and the
// caller's allowed ones); a caller may pass only what the client allows,
// and nothing with pass-through credentials. A broker-held client with a
// Credential is keyed by its source (Binding), not by its material: a
// rotation keeps the key; another source gives another key.
func TestParamsAndCredentialsInKey(t *testing.T) {
	cr := &upstream.Credential{Name: "jwt", Method: upstream.AuthPrivateKeyJWT, Binding: "source-a"}
	cr.Set(upstream.Material{})
	crB := &upstream.Credential{Name: "jwt", Method: upstream.AuthPrivateKeyJWT, Binding: "source-b"}
	crB.Set(upstream.Material{})
	b := newBroker(t, lifetimeFetcher(time.Hour), Config{})
	b.cfg.Clients = map[string]Client{
		"plain":   {Provider: "p", ClientID: "id"},
		"fixed":   {Provider: "p", ClientID: "id", Params: [][2]string{{"tenant", "a"}}},
		"fixed-b": {Provider: "p", ClientID: "id", Params: [][2]string{{"tenant", "b"}}},
		"open":    {Provider: "p", ClientID: "id", Params: [][2]string{{"tenant", "a"}}, AllowedParams: []string{"org", "tenant"}},
		"jwt":     {Provider: "p", ClientID: "id", Credential: cr},
		"jwt-b":   {Provider: "p", ClientID: "id", Credential: crB},
	}
	b.cfg.ProviderParams = map[string][][2]string{"p": {{"region", "eu"}}}
	key := func(sel Selector) string {
		t.Helper()
		tg, err := b.resolve(sel)
		if err != nil {
			t.Fatalf("resolve(%+v) = %v", sel, err)
		}
		return tg.key
	}
	distinct := map[string]Selector{
		"plain":       {Client: "plain"},
		"fixed":       {Client: "fixed"},
		"fixed-b":     {Client: "fixed-b"},
		"open, org x": {Client: "open", Params: map[string]string{"org": "x"}},
		"open, org y": {Client: "open", Params: map[string]string{"org": "y"}},
		"jwt":         {Client: "jwt"},
		"jwt-b":       {Client: "jwt-b"},
		"pass":        {Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String("source-a")}},
	}
	seen := map[string]string{}
	for name, sel := range distinct {
		k := key(sel)
		if other, dup := seen[k]; dup {
			t.Errorf("selectors %q and %q share a key", name, other)
		}
		seen[k] = name
	}
	// The client's own value equals no parameter at all only when the
	// caller passes what the client sets anyway.
	if key(Selector{Client: "open", Params: map[string]string{"tenant": "a"}}) != key(Selector{Client: "open"}) {
		t.Error("passing the client's own value changed the key")
	}
	before := key(Selector{Client: "jwt"})
	cr.Set(upstream.Material{Secret: "rotated"})
	if key(Selector{Client: "jwt"}) != before {
		t.Error("a rotation of the material changed the key")
	}
	tg, _ := b.resolve(Selector{Client: "open", Params: map[string]string{"org": "x"}})
	want := [][2]string{{"org", "x"}, {"tenant", "a"}}
	if len(tg.req.Params) != 2 || tg.req.Params[0] != want[0] || tg.req.Params[1] != want[1] {
		t.Errorf("params sent = %v, want %v", tg.req.Params, want)
	}
	tg, _ = b.resolve(Selector{Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: "s"}})
	if len(tg.req.Params) != 1 || tg.req.Params[0] != [2]string{"region", "eu"} {
		t.Errorf("pass-through params = %v, want the provider's", tg.req.Params)
	}
	for name, sel := range map[string]Selector{
		"not allowed":  {Client: "fixed", Params: map[string]string{"tenant": "b"}},
		"pass-through": {Credentials: &Credentials{Provider: "p", ClientID: "id", ClientSecret: "s"}, Params: map[string]string{"org": "x"}},
	} {
		var fe *FieldError
		if _, err := b.resolve(sel); !errors.As(err, &fe) || fe.Field != FieldParams || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: resolve = %v, want a selector.params FieldError", name, err)
		}
	}
	for name, p := range map[string]map[string]string{
		"reserved": {"client_secret": "x"},
		"bad name": {"a b": "x"},
		"too long": {"org": string(make([]byte, upstream.MaxParamValueBytes+1))},
	} {
		if fe := CheckSelector(Selector{Client: "open", Params: p}); fe == nil || fe.Field != FieldParams {
			t.Errorf("%s: CheckSelector = %v, want a selector.params error", name, fe)
		}
	}
}

// TestHeldKeysRemembered: a broker-held client's key is derived once and
// then looked up (the same key and id as a fresh derivation); a
// pass-through request is hashed every time and its input, which holds
// the presented secret, is never remembered; at most maxHeldKeys are.
func TestHeldKeysRemembered(t *testing.T) {
	hmacKey := []byte("0123456789abcdef0123456789abcdef")
	k := newKeyer(hmacKey)
	cr := &upstream.Credential{Name: "c", Method: upstream.AuthBasic, Binding: "source"}
	held := upstream.Request{ClientID: "id", Credential: cr, Scopes: []string{"a", "b"}}
	key, id := k.derive("p", held, true)
	if len(k.held) != 1 {
		t.Fatalf("held keys remembered: got %d, want 1", len(k.held))
	}
	again, againID := k.derive("p", held, true)
	fresh, freshID := newKeyer(hmacKey).derive("p", held, true)
	if again != key || againID != id || fresh != key || freshID != id || id != keyID(key) {
		t.Fatalf("remembered key differs from a fresh derivation")
	}
	const presented = "pass-through-secret-value"
	pass := upstream.Request{ClientID: "id", ClientSecret: secret.String(presented), Scopes: []string{"a", "b"}}
	pk, _ := k.derive("p", pass, false)
	if pk == key {
		t.Fatal("a pass-through request derived a held client's key")
	}
	if len(k.held) != 1 {
		t.Fatalf("held keys after a pass-through request: got %d, want 1", len(k.held))
	}
	for in := range k.held {
		if strings.Contains(in, presented) {
			t.Fatal("the keyer remembers a pass-through secret")
		}
	}
	for i := range maxHeldKeys + 10 {
		k.derive("p", upstream.Request{ClientID: "id", Credential: cr, Audience: strconv.Itoa(i)}, true)
	}
	if len(k.held) != maxHeldKeys {
		t.Errorf("held keys remembered: got %d, want the bound %d", len(k.held), maxHeldKeys)
	}
}
