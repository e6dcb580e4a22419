// Package testlog gives tests a log sink safe for concurrent use: Buffer
// collects what the loggers of a component under test write (from any
// goroutine) while the test reads it, and Text and JSON return loggers
// that write every level into it. It is imported by _test.go files only.
package testlog

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Buffer collects what loggers write, safe for concurrent writers (the
// goroutines of a server under test) and readers (the test). Its zero
// value is ready to use.
type Buffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{} // one slot: something was written since the last receive
}

// Write appends p and signals Wrote.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.wroteLocked() <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Wrote returns a channel that receives after a write. A test waiting for
// a log line checks String and, while the line is not there yet, waits on
// Wrote and checks again. Writes while nobody receives are coalesced into
// one signal.
func (b *Buffer) Wrote() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.wroteLocked()
}

func (b *Buffer) wroteLocked() chan struct{} {
	if b.wrote == nil {
		b.wrote = make(chan struct{}, 1)
	}
	return b.wrote
}

// Records returns the JSON log records written so far, one a line. It
// fails the test on a line that is not a JSON object.
func (b *Buffer) Records(t testing.TB) []map[string]any {
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

// Text returns a logger that writes every level, debug included, to w as
// text lines.
func Text(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// JSON returns a logger that writes every level, debug included, to w as
// JSON lines.
func JSON(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
