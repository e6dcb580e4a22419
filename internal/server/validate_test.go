package server

import (
	"errors"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// heldReq returns a valid request for a broker-held client.
func heldReq() *tokenbrokerv1.GetTokenRequest {
	return &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "payments"},
		Scopes:      []string{"payments/read"},
	}}
}

// passReq returns a valid request with pass-through credentials.
func passReq() *tokenbrokerv1.GetTokenRequest {
	return &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{
		Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{ClientCredentials: &tokenbrokerv1.ClientCredentials{
			Provider:     "cognito",
			ClientId:     "abc123",
			ClientSecret: "s3cr3t-value",
		}},
	}}
}

func withClient(name string) *tokenbrokerv1.GetTokenRequest {
	r := heldReq()
	r.Selector.Credentials = &tokenbrokerv1.TokenSelector_Client{Client: name}
	return r
}

func withCreds(edit func(c *tokenbrokerv1.ClientCredentials)) *tokenbrokerv1.GetTokenRequest {
	r := passReq()
	edit(r.Selector.GetClientCredentials())
	return r
}

func withScopes(scopes ...string) *tokenbrokerv1.GetTokenRequest {
	r := heldReq()
	r.Selector.Scopes = scopes
	return r
}

func withAudience(a string) *tokenbrokerv1.GetTokenRequest {
	r := heldReq()
	r.Selector.Audience = a
	return r
}

func withResource(res string) *tokenbrokerv1.GetTokenRequest {
	r := heldReq()
	r.Selector.Resource = res
	return r
}

func withMinTTL(d *durationpb.Duration) *tokenbrokerv1.GetTokenRequest {
	r := heldReq()
	r.MinTtl = d
	return r
}

func nScopes(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = "s" + strings.Repeat("x", i%5)
	}
	return s
}

