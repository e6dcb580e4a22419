package secret

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// FileModeError is the problem of a file holding a secret or a private key
// that group or others can write: whoever can write it can replace the
// credential it holds.
type FileModeError struct {
	// Path is the file, made absolute.
	Path string
	// Mode is its permission bits.
	Mode fs.FileMode
}

// Error names the file, its mode and the fix.
func (e *FileModeError) Error() string {
	return fmt.Sprintf("%q has mode %04o: group or others can write it, so they could replace the secret; run chmod 0600 %s (or 0400)",
		e.Path, uint32(e.Mode.Perm()), e.Path)
}

// CheckFileMode applies the file-mode rule of secret and private key files
// to the file at path with the given mode (which the caller took from the
// opened file, following symbolic links): it returns a *FileModeError when
// group or others can write the file, and otherwise, when others can read
// it, a warning for the log (warn is true); else false, nil. Kubernetes
// secret volumes are 0644 unless their defaultMode says otherwise, so
// readable files are allowed; a file its group may read (0440 with the
// pod's fsGroup, the way a non-root container reads its secrets) is not
// warned about.
func CheckFileMode(path string, mode fs.FileMode) (warn bool, err error) {
	perm := mode.Perm()
	switch {
	case perm&0o022 != 0:
		return false, &FileModeError{Path: AbsPath(path), Mode: perm}
	case perm&0o004 != 0:
		return true, nil
	}
	return false, nil
}

// CheckFile applies CheckFileMode to the file at path as it is now (the
// mode of the file opened, see OpenRegular), and logs the warning itself
// (to logger; nil: slog.Default()). A file that cannot be opened, or is
// not a regular file, is an error naming it.
func CheckFile(path string, logger *slog.Logger) error {
	f, fi, err := OpenRegular(path)
	if err != nil {
		return err
	}
	_ = f.Close()
	return CheckMode(path, fi.Mode(), logger)
}

// OpenRegular opens the file at path for reading and returns it with its
// FileInfo, taken from the opened file (so a rename after the open cannot
// change what was checked), when it is a regular file. It opens without
// blocking, so a FIFO or a device is refused at once instead of hanging
// the caller. Errors name the file, made absolute.
func OpenRegular(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, FileProblem(path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, FileProblem(path, err)
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fmt.Errorf("%q is not a regular file (%s)", AbsPath(path), fileType(fi.Mode()))
	}
	return f, fi, nil
}

// fileType names the type of a file that is not regular.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.Type().String()
}

// ReadPrivateFile reads a file holding a secret or a private key: it opens
// the file (OpenRegular: a regular file, or an error without blocking),
// applies CheckMode to the opened file's mode (a file group or others can
// write is refused; one others can read is logged to logger as a warning;
// nil logger: slog.Default()) and reads at most limit bytes: a larger
// file is an error. Errors name the file, made absolute, and the problem,
// never the content. The caller owns the bytes and should clear them once
// used.
func ReadPrivateFile(path string, limit int64, logger *slog.Logger) ([]byte, error) {
	f, fi, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	if err := CheckMode(path, fi.Mode(), logger); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		clear(data)
		return nil, FileProblem(path, err)
	}
	if int64(len(data)) > limit {
		clear(data)
		return nil, fmt.Errorf("%q is larger than %d bytes", AbsPath(path), limit)
	}
	return data, nil
}

// CheckMode is CheckFileMode with the warning logged to logger (nil:
// slog.Default()): "secret file is readable by others" with the file, its
// mode and the fix.
func CheckMode(path string, mode fs.FileMode, logger *slog.Logger) error {
	warn, err := CheckFileMode(path, mode)
	if err != nil {
		return err
	}
	if warn {
		if logger == nil {
			logger = slog.Default()
		}
		logger.Warn("secret file is readable by others; run chmod 0600 (or 0640, 0440) on it (Kubernetes: set the secret volume's defaultMode: 0400, or 0440 with fsGroup)",
			"file", AbsPath(path), "mode", fmt.Sprintf("%04o", uint32(mode.Perm())))
	}
	return nil
}

// FileProblem describes a file that cannot be read: its absolute path and
// the reason, without Go's operation prefix.
func FileProblem(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot read %q: %w", AbsPath(path), err)
}

// AbsPath returns path made absolute, or path itself when that fails.
func AbsPath(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}
