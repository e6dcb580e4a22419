package access

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// sentinelSecret is a client secret no fuzzed request field is expected to
// contain.
const sentinelSecret = "SENTINEL-client-secret-7f3a9c1e"

// FuzzPolicyAuthorize builds policies from fuzzed patterns and grants and
// asks them about fuzzed identities, clients and scopes. It checks that
// nothing panics, that bad rules are refused with a *ConfigError, that a
// refusal matches ErrPermissionDenied, and that the client secret never
// reaches the answer: the answer is the same whatever the secret, and a
// refusal's message does not contain it.
func FuzzPolicyAuthorize(f *testing.F) {
	f.Add("spiffe://prod/ns/payments/*", "payments", "payments/read", false, "spiffe://prod/ns/payments/sa/worker", "payments", "payments/read payments/write", false, "s3cr3t-value")
	f.Add("*", "*", "*", true, "anonymous", "", "", true, "hunter2hunter2")
	f.Add("apikey:exact", "c", "a b", false, "apikey:exact", "c", "a b", false, "x")
	f.Add("dns:a/*", "", "", true, "dns:a/", "c", "", true, "payments")
	f.Add("a*b", "c*", "d*", false, "a*b", "c*", "d*", false, "identity may not")
	f.Add("", "", "", false, "", "", "", false, "")
	f.Add("apikey:other/*", "other", "*", false, "apikey:other/x", "other", "", false, "other")
	f.Fuzz(func(t *testing.T, idPattern, grantClients, grantScopes string, passthrough bool,
		name, client, scopes string, own bool, clientSecret string) {
		p, err := NewPolicy([]Rule{
			{Identity: idPattern, Clients: strings.Split(grantClients, ","), Scopes: strings.Fields(grantScopes), Passthrough: passthrough},
			{Identity: "apikey:other/*", Clients: []string{"other"}},
		})
		if err != nil {
			var ce *ConfigError
			if p != nil || !errors.As(err, &ce) {
				t.Fatalf("NewPolicy: got (%v, %v), want (nil, *ConfigError)", p, err)
			}
			return
		}
		sel := func(sec string) broker.Selector {
			s := broker.Selector{Scopes: strings.Fields(scopes)}
			if own {
				s.Credentials = &broker.Credentials{Provider: "p", ClientID: "id", ClientSecret: secret.String(sec)}
			} else {
				s.Client = client
			}
			return s
		}
		id := Identity{Name: name, Source: SourceAPIKey}
		errFuzzed := p.Authorize(id, sel(clientSecret))
		errSentinel := p.Authorize(id, sel(sentinelSecret))
		if (errFuzzed == nil) != (errSentinel == nil) ||
			(errFuzzed != nil && errFuzzed.Error() != errSentinel.Error()) {
			t.Fatalf("the answer depends on the secret: got %v and %v", errFuzzed, errSentinel)
		}
		if errSentinel == nil {
			return
		}
		if !errors.Is(errSentinel, ErrPermissionDenied) || status.Code(errSentinel) != codes.PermissionDenied {
			t.Fatalf("got %v, want an error matching ErrPermissionDenied with code PermissionDenied", errSentinel)
		}
		if strings.Contains(errSentinel.Error(), sentinelSecret) && !strings.Contains(client+"\x00"+scopes, sentinelSecret) {
			t.Fatalf("message %q contains the client secret", errSentinel)
		}
	})
}
