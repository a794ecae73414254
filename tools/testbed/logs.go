package testbed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Record is one JSON log record.
type Record map[string]any

// Msg returns the record's message: bunyan's msg, or zerolog's default
// message field for loggers built without bbal's field names.
func (r Record) Msg() string {
	if s, ok := r["msg"].(string); ok {
		return s
	}
	s, _ := r["message"].(string)
	return s
}

// Match reports whether r has message msg and every field in fields
// (compared as fmt.Sprint strings).
func (r Record) Match(msg string, fields map[string]any) bool {
	if r.Msg() != msg {
		return false
	}
	for k, want := range fields {
		got, ok := r[k]
		if !ok || fmt.Sprint(got) != fmt.Sprint(want) {
			return false
		}
	}
	return true
}

// Logs collects JSON log lines written to it and lets tests wait for a
// record to appear. It is an io.Writer safe for concurrent use.
type Logs struct {
	mu      sync.Mutex
	partial []byte
	records []Record
	raw     []string
	changed chan struct{} // closed and replaced on every new record
}

// NewLogs returns an empty collector.
func NewLogs() *Logs { return &Logs{changed: make(chan struct{})} }

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			r = Record{"msg": "UNPARSABLE", "line": line}
		}
		l.records = append(l.records, r)
		l.raw = append(l.raw, line)
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return len(p), nil
}

// Records returns a copy of the records so far.
func (l *Logs) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.records...)
}

// Lines returns the raw lines so far.
func (l *Logs) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.raw...)
}

// Count returns the number of records matching msg and fields.
func (l *Logs) Count(msg string, fields map[string]any) int {
	n := 0
	for _, r := range l.Records() {
		if r.Match(msg, fields) {
			n++
		}
	}
	return n
}

// CountAfter is Count for the records after mark.
func (l *Logs) CountAfter(mark int, msg string, fields map[string]any) int {
	n := 0
	for _, r := range l.Records()[mark:] {
		if r.Match(msg, fields) {
			n++
		}
	}
	return n
}

// Mark returns the number of records so far, for WaitAfter.
func (l *Logs) Mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.records)
}

// Wait waits up to 10 s for a record matching msg and fields, anywhere in
// the log, and returns it.
func (l *Logs) Wait(t testing.TB, msg string, fields map[string]any) Record {
	t.Helper()
	return l.WaitAfter(t, 0, msg, fields)
}

// WaitAfter is Wait for records after the mark.
func (l *Logs) WaitAfter(t testing.TB, mark int, msg string, fields map[string]any) Record {
	t.Helper()
	r, ok := l.Await(mark, 10*time.Second, msg, fields)
	if !ok {
		t.Fatalf("no log record %q %v; log:\n%s", msg, fields, l.tail(40))
	}
	return r
}

// Await waits up to d for a record after the mark matching msg and
// fields, woken by each new record, and reports whether one came.
func (l *Logs) Await(mark int, d time.Duration, msg string, fields map[string]any) (Record, bool) {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		for _, r := range l.records[min(mark, len(l.records)):] {
			if r.Match(msg, fields) {
				l.mu.Unlock()
				return r, true
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			return nil, false
		}
	}
}

func (l *Logs) tail(n int) string {
	lines := l.Lines()
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Epoch is a fixed start for fake clocks in tests.
var Epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Logger returns a zerolog logger at trace level writing JSON records
// to l, for package tests.
func Logger(l *Logs) zerolog.Logger {
	return zerolog.New(l).Level(zerolog.TraceLevel)
}
