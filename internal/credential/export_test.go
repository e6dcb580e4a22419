package credential

import "github.com/tokenbroker/tokenbroker/internal/upstream"

// NewWatcherForTest returns a Watcher of one source whose stamps are
// stale, so that Check reloads it.
func NewWatcherForTest(spec Spec, cr *upstream.Credential) *Watcher {
	w := NewWatcher([]Source{{Spec: spec, Credential: cr}}, 0, nil, nil)
	for f := range w.stamps[0] {
		w.stamps[0][f] = stamp{}
	}
	return w
}
