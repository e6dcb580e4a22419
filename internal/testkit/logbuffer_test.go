package testkit

import (
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestLogBufferConcurrent: loggers on many goroutines write whole lines
// into one LogBuffer while it is read; every line arrives intact.
func TestLogBufferConcurrent(t *testing.T) {
	var b LogBuffer
	logger := JSONLogger(&b)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				logger.Debug("line", "writer", i)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	recs := b.Records(t)
	if len(recs) != 800 {
		t.Fatalf("got %d records, want 800", len(recs))
	}
	for _, r := range recs {
		if r["msg"] != "line" || r["level"] != "DEBUG" {
			t.Fatalf("got record %v, want msg line at DEBUG", r)
		}
	}
}

// TestWrote: Wrote receives after a write, once for writes nobody waited
// for, and not before the next write.
func TestWrote(t *testing.T) {
	var b LogBuffer
	select {
	case <-b.Wrote():
		t.Fatal("Wrote received before any write")
	default:
	}
	TextLogger(&b).Info("one")
	TextLogger(&b).Info("two")
	select {
	case <-b.Wrote():
	default:
		t.Fatal("Wrote did not receive after a write")
	}
	select {
	case <-b.Wrote():
		t.Fatal("Wrote received twice for writes made before one receive")
	default:
	}
	if got := strings.Count(b.String(), "\n"); got != 2 {
		t.Errorf("got %d lines, want 2:\n%s", got, b.String())
	}
}

// TestRecordsRejectsText: Records fails the test on a line that is not
// JSON.
func TestRecordsRejectsText(t *testing.T) {
	var b LogBuffer
	TextLogger(&b).Info("plain")
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Records(ft)
	}()
	<-done
	if !ft.failed {
		t.Error("Records accepted a text line, want a test failure")
	}
}

// TestCount: Count finds lines by level and text in both formats.
func TestCount(t *testing.T) {
	var b LogBuffer
	for _, l := range []*slog.Logger{TextLogger(&b), JSONLogger(&b)} {
		l.Warn("redis tier down", "reason", "refused")
		l.Warn("redis tier still down")
		l.Info("redis tier down") // another level
		l.Debug("other")
	}
	for _, tc := range []struct {
		level slog.Level
		text  string
		want  int
	}{
		{slog.LevelWarn, "redis tier", 4},
		{slog.LevelWarn, "still", 2},
		{slog.LevelInfo, "redis tier down", 2},
		{slog.LevelError, "redis", 0},
		{slog.LevelDebug, "other", 2},
	} {
		if got := b.Count(tc.level, tc.text); got != tc.want {
			t.Errorf("Count(%v, %q): got %d, want %d", tc.level, tc.text, got, tc.want)
		}
	}
}

// fatalRecorder records Fatalf and ends only the calling goroutine, as
// testing.T does, instead of failing the test.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Fatalf(string, ...any) { f.failed = true; runtime.Goexit() }
func (f *fatalRecorder) Helper()               {}
