package access

import (
	"errors"
	"testing"
)

// TestPolicyAuthorizeVerify: only rules with verify: true let an identity
// verify tokens; an empty policy lets everyone.
func TestPolicyAuthorizeVerify(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, []Rule{
		{Identity: "spiffe://prod/ns/orders/sa/envoy", Verify: true},
		{Identity: "spiffe://prod/ns/billing/*", Verify: true},
		{Identity: "*", Clients: []string{"*"}, Scopes: []string{"*"}},
	})
	for _, c := range []struct {
		id   string
		want bool
	}{
		{"spiffe://prod/ns/orders/sa/envoy", true},
		{"spiffe://prod/ns/billing/sa/api", true},
		{"spiffe://prod/ns/orders/sa/worker", false},
		{"apikey:batch", false},
	} {
		err := p.AuthorizeVerify(Identity{Name: c.id})
		if got := err == nil; got != c.want {
			t.Errorf("AuthorizeVerify(%q) = %v, want allowed %v", c.id, err, c.want)
		}
		if err != nil && !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("AuthorizeVerify(%q) = %v, want ErrPermissionDenied", c.id, err)
		}
	}
	if err := (*Policy)(nil).AuthorizeVerify(Identity{Name: "apikey:x"}); err != nil {
		t.Errorf("nil policy: AuthorizeVerify = %v, want nil", err)
	}
}
