package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// TestKeepaliveMinTimeZeroIsNoMinimum: KeepaliveMinTime 0 means no
// minimum, as server.keepalive_min_time: 0 says, not a default (New used
// to turn it into 30s, and grpc-go alone reads 0 as 5 minutes). A raw
// HTTP/2 client pings back to back over loopback TCP: with 0 every ping
// is answered; with the configured default (30s) the server sends the
// client away after a few.
func TestKeepaliveMinTimeZeroIsNoMinimum(t *testing.T) {
	pings := func(minTime time.Duration) error {
		cfg := configured(Config{Broker: okBroker(broker.Token{}), Logger: slog.New(slog.DiscardHandler)})
		cfg.KeepaliveMinTime = minTime // not through serveTCP: configured would fill a zero
		srv, err := New(cfg)
		if err != nil {
			return err
		}
		t.Cleanup(srv.Close)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		s := &serving{done: make(chan error, 1)}
		var ctx context.Context
		ctx, s.cancel = context.WithCancel(context.Background())
		go func() { s.done <- srv.Serve(ctx, lis) }()
		t.Cleanup(func() { s.stop(t) })
		c := dialHTTP2(t, lis.Addr().String())
		for i := range 6 {
			if err := c.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
				return err
			}
			for acked := false; !acked; {
				f, err := c.fr.ReadFrame()
				if err != nil {
					return err
				}
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					return errors.New("server sent GOAWAY " + f.ErrCode.String())
				case *http2.PingFrame:
					acked = f.IsAck() && f.Data[0] == byte(i)
				}
			}
		}
		return nil
	}
	if err := pings(0); err != nil {
		t.Errorf("6 pings in a row, KeepaliveMinTime 0: got %v, want each answered", err)
	}
	if err := pings(configured(Config{}).KeepaliveMinTime); err == nil {
		t.Errorf("6 pings in a row, KeepaliveMinTime %v: got each answered, want GOAWAY", configured(Config{}).KeepaliveMinTime)
	} else {
		t.Logf("KeepaliveMinTime %v: %v", configured(Config{}).KeepaliveMinTime, err)
	}
}