// TestGetTokenValidation sends requests that break (or just keep) every
// request rule through real gRPC and checks the status.
func TestGetTokenValidation(t *testing.T) {
	ts := startServer(t, Config{Broker: okBroker(broker.Token{AccessToken: "tok", KeyID: "k1"})})

	const (
		printable = "must be printable ASCII"
		scopeRule = "must contain only RFC 6749 scope-token characters (%x21 / %x23-5B / %x5D-7E)"
		uriRule   = "must be an absolute URI without a fragment (RFC 8707)"
		ttlRange  = "must be between 0 and 24h"
	)
	for _, tt := range []struct {
		name       string
		req        *tokenbrokerv1.GetTokenRequest
		expectCode codes.Code
		expectMsg  string
	}{
		{name: "valid held client", req: heldReq(), expectCode: codes.OK},
		{name: "valid pass-through", req: passReq(), expectCode: codes.OK},
		{name: "empty request", req: &tokenbrokerv1.GetTokenRequest{}, expectCode: codes.InvalidArgument, expectMsg: "selector: is required"},
		{
			name:       "no credentials",
			req:        &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Scopes: []string{"a"}}},
			expectCode: codes.InvalidArgument,
			expectMsg:  "selector.credentials: exactly one of client or client_credentials is required",
		},

		{name: "client empty", req: withClient(""), expectCode: codes.InvalidArgument, expectMsg: "selector.client: is required"},
		{name: "client 128 bytes", req: withClient(strings.Repeat("c", 128)), expectCode: codes.OK},
		{name: "client 129 bytes", req: withClient(strings.Repeat("c", 129)), expectCode: codes.InvalidArgument, expectMsg: "selector.client: must be at most 128 bytes"},
		{name: "client with newline", req: withClient("pay\nments"), expectCode: codes.InvalidArgument, expectMsg: "selector.client: " + printable},
		{name: "client non-ASCII", req: withClient("paymént"), expectCode: codes.InvalidArgument, expectMsg: "selector.client: " + printable},

		{
			name:       "nil client_credentials",
			req:        &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_ClientCredentials{}}},
			expectCode: codes.InvalidArgument,
			expectMsg:  "selector.client_credentials.provider: is required",
		},
		{name: "provider empty", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.Provider = "" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.provider: is required"},
		{name: "provider 128 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.Provider = strings.Repeat("p", 128) }), expectCode: codes.OK},
		{name: "provider 129 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.Provider = strings.Repeat("p", 129) }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.provider: must be at most 128 bytes"},
		{name: "provider control char", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.Provider = "cog\tnito" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.provider: " + printable},
		{name: "client_id empty", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientId = "" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_id: is required"},
		{name: "client_id 128 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientId = strings.Repeat("i", 128) }), expectCode: codes.OK},
		{name: "client_id 129 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientId = strings.Repeat("i", 129) }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_id: must be at most 128 bytes"},
		{name: "client_id DEL", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientId = "abc\x7f" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_id: " + printable},
		{name: "client_secret empty", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = "" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_secret: is required"},
		{name: "client_secret 512 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = strings.Repeat("s", 512) }), expectCode: codes.OK},
		{name: "client_secret 513 bytes", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = strings.Repeat("s", 513) }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_secret: must be at most 512 bytes"},
		{name: "client_secret NUL", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = "s3cr\x00t" }), expectCode: codes.InvalidArgument, expectMsg: "selector.client_credentials.client_secret: must be valid UTF-8 without NUL bytes"},
		{name: "client_secret non-ASCII", req: withCreds(func(c *tokenbrokerv1.ClientCredentials) { c.ClientSecret = "sécret ok" }), expectCode: codes.OK},

		{name: "no scopes", req: withScopes(), expectCode: codes.OK},
		{name: "50 scopes", req: withScopes(nScopes(50)...), expectCode: codes.OK},
		{name: "51 scopes", req: withScopes(nScopes(51)...), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes: must have at most 50 entries"},
		{name: "scope 256 bytes", req: withScopes(strings.Repeat("a", 256)), expectCode: codes.OK},
		{name: "scope 257 bytes", req: withScopes("ok", strings.Repeat("a", 257)), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[1]: must be at most 256 bytes"},
		{name: "scope empty", req: withScopes("a", "b", ""), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[2]: must not be empty"},
		{name: "scope all allowed chars", req: withScopes("!#$%&'()*+,-./0123456789:;<=>?@AZ[]^_`az{|}~"), expectCode: codes.OK},
		{name: "scope double quote", req: withScopes("a", "b", "c", `pay"ments`), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[3]: " + scopeRule},
		{name: "scope backslash", req: withScopes(`pay\ments`), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[0]: " + scopeRule},
		{name: "scope space", req: withScopes("payments/read payments/write"), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[0]: " + scopeRule},
		{name: "scope DEL", req: withScopes("a\x7f"), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[0]: " + scopeRule},
		{name: "scope non-ASCII", req: withScopes("pä"), expectCode: codes.InvalidArgument, expectMsg: "selector.scopes[0]: " + scopeRule},

		{name: "audience 1024 bytes", req: withAudience(strings.Repeat("a", 1024)), expectCode: codes.OK},
		{name: "audience 1025 bytes", req: withAudience(strings.Repeat("a", 1025)), expectCode: codes.InvalidArgument, expectMsg: "selector.audience: must be at most 1024 bytes"},
		{name: "audience control char", req: withAudience("api\r\n"), expectCode: codes.InvalidArgument, expectMsg: "selector.audience: " + printable},

		{name: "resource https", req: withResource("https://api.example.com/v1?x=1"), expectCode: codes.OK},
		{name: "resource urn", req: withResource("urn:example:resource"), expectCode: codes.OK},
		{name: "resource 1024 bytes", req: withResource("https://a.example/" + strings.Repeat("r", 1024-18)), expectCode: codes.OK},
		{name: "resource 1025 bytes", req: withResource("https://a.example/" + strings.Repeat("r", 1025-18)), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: must be at most 1024 bytes"},
		{name: "resource relative", req: withResource("/v1/payments"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + uriRule},
		{name: "resource fragment", req: withResource("https://api.example.com/#frag"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + uriRule},
		{name: "resource empty fragment", req: withResource("https://api.example.com/#"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + uriRule},
		{name: "resource space", req: withResource("https://api.example.com/a b"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + uriRule},
		{name: "resource unparsable", req: withResource("https://[::1"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + uriRule},
		{name: "resource control char", req: withResource("https://a\x01"), expectCode: codes.InvalidArgument, expectMsg: "selector.resource: " + printable},

		{name: "min_ttl zero", req: withMinTTL(durationpb.New(0)), expectCode: codes.OK},
		{name: "min_ttl 24h", req: withMinTTL(durationpb.New(24 * time.Hour)), expectCode: codes.OK},
		{name: "min_ttl negative", req: withMinTTL(durationpb.New(-time.Nanosecond)), expectCode: codes.InvalidArgument, expectMsg: "min_ttl: " + ttlRange},
		{name: "min_ttl 24h+1ns", req: withMinTTL(durationpb.New(24*time.Hour + time.Nanosecond)), expectCode: codes.InvalidArgument, expectMsg: "min_ttl: " + ttlRange},
		{name: "min_ttl mixed signs", req: withMinTTL(&durationpb.Duration{Seconds: 1, Nanos: -1}), expectCode: codes.InvalidArgument, expectMsg: "min_ttl: must be a valid duration"},
		{name: "min_ttl nanos overflow", req: withMinTTL(&durationpb.Duration{Seconds: 0, Nanos: 1e9}), expectCode: codes.InvalidArgument, expectMsg: "min_ttl: must be a valid duration"},
		{name: "min_ttl out of range", req: withMinTTL(&durationpb.Duration{Seconds: 315576000001}), expectCode: codes.InvalidArgument, expectMsg: "min_ttl: must be a valid duration"},

		{name: "message over 64 KiB", req: withClient(strings.Repeat("c", 70<<10)), expectCode: codes.ResourceExhausted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.client.GetToken(rpcContext(t), tt.req)
			st := status.Convert(err)
			if st.Code() != tt.expectCode {
				t.Fatalf("code: got %v (%q), want %v", st.Code(), st.Message(), tt.expectCode)
			}
			if tt.expectMsg != "" && st.Message() != tt.expectMsg {
				t.Errorf("message: got %q, want %q", st.Message(), tt.expectMsg)
			}
			if tt.expectCode == codes.InvalidArgument {
				if secret := tt.req.GetSelector().GetClientCredentials().GetClientSecret(); secret != "" && strings.Contains(st.Message(), secret) {
					t.Errorf("message %q contains the client secret", st.Message())
				}
			}
		})
	}
}

// TestToBrokerRequestConverts checks that accepted requests reach the
// broker unchanged.
func TestToBrokerRequestConverts(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   *tokenbrokerv1.GetTokenRequest
		want broker.Request
	}{
		{
			name: "held client with everything",
			in: &tokenbrokerv1.GetTokenRequest{
				Selector: &tokenbrokerv1.TokenSelector{
					Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "payments"},
					Scopes:      []string{"b/write", "a/read", "b/write"},
					Audience:    "api",
					Resource:    "https://api.example.com/",
				},
				MinTtl: durationpb.New(90 * time.Second),
			},
			want: broker.Request{
				Selector: broker.Selector{
					Client:   "payments",
					Scopes:   []string{"b/write", "a/read", "b/write"},
					Audience: "api",
					Resource: "https://api.example.com/",
				},
				MinTTL: 90 * time.Second,
			},
		},
		{
			name: "pass-through",
			in:   passReq(),
			want: broker.Request{Selector: broker.Selector{Credentials: &broker.Credentials{
				Provider:     "cognito",
				ClientID:     "abc123",
				ClientSecret: secret.String("s3cr3t-value"),
			}}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := toBrokerRequest(tt.in)
			if err != nil {
				t.Fatalf("toBrokerRequest: got error %v, want nil", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("toBrokerRequest: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestBothCredentialsOnTheWire shows why "both credential forms" needs no
// rule: the selector's credentials are a oneof, so a message carrying both
// fields decodes to the last one and the handler only ever sees one.
func TestBothCredentialsOnTheWire(t *testing.T) {
	creds, err := proto.Marshal(&tokenbrokerv1.ClientCredentials{Provider: "p", ClientId: "id", ClientSecret: "s"})
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "payments")
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, creds)
	var sel tokenbrokerv1.TokenSelector
	if err := proto.Unmarshal(b, &sel); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if sel.GetClient() != "" || sel.GetClientCredentials().GetProvider() != "p" {
		t.Fatalf("decoded selector: got client %q, provider %q; want only the last form (provider %q)",
			sel.GetClient(), sel.GetClientCredentials().GetProvider(), "p")
	}
}

var (
	namePattern  = regexp.MustCompile(`^[\x20-\x7e]{1,128}$`)
	scopePattern = regexp.MustCompile(`^[\x21\x23-\x5b\x5d-\x7e]{1,256}$`)
	audPattern   = regexp.MustCompile(`^[\x20-\x7e]*$`)         // plus a length check
	resPattern   = regexp.MustCompile(`^[\x21\x22\x24-\x7e]+$`) // printable, no space, no '#'; plus a length check
	fieldPattern = regexp.MustCompile(`^(selector(\.(credentials|client|client_credentials\.(provider|client_id|client_secret)|scopes(\[\d+\])?|audience|resource))?|min_ttl)$`)
	rulePattern  = regexp.MustCompile(`^(is required|must not be empty|must be at most \d+ bytes|must have at most 50 entries|must be printable ASCII|must be valid UTF-8 without NUL bytes|must be a valid duration|must be between 0 and 24h|exactly one of client or client_credentials is required|must be an absolute URI without a fragment \(RFC 8707\)|must contain only RFC 6749 scope-token characters \(%x21 / %x23-5B / %x5D-7E\))$`)
)

// FuzzToBrokerRequest checks that validation never panics, that rejections
// are field errors with fixed texts (so they cannot echo input), and that
// every accepted request keeps every limit.
func FuzzToBrokerRequest(f *testing.F) {
	f.Add(uint8(0), "payments", "", "", "", "payments/read", uint8(1), "", "", true, int64(60), int32(0))
	f.Add(uint8(1), "", "cognito", "abc123", "s3cr3t", "a b\x00c\"", uint8(3), "api", "https://api.example.com/", false, int64(0), int32(0))
	f.Add(uint8(2), "x", "p", "id", "sec\x00ret", "", uint8(0), "", "urn:x", true, int64(-1), int32(0))
	f.Add(uint8(1), "", "p", strings.Repeat("i", 129), strings.Repeat("s", 513), strings.Repeat("a", 257), uint8(51), strings.Repeat("a", 1025), "https://a/#f", true, int64(86400), int32(1))
	f.Add(uint8(1), "", "p", "id", "\xff\xfe", "ok", uint8(2), "", "/rel", true, int64(1), int32(-1))

	f.Fuzz(func(t *testing.T, form uint8, client, provider, clientID, clientSecret, scope string, nScopes uint8,
		audience, resource string, hasTTL bool, ttlSeconds int64, ttlNanos int32,
	) {
		in := &tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Audience: audience, Resource: resource}}
		switch form % 4 {
		case 0:
			in.Selector.Credentials = &tokenbrokerv1.TokenSelector_Client{Client: client}
		case 1:
			in.Selector.Credentials = &tokenbrokerv1.TokenSelector_ClientCredentials{ClientCredentials: &tokenbrokerv1.ClientCredentials{
				Provider: provider, ClientId: clientID, ClientSecret: clientSecret,
			}}
		case 2:
			// no credentials
		case 3:
			in.Selector = nil
		}
		if in.Selector != nil {
			// Vary the scopes: n copies of scope with its tail cut by i.
			for i := 0; i < int(nScopes%60); i++ {
				in.Selector.Scopes = append(in.Selector.Scopes, scope[:len(scope)-min(i, len(scope))])
			}
		}
		if hasTTL {
			in.MinTtl = &durationpb.Duration{Seconds: ttlSeconds, Nanos: ttlNanos}
		}

		got, err := toBrokerRequest(in)
		if err != nil {
			var fe *broker.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, broker.ErrInvalidArgument) {
				t.Fatalf("error: got %T %v, want a *broker.FieldError of kind ErrInvalidArgument", err, err)
			}
			if !fieldPattern.MatchString(fe.Field) || !rulePattern.MatchString(fe.Rule) {
				t.Fatalf("error: got field %q rule %q, want a known field and a fixed rule", fe.Field, fe.Rule)
			}
			return
		}

		sel := got.Selector
		if (sel.Client == "") == (sel.Credentials == nil) {
			t.Fatalf("accepted selector has client %q and credentials %v, want exactly one", sel.Client, sel.Credentials)
		}
		if sel.Credentials == nil {
			if !namePattern.MatchString(sel.Client) || sel.Client != client {
				t.Fatalf("accepted client %q (input %q), want it unchanged and 1-128 printable bytes", sel.Client, client)
			}
		} else {
			c := sel.Credentials
			if !namePattern.MatchString(c.Provider) || c.Provider != provider {
				t.Fatalf("accepted provider %q (input %q)", c.Provider, provider)
			}
			if !namePattern.MatchString(c.ClientID) || c.ClientID != clientID {
				t.Fatalf("accepted client_id %q (input %q)", c.ClientID, clientID)
			}
			s := c.ClientSecret.Reveal()
			if s != clientSecret || len(s) == 0 || len(s) > 512 || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
				t.Fatalf("accepted client_secret of %d bytes breaks the rules", len(s))
			}
		}
		if len(sel.Scopes) > 50 || !reflect.DeepEqual(sel.Scopes, in.Selector.Scopes) {
			t.Fatalf("accepted %d scopes %q, want at most 50 equal to %q", len(sel.Scopes), sel.Scopes, in.Selector.Scopes)
		}
		for i, s := range sel.Scopes {
			if !scopePattern.MatchString(s) {
				t.Fatalf("accepted scope %d %q, want 1-256 scope-token bytes", i, s)
			}
		}
		if !audPattern.MatchString(sel.Audience) || len(sel.Audience) > 1024 || sel.Audience != audience {
			t.Fatalf("accepted audience %q (input %q)", sel.Audience, audience)
		}
		if sel.Resource != resource {
			t.Fatalf("accepted resource %q, want input %q", sel.Resource, resource)
		}
		if sel.Resource != "" {
			u, err := url.Parse(sel.Resource)
			if !resPattern.MatchString(sel.Resource) || len(sel.Resource) > 1024 || err != nil || !u.IsAbs() {
				t.Fatalf("accepted resource %q, want an absolute URI without fragment", sel.Resource)
			}
		}
		if got.MinTTL < 0 || got.MinTTL > 24*time.Hour {
			t.Fatalf("accepted min_ttl %v, want in [0, 24h]", got.MinTTL)
		}
		if in.MinTtl != nil && got.MinTTL != in.MinTtl.AsDuration() {
			t.Fatalf("accepted min_ttl %v, want %v", got.MinTTL, in.MinTtl.AsDuration())
		}
	})
}

// TestToBrokerRequestNil checks the nil request.
func TestToBrokerRequestNil(t *testing.T) {
	_, err := toBrokerRequest(nil)
	var fe *broker.FieldError
	if !errors.As(err, &fe) || fe.Field != "selector" {
		t.Fatalf("toBrokerRequest(nil): got %v, want a field error for selector", err)
	}
}

// Compile-time check that the stub satisfies the interface.
var _ Broker = (*stubBroker)(nil)
