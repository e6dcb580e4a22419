package credential

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// DefaultPollInterval is how often a Watcher looks at its files when no
// event told it they changed.
const DefaultPollInterval = 10 * time.Second

// Source is a credential to keep current: where it comes from and the
// upstream.Credential that holds its material.
type Source struct {
	// Spec says where the material comes from.
	Spec Spec
	// Credential receives the new material.
	Credential *upstream.Credential
}

// Watcher re-reads the files of its sources when they change, and hands
// the new material to their Credentials. A change is noticed by an
// fsnotify event on the file's directory (the directory, not the file, so
// that a rename over the file or a Kubernetes "..data" symlink swap is
// seen), and else by a look at every file's status each poll interval. A
// reload that fails keeps the previous material and is logged with the
// client's name and the error (which names the file, never the content).
// An assertion file is not watched: each request reads it.
type Watcher struct {
	sources  []Source
	getenv   func(string) string
	log      *slog.Logger
	interval time.Duration

	mu     sync.Mutex
	stamps []map[string]stamp // per source, per file
	// reloaded, when set, is told of every reload attempt (tests).
	reloaded func(name string, err error)
}

// stamp is what tells a file changed: its identity, size and time.
type stamp struct {
	ok      bool
	ino     uint64
	dev     uint64
	size    int64
	modTime int64
}

// NewWatcher returns a Watcher of sources. interval is the poll interval
// (0: DefaultPollInterval); getenv reads the environment for sources read
// from a variable (which are never reloaded); logger receives the reloads.
func NewWatcher(sources []Source, interval time.Duration, getenv func(string) string, logger *slog.Logger) *Watcher {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	if logger == nil {
		logger = slog.Default()
	}
	w := &Watcher{sources: sources, getenv: getenv, log: logger, interval: interval}
	w.stamps = make([]map[string]stamp, len(sources))
	for i, s := range sources {
		w.stamps[i] = stampsOf(watched(s.Spec))
	}
	return w
}

// watched are the files of spec a Watcher looks at.
func watched(spec Spec) []string {
	var out []string
	for _, f := range []string{spec.SecretFile, spec.KeyFile, spec.CertFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// stampsOf returns the current stamps of files.
func stampsOf(files []string) map[string]stamp {
	m := make(map[string]stamp, len(files))
	for _, f := range files {
		m[f] = stampOf(f)
	}
	return m
}

// stampOf returns the stamp of the file at path, following symbolic
// links (a Kubernetes secret volume's files are links into a directory
// that is swapped).
func stampOf(path string) stamp {
	fi, err := statFile(path)
	if err != nil {
		return stamp{}
	}
	s := stamp{ok: true, size: fi.Size(), modTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino, s.dev = uint64(st.Ino), uint64(st.Dev)
	}
	return s
}

// Run watches until ctx ends; it returns nil then. Without fsnotify (no
// inotify instances left, for example) it polls only.
func (w *Watcher) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if fw, err := fsnotify.NewWatcher(); err != nil {
		w.log.Warn("credential files are polled only: cannot watch for file events", "error", err, "interval", w.interval)
	} else {
		defer func() { _ = fw.Close() }()
		for _, dir := range w.dirs() {
			if err := fw.Add(dir); err != nil {
				w.log.Warn("credential directory is polled only: cannot watch it for events", "dir", dir, "error", err)
			}
		}
		events, errs = fw.Events, fw.Errors
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			w.checkDir(filepath.Dir(ev.Name))
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			w.log.Warn("credential file watch error; polling goes on", "error", err)
		case <-t.C:
			w.Check()
		}
	}
}

// dirs are the directories of the watched files, each once.
func (w *Watcher) dirs() []string {
	var out []string
	for _, s := range w.sources {
		for _, f := range watched(s.Spec) {
			if d := filepath.Dir(f); !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	return out
}

// checkDir is Check for the sources with a file in dir.
func (w *Watcher) checkDir(dir string) {
	w.check(func(s Spec) bool {
		return slices.ContainsFunc(watched(s), func(f string) bool { return filepath.Dir(f) == dir })
	})
}

// Check looks at every source's files once and reloads those that
// changed.
func (w *Watcher) Check() { w.check(func(Spec) bool { return true }) }

func (w *Watcher) check(match func(Spec) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, s := range w.sources {
		if !match(s.Spec) {
			continue
		}
		now := stampsOf(watched(s.Spec))
		changed := false
		for f, st := range now {
			if w.stamps[i][f] != st {
				changed = true
			}
		}
		if !changed {
			continue
		}
		w.stamps[i] = now
		w.reload(s)
	}
}

// reload reads s's material again and sets it; a failure keeps the old.
func (w *Watcher) reload(s Source) {
	m, err := Load(s.Spec, w.getenv, w.log)
	if w.reloaded != nil {
		defer w.reloaded(s.Spec.Name, err)
	}
	if err != nil {
		w.log.Warn("client credential changed but cannot be reloaded; the previous one stays in use",
			"client", s.Spec.Name, "file", absAll(watched(s.Spec)), "error", err)
		return
	}
	s.Credential.Set(m)
	attrs := []any{"client", s.Spec.Name, "auth_method", string(s.Spec.Method), "file", absAll(watched(s.Spec))}
	switch {
	case m.Signer != nil:
		attrs = append(attrs, "key_thumbprint", m.Signer.Thumbprint, "kid", m.Signer.KeyID)
	case m.CertThumbprint != "":
		attrs = append(attrs, "cert_thumbprint", m.CertThumbprint)
	}
	w.log.Info("client credential reloaded; the next token request uses it", attrs...)
}

// absAll returns the files made absolute.
func absAll(files []string) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = secret.AbsPath(f)
	}
	return out
}
