//go:build unix

package app

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// TestAdminSocketModeIgnoresUmask: with a umask that lets everyone in
// (0), the admin socket is still 0600 by default, or the mode and group
// the configuration names; it accepts connections, replaces a socket left
// by an earlier run, refuses to replace a file that is not a socket, and
// is removed on Close.
func TestAdminSocketModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()

	check := func(a config.Admin, want os.FileMode, gid int) {
		t.Helper()
		path := a.Listen[len("unix:"):]
		l, err := listenAdmin(a)
		if err != nil {
			t.Fatalf("listenAdmin(%+v) = %v", a, err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != want {
			t.Errorf("socket %s mode = %v, want a socket with %04o", path, fi.Mode(), want)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && gid >= 0 && int(st.Gid) != gid {
			t.Errorf("socket group = %d, want %d", st.Gid, gid)
		}
		go func() {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Errorf("dial %s: %v", path, err)
		} else {
			c.Close()
		}
		if err := l.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket still there after Close: %v", err)
		}
		if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 0 {
			t.Errorf("left behind in the socket's directory: %v", entries)
		}
	}
	path := filepath.Join(dir, "admin.sock")
	check(config.Admin{Listen: "unix:" + path, SocketMode: "0600"}, 0o600, -1)
	gid := os.Getgid()
	check(config.Admin{Listen: "unix:" + path, SocketMode: "0660", SocketGroup: strconv.Itoa(gid)}, 0o660, gid)

	// A socket left behind by an earlier run is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	check(config.Admin{Listen: "unix:" + path, SocketMode: "0600"}, 0o600, -1)

	// A file that is not a socket is not replaced.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := listenAdmin(config.Admin{Listen: "unix:" + path, SocketMode: "0600"}); err == nil {
		l.Close()
		t.Errorf("listenAdmin over a regular file = nil error, want one")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Errorf("regular file at the socket path was changed")
	}
}
