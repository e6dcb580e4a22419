package app

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fixedAddrListener is a net.Listener that reports addr and accepts
// nothing: the address a host name could resolve to.
type fixedAddrListener struct {
	net.Listener
	addr net.Addr
}

func (l fixedAddrListener) Addr() net.Addr { return l.addr }

// TestDevBoundLoopback: in -dev mode every listener must be bound to
// loopback (or be a unix socket), whatever name the configuration gave:
// "localhost" passes the configuration's check by name, and /etc/hosts may
// map it to another address. The error names -dev, the key and the
// address.
func TestDevBoundLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		ok   bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7443}, true},
		{&net.TCPAddr{IP: net.IPv4(127, 1, 2, 3), Port: 7443}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 7443}, true},
		{&net.UnixAddr{Name: "/run/tokenbroker/admin.sock", Net: "unix"}, true},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 7443}, false},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 7443}, false},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 7443}, false},
		{&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7443}, false},
	} {
		err := devLoopbackAddr("http_listen", tc.addr)
		if tc.ok {
			if err != nil {
				t.Errorf("%v: got %v, want nil", tc.addr, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v: got nil, want an error", tc.addr)
			continue
		}
		for _, want := range []string{"-dev", "http_listen", tc.addr.String(), "loopback"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v: error %q does not name %q", tc.addr, err, want)
			}
		}
	}

	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	unix, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close()
	if err := devBoundLoopback(tcp, unix, nil); err != nil {
		t.Errorf("loopback and unix listeners: got %v, want nil", err)
	}
	remote := fixedAddrListener{Listener: tcp, addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 7080}}
	if err := devBoundLoopback(tcp, nil, remote); err == nil || !strings.Contains(err.Error(), "http_listen is bound to 10.1.2.3:7080") {
		t.Errorf("http listener off loopback: got %v, want an error naming http_listen and 10.1.2.3:7080", err)
	}
}
