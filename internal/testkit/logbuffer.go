package testkit

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// LogBuffer collects what loggers write, safe for concurrent writers (the
// goroutines of a server under test) and readers (the test). Its zero
// value is ready to use.
type LogBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{} // one slot: something was written since the last receive
}

// Write appends p and signals Wrote.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.wroteLocked() <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Wrote returns a channel that receives after a write. A test waiting for
// a log line checks String and, while the line is not there yet, waits on
// Wrote and checks again. Writes while nobody receives are coalesced into
// one signal.
func (b *LogBuffer) Wrote() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.wroteLocked()
}

func (b *LogBuffer) wroteLocked() chan struct{} {
	if b.wrote == nil {
		b.wrote = make(chan struct{}, 1)
	}
	return b.wrote
}

// Records returns the JSON log records written so far, one a line. It
// fails the test on a line that is not a JSON object.
func (b *LogBuffer) Records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(b.String()) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// Count returns how many of the lines written so far, text or JSON, are
// at level and contain substr.
func (b *LogBuffer) Count(level slog.Level, substr string) int {
	textLevel := "level=" + level.String() + " "
	jsonLevel := `"level":"` + level.String() + `"`
	n := 0
	for line := range strings.Lines(b.String()) {
		if (strings.Contains(line, textLevel) || strings.Contains(line, jsonLevel)) && strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// TextLogger returns a logger that writes every level, debug included, to
// w as text lines.
func TextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// JSONLogger returns a logger that writes every level, debug included, to
// w as JSON lines.
func JSONLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
