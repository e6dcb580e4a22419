package app

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
)

// maxSocketPath is the longest unix socket path the kernel accepts
// (Linux sun_path less its terminating NUL).
const maxSocketPath = 107

// listenUnix listens on a unix socket at path with permission perm and,
// unless group is "", that group (a name or a numeric gid), whatever the
// process umask.
//
// There is no moment at which the socket is open to more than asked: it is
// bound in a fresh directory next to path that only this user may enter
// (0700; connecting to a socket needs search permission on its directory),
// given its mode and group there, and then renamed onto path, which
// replaces a socket left by an earlier run atomically. Changing the umask
// instead would change it for the whole process, under every goroutine
// creating files at the time.
//
// The listener removes the socket at path when it is closed.
func listenUnix(path string, perm fs.FileMode, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		var err error
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket == 0 {
		return nil, fmt.Errorf("%s exists and is not a socket; remove it or choose another path", path)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".tb")
	if err != nil {
		return nil, fmt.Errorf("create the socket: %w", err)
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	tmpPath := filepath.Join(tmp, "s")
	if len(tmpPath) > maxSocketPath {
		return nil, fmt.Errorf("unix socket path %s is too long to be created safely: use one at most %d bytes long", path, len(path)-(len(tmpPath)-maxSocketPath))
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpPath, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // it will not be at tmpPath
	fail := func(err error) (net.Listener, error) {
		_ = l.Close()
		return nil, err
	}
	if gid >= 0 {
		if err := os.Chown(tmpPath, -1, gid); err != nil {
			return fail(fmt.Errorf("set the socket's group to %s: %w", group, err))
		}
	}
	if err := os.Chmod(tmpPath, perm); err != nil {
		return fail(fmt.Errorf("set the socket's mode: %w", err))
	}
	if err := os.Rename(tmpPath, path); err != nil {
		return fail(fmt.Errorf("move the socket into place: %w", err))
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// lookupGroup returns the gid of group, a numeric gid or a group name.
func lookupGroup(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("admin.socket_group: %w", err)
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("admin.socket_group: group %q has gid %q, not a number", group, g.Gid)
	}
	return n, nil
}

// unixListener removes its socket when closed.
type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Close closes the listener and removes its socket.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	})
	return err
}
