package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// rows renders flatten's output as "name=value" lines.
func rows(m protoreflect.Message) string {
	var b strings.Builder
	for _, f := range flatten(m) {
		b.WriteString(f.name + "=" + f.value + "\n")
	}
	return b.String()
}

func TestFlatten(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	structMsg, err := structpb.NewStruct(map[string]any{"b": "x", "a": 1.5})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		msg  protoreflect.Message
		want string
	}{
		{
			name: "scalars, zeros, lists labelled by their first field, unset message",
			msg: (&tokenbrokerv1.GetStatsResponse{Hits: 3, Providers: []*tokenbrokerv1.ProviderStats{
				{Provider: "b", Ok: 1}, {Provider: "a", Rejected: 2},
			}}).ProtoReflect(),
			want: "hits=3\nmisses=0\n",
		},
		{
			name: "labels by index when the first field repeats",
			msg: (&tokenbrokerv1.GetStatsResponse{Providers: []*tokenbrokerv1.ProviderStats{
				{Provider: "a", Ok: 1}, {Provider: "a", Ok: 2},
			}}).ProtoReflect(),
			want: "providers[0].provider=a\nproviders[0].ok=1\n",
		},
		{
			name: "enums without their prefix, nested messages, timestamps, repeated scalars",
			msg: (&tokenbrokerv1.WatchTokenResponse{
				Event: tokenbrokerv1.WatchTokenResponse_EVENT_INVALIDATED,
				Token: &tokenbrokerv1.Token{TokenType: "Bearer", Scopes: []string{"a/b", "c/d"}, ExpiresAt: timestamppb.New(at), KeyId: "0123456789abcdef"},
			}).ProtoReflect(),
			want: "event=INVALIDATED\ntoken.access_token=\"\"\ntoken.token_type=Bearer\ntoken.scopes=a/b,c/d\ntoken.issued_at=-\ntoken.expires_at=2026-11-22T10:00:00Z\ntoken.refresh_at=-\ntoken.key_id=0123456789abcdef\ntoken.cert_thumbprint=\"\"\nerror=-\n",
		},
		{
			name: "status with empty details",
			msg:  (&tokenbrokerv1.WatchTokenResponse{Event: tokenbrokerv1.WatchTokenResponse_EVENT_UNAVAILABLE, Error: &status.Status{Code: 14, Message: "down"}}).ProtoReflect(),
			want: "event=UNAVAILABLE\ntoken=-\nerror.code=14\nerror.message=down\nerror.details=-\n",
		},
		{
			name: "durations and oneofs (only the member set)",
			msg: (&tokenbrokerv1.GetTokenRequest{
				Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "held"}},
				MinTtl:   durationpb.New(90 * time.Second),
			}).ProtoReflect(),
			want: "selector.client=held\nselector.scopes=-\nselector.audience=\"\"\nselector.resource=\"\"\nselector.params=-\nmin_ttl=1m30s\n",
		},
		{
			name: "maps sorted by key",
			msg:  structMsg.ProtoReflect(),
			want: "fields[a].number_value=1.5\nfields[b].string_value=x\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rows(tc.msg)
			if !strings.Contains(got, tc.want) {
				t.Errorf("got\n%s\nwant it to contain\n%s", got, tc.want)
			}
		})
	}

	got := rows((&tokenbrokerv1.GetStatsResponse{Providers: []*tokenbrokerv1.ProviderStats{{Provider: "b", Ok: 1}, {Provider: "a", Rejected: 2}}}).ProtoReflect())
	for _, want := range []string{"providers[b].ok=1\n", "providers[a].rejected=2\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("got\n%s\nwant it to contain %q", got, want)
		}
	}
	if strings.Contains(got, ".provider=") {
		t.Errorf("got\n%s\nwant the label field left out of the rows", got)
	}
	if got := rows((&tokenbrokerv1.GetStatsResponse{}).ProtoReflect()); !strings.Contains(got, "providers=-\n") {
		t.Errorf("got\n%s\nwant an empty list shown as providers=-", got)
	}
}

func TestEnumName(t *testing.T) {
	ed := tokenbrokerv1.WatchTokenResponse_EVENT_INITIAL.Descriptor()
	for n, want := range map[protoreflect.EnumNumber]string{0: "UNSPECIFIED", 1: "INITIAL", 4: "UNAVAILABLE", 99: "99"} {
		if got := enumName(ed, n); got != want {
			t.Errorf("enumName(%d): got %q, want %q", n, got, want)
		}
	}
}

func TestUntilAndAgo(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		got, want string
	}{
		{until(timestamppb.New(now.Add(90*time.Second+300*time.Millisecond)), now, "expired"), "1m30s"},
		{until(timestamppb.New(now.Add(-time.Second)), now, "expired"), "expired"},
		{until(nil, now, "expired"), "-"},
		{ago(timestamppb.New(now.Add(-5*time.Second)), now), "5s ago"},
		{ago(nil, now), "-"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestScopeList(t *testing.T) {
	var s scopeList
	for _, v := range []string{"a/read", "b/read, c/read"} {
		if err := s.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if got, want := s.String(), "a/read,b/read,c/read"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, v := range []string{"", "a,", ",a", "a, ,b"} {
		if err := (&scopeList{}).Set(v); err == nil {
			t.Errorf("Set(%q): got no error, want one", v)
		}
	}
}

func TestReportScrubsSecrets(t *testing.T) {
	var stderr strings.Builder
	c := &cli{stderr: &stderr, secrets: []secret.String{"s3cr3t-value", ""}}
	for _, tc := range []struct {
		err  error
		code int
		want string
	}{
		{grpcstatus.Error(codes.Unauthenticated, "client s3cr3t-value refused"), exitAuth, "tokenbrokerctl: Unauthenticated: client [redacted] refused\n"},
		{grpcstatus.Error(codes.ResourceExhausted, "slow down"), exitUnavailable, "tokenbrokerctl: ResourceExhausted: slow down\n"},
		{grpcstatus.Error(codes.FailedPrecondition, "fix the configuration"), exitRequest, "tokenbrokerctl: FailedPrecondition: fix the configuration\n"},
		{grpcstatus.Error(codes.Internal, "internal error"), exitError, "tokenbrokerctl: Internal: internal error\n"},
		{errors.New("reading s3cr3t-value failed"), exitError, "tokenbrokerctl: reading [redacted] failed\n"},
		{usagef("-x: s3cr3t-value"), exitUsage, "tokenbrokerctl: -x: [redacted]\n"},
		{nil, exitOK, ""},
	} {
		stderr.Reset()
		if got := c.report(tc.err); got != tc.code {
			t.Errorf("report(%v): got exit %d, want %d", tc.err, got, tc.code)
		}
		if stderr.String() != tc.want {
			t.Errorf("report(%v): got %q, want %q", tc.err, stderr.String(), tc.want)
		}
	}
}
