package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

// rawCodec sends a *[]byte as it is, so that a test can send requests the
// generated code would refuse to encode, and decodes answers as protos.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// wireString appends field num holding the string bytes s.
func wireString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// wireMessage appends field num holding the encoded message m.
func wireMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// TestInvalidUTF8IsInvalidArgument: a request whose string field holds
// invalid UTF-8 (hand-encoded: the generated code will not encode one)
// gets InvalidArgument naming the field, on GetToken and WatchToken over
// a real gRPC connection, is logged with that code, and never reaches the
// broker; the message does not echo the bytes.
func TestInvalidUTF8IsInvalidArgument(t *testing.T) {
	const bad = "orders\xff\xfe"
	var reached atomic.Int32
	logs := &testkit.LogBuffer{}
	cfg := Config{
		Broker: &stubBroker{
			getToken: func(context.Context, broker.Request) (broker.Token, error) {
				reached.Add(1)
				return broker.Token{}, nil
			},
			watch: func(context.Context, broker.Request) (Subscription, error) {
				reached.Add(1)
				return nil, io.EOF
			},
		},
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	}
	conn := startTCPServer(t, cfg)

	selector := func(fields ...[]byte) []byte { return bytes.Join(fields, nil) }
	tests := []struct {
		name     string
		selector []byte
		want     string
	}{
		{"first scope", selector(wireString(nil, 1, "orders"), wireString(nil, 3, bad)), "selector.scopes[0]: " + ruleUTF8},
		{"third scope", selector(wireString(nil, 1, "orders"), wireString(nil, 3, "a"), wireString(nil, 3, "b"), wireString(nil, 3, bad)), "selector.scopes[2]: " + ruleUTF8},
		{"client", selector(wireString(nil, 1, bad), wireString(nil, 3, "a")), "selector.client: " + ruleUTF8},
		{"client secret", selector(wireMessage(nil, 2, selector(wireString(nil, 1, "p"), wireString(nil, 2, "id"), wireString(nil, 3, "s3cr3t\xc3\x28")))),
			"selector.client_credentials.client_secret: " + ruleUTF8},
		{"audience after valid fields", selector(wireString(nil, 1, "orders"), wireString(nil, 3, "a"), wireString(nil, 4, bad)), "selector.audience: " + ruleUTF8},
	}
	for _, tc := range tests {
		req := wireMessage(nil, 1, tc.selector)
		t.Run("GetToken "+tc.name, func(t *testing.T) {
			var resp tokenbrokerv1.GetTokenResponse
			err := conn.Invoke(rpcContext(t), "/tokenbroker.v1.TokenBrokerService/GetToken", &req, &resp, grpc.ForceCodecV2(rawCodec{}))
			checkInvalidUTF8(t, err, tc.want)
		})
		t.Run("WatchToken "+tc.name, func(t *testing.T) {
			desc := &grpc.StreamDesc{StreamName: "WatchToken", ServerStreams: true}
			stream, err := conn.NewStream(rpcContext(t), desc, "/tokenbroker.v1.TokenBrokerService/WatchToken", grpc.ForceCodecV2(rawCodec{}))
			if err != nil {
				t.Fatalf("NewStream: %v", err)
			}
			if err := stream.SendMsg(&req); err != nil {
				t.Fatalf("SendMsg: %v", err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatalf("CloseSend: %v", err)
			}
			var resp tokenbrokerv1.WatchTokenResponse
			checkInvalidUTF8(t, stream.RecvMsg(&resp), tc.want)
		})
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("broker calls: got %d, want 0", n)
	}
	records := logs.Records(t)
	if len(records) != 2*len(tests) {
		t.Fatalf("access log: got %d records, want %d", len(records), 2*len(tests))
	}
	for _, r := range records {
		if r[logCode] != codes.InvalidArgument.String() {
			t.Errorf("access log record: got %s %v, want InvalidArgument", logCode, r[logCode])
		}
	}
}

func checkInvalidUTF8(t *testing.T, err error, want string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || st.Message() != want {
		t.Fatalf("got %v %q, want InvalidArgument %q", st.Code(), st.Message(), want)
	}
	if msg := st.Message(); !utf8.ValidString(msg) || strings.ContainsRune(msg, utf8.RuneError) || strings.Contains(msg, "s3cr3t") {
		t.Errorf("message %q echoes the request", st.Message())
	}
}

// TestInvalidUTF8Field walks hand-encoded requests: the path names the
// first bad string field, counts repeated entries, descends into messages
// and ignores unknown fields and other wire types.
func TestInvalidUTF8Field(t *testing.T) {
	md := (&tokenbrokerv1.GetTokenRequest{}).ProtoReflect().Descriptor()
	sel := bytes.Join([][]byte{
		protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 7), // unknown varint
		wireString(nil, 10, "\xff"), // unknown field: not checked
		wireString(nil, 3, "ok"),
		wireString(nil, 3, "\xff"),
	}, nil)
	if got, ok := invalidUTF8Field(md, wireMessage(nil, 1, sel), ""); !ok || got != "selector.scopes[1]" {
		t.Errorf("got (%q, %v), want (selector.scopes[1], true)", got, ok)
	}
	valid := wireMessage(nil, 1, wireString(nil, 1, "orders"))
	if got, ok := invalidUTF8Field(md, valid, ""); ok {
		t.Errorf("valid request: got (%q, true), want not found", got)
	}
	if got, ok := invalidUTF8Field(md, []byte{0x0a, 0x05, 0x01}, ""); ok {
		t.Errorf("truncated request: got (%q, true), want not found", got)
	}
}
