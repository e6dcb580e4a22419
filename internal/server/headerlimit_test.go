package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
)

// getTokenPath is the HTTP/2 :path of GetToken.
const getTokenPath = tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName

// TestMaxHeaderListSizeOnTheWire: grpc-go's own client refuses to send
// metadata beyond the server's limit, so TestMaxHeaderListSize never
// reaches the server's check. Here a raw HTTP/2 client sends, on the real
// server over loopback TCP, one HEADERS frame whose header list (32 KiB
// once decoded, 4 KiB on the wire thanks to HPACK's dynamic table) is
// over the 16 KiB default: the server advertises the limit in its
// SETTINGS, resets that stream with FRAME_SIZE_ERROR (what grpc-go does
// for a truncated header list) before any interceptor or handler runs,
// and then serves an ordinary call on the same connection.
func TestMaxHeaderListSizeOnTheWire(t *testing.T) {
	var unary, streams atomic.Int32
	cfg := Config{
		Broker: okBroker(broker.Token{TokenType: "Bearer", KeyID: "k1"}),
		Logger: slog.New(slog.DiscardHandler),
		UnaryInterceptors: []grpc.UnaryServerInterceptor{
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				unary.Add(1)
				return h(ctx, req)
			},
		},
		StreamInterceptors: []grpc.StreamServerInterceptor{
			func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				streams.Add(1)
				return h(srv, ss)
			},
		},
	}
	addr := serveTCP(t, cfg)
	c := dialHTTP2(t, addr)

	want := uint32(config.Default().Server.MaxHeaderListSize)
	if got, ok := c.settings[http2.SettingMaxHeaderListSize]; !ok || got != want {
		t.Fatalf("server SETTINGS_MAX_HEADER_LIST_SIZE: got %d (sent: %v), want %d", got, ok, want)
	}

	// Stream 1: six copies of a 4,000-byte header, each over 4 KiB in the
	// header list size (RFC 9113: name + value + 32), the copies after the
	// first a one-byte index into the dynamic table.
	padding := strings.Repeat("a", 4000)
	extra := make([]hpack.HeaderField, 6)
	for i := range extra {
		extra[i] = hpack.HeaderField{Name: "x-padding", Value: padding}
	}
	block := c.headerBlock(addr, extra...)
	if len(block) >= 16<<10 {
		t.Fatalf("header block is %d bytes on the wire, want one frame's worth (< 16 KiB)", len(block))
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	rst, err := c.untilStreamEnds(1)
	if err != nil {
		t.Fatalf("oversized HEADERS: %v", err)
	}
	if rst == nil || rst.ErrCode != http2.ErrCodeFrameSize {
		t.Fatalf("oversized HEADERS: got %v, want RST_STREAM FRAME_SIZE_ERROR on stream 1", rst)
	}

	// Stream 3: an ordinary GetToken on the same connection is served.
	msg, err := proto.Marshal(&tokenbrokerv1.GetTokenRequest{Selector: &tokenbrokerv1.TokenSelector{Credentials: &tokenbrokerv1.TokenSelector_Client{Client: "orders"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: c.headerBlock(addr), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	frame := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	if err := c.fr.WriteData(3, true, append(frame, msg...)); err != nil {
		t.Fatal(err)
	}
	if rst, err := c.untilStreamEnds(3); err != nil || rst != nil {
		t.Fatalf("ordinary call after the refused one: got %v, %v; want its trailers", rst, err)
	}
	if got := c.grpcStatus[3]; got != "0" {
		t.Errorf("ordinary call: got grpc-status %q, want 0", got)
	}
	// Stream 3 ran after stream 1 was refused: only it reached the
	// interceptors.
	if u, s := unary.Load(), streams.Load(); u != 1 || s != 0 {
		t.Errorf("interceptor calls: got %d unary and %d stream, want 1 (the ordinary call) and 0", u, s)
	}
}

// rawHTTP2 is a bare HTTP/2 client connection: framer, HPACK encoder and
// what the server said.
type rawHTTP2 struct {
	t        *testing.T
	conn     net.Conn
	fr       *http2.Framer
	hbuf     bytes.Buffer
	enc      *hpack.Encoder
	settings map[http2.SettingID]uint32
	// grpcStatus holds each stream's grpc-status trailer.
	grpcStatus map[uint32]string
}

// dialHTTP2 connects to addr, exchanges the connection preface and
// SETTINGS, and returns the connection (closed at cleanup).
func dialHTTP2(t *testing.T, addr string) *rawHTTP2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	// A guard against a hung test, not a timing assertion.
	if err := conn.SetDeadline(time.Now().Add(rpcTimeout)); err != nil {
		t.Fatal(err)
	}
	c := &rawHTTP2{t: t, conn: conn, fr: http2.NewFramer(conn, conn), settings: map[http2.SettingID]uint32{}, grpcStatus: map[uint32]string{}}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's SETTINGS: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			_ = sf.ForeachSetting(func(s http2.Setting) error {
				c.settings[s.ID] = s.Val
				return nil
			})
			if err := c.fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
}

// headerBlock returns the HPACK block of a gRPC request to GetToken on
// authority, with the extra fields after the standard ones.
func (c *rawHTTP2) headerBlock(authority string, extra ...hpack.HeaderField) []byte {
	c.t.Helper()
	c.hbuf.Reset()
	fields := append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: getTokenPath},
		{Name: ":authority", Value: authority},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}, extra...)
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			c.t.Fatal(err)
		}
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// untilStreamEnds reads frames until stream id ends: it returns the
// RST_STREAM that reset it, or nil when it ended with trailers (recorded
// in grpcStatus). A GOAWAY or the connection closing is an error.
func (c *rawHTTP2) untilStreamEnds(id uint32) (*http2.RSTStreamFrame, error) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return nil, errors.New("server sent GOAWAY " + f.ErrCode.String())
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return f, nil
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.fr.WriteSettingsAck(); err != nil {
					return nil, err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := c.fr.WritePing(true, f.Data); err != nil {
					return nil, err
				}
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			if v := f.PseudoValue("status"); v != "" && v != "200" {
				return nil, errors.New("HTTP status " + v)
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					c.grpcStatus[id] = hf.Value
				}
			}
			if f.StreamEnded() {
				return nil, nil
			}
		case *http2.DataFrame:
			if f.StreamID == id && f.StreamEnded() {
				return nil, nil
			}
		}
	}
}
