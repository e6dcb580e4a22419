package secret

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
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

// CheckFile applies CheckFileMode to the file at path as it is now, and
// logs the warning itself (to logger; nil: slog.Default()). A file that
// cannot be looked at is an error naming it.
func CheckFile(path string, logger *slog.Logger) error {
	fi, err := os.Stat(path)
	if err != nil {
		return FileProblem(path, err)
	}
	return CheckMode(path, fi.Mode(), logger)
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
