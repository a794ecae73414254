package server

import (
	"bytes"
	"encoding/json"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/tools/testbed"
)

// stuckWriter blocks every Write until released, then passes it on to
// the collector.
type stuckWriter struct {
	release chan struct{}
	entered chan struct{} // a Write is blocked
	once    sync.Once
	logs    *testbed.Logs
	longest int  // the longest Write
	torn    bool // a Write did not end a record
}

func newStuckWriter() *stuckWriter {
	return &stuckWriter{release: make(chan struct{}), entered: make(chan struct{}), logs: testbed.NewLogs()}
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.longest = max(w.longest, len(p))
	w.torn = w.torn || p[len(p)-1] != '\n'
	return w.logs.Write(p)
}

func now() time.Time { return testbed.Epoch }

func TestLogDropsWhileOutputStuck(t *testing.T) {
	out := newStuckWriter()
	l := NewLog(out, nil, zerolog.InfoLevel, now)
	l.Logger.Info().Int("n", 0).Msg("first")
	<-out.entered // the writer holds "first", and is stuck
	// Nothing waits for the output: the buffer fills and then drops.
	n := 1
	for l.Drops().Full == 0 {
		l.Logger.Info().Int("n", n).Msg("record")
		n++
	}
	for range 9 {
		l.Logger.Info().Int("n", n).Msg("record")
		n++
	}
	if d := l.Drops().Full; d != 10 {
		t.Fatalf("dropped %d, want 10", d)
	}
	close(out.release)
	r := out.logs.Wait(t, "log records dropped", nil)
	l.Logger.Info().Msg("after")
	out.logs.Wait(t, "after", nil)
	l.Close(10 * time.Second)

	if r["dropped"] != float64(10) || r["dropped_total"] != float64(10) || r["level"] != float64(40) ||
		r["name"] != loggerName || r["v"] != float64(0) {
		t.Fatalf("notice %v", r)
	}
	// In order: every record kept, the notice where the dropped ones
	// were, then what came after.
	recs := out.logs.Records()
	kept := n - 10
	if len(recs) != kept+2 {
		t.Fatalf("%d records written, want %d", len(recs), kept+2)
	}
	for i, r := range recs[:kept] {
		if r["n"] != float64(i) {
			t.Fatalf("record %d: %v", i, r)
		}
	}
	if recs[kept].Msg() != "log records dropped" || recs[kept+1].Msg() != "after" {
		t.Fatalf("end of log: %v", recs[kept:])
	}
	// Written in whole records, at most PIPE_BUF at a time, so that a
	// successor's records on the same pipe never cut into them.
	if out.longest > pipeBuf || out.torn {
		t.Fatalf("writes of up to %d bytes, torn records %v", out.longest, out.torn)
	}
}

// failingWriter takes half of its first Write, then fails with err.
type failingWriter struct {
	err  error
	took bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.took.Len() == 0 {
		w.took.Write(p[:len(p)/2])
		return len(p) / 2, w.err
	}
	return 0, w.err
}

func TestLogFallsBackWhenOutputFails(t *testing.T) {
	out := &failingWriter{err: syscall.EPIPE}
	fallback := testbed.NewLogs()
	l := NewLog(out, fallback, zerolog.InfoLevel, now)
	l.Logger.Info().Msg("one")
	fallback.Wait(t, "one", nil)
	l.Logger.Info().Msg("two")
	l.Close(10 * time.Second)
	var msgs []string
	for _, r := range fallback.Records() {
		msgs = append(msgs, r.Msg())
	}
	want := []string{"log output failed: writing to stderr", "one", "two"}
	if len(msgs) != len(want) || msgs[0] != want[0] || msgs[1] != want[1] || msgs[2] != want[2] {
		t.Fatalf("on the fallback: %q, want %q", msgs, want)
	}
	if r := fallback.Records()[0]; r["err"] != "broken pipe" || r["level"] != float64(50) {
		t.Fatalf("notice %v", r)
	}
	if d := l.Drops(); d.Full != 0 || d.WriteError != 0 {
		t.Fatalf("drops %+v", d)
	}
}

// deadWriter takes nothing.
type deadWriter struct{}

func (deadWriter) Write([]byte) (int, error) { return 0, syscall.EBADF }

func TestLogCountsRecordsNoOutputTakes(t *testing.T) {
	l := NewLog(deadWriter{}, deadWriter{}, zerolog.InfoLevel, now)
	for range 5 {
		l.Logger.Info().Msg("lost")
	}
	l.Close(10 * time.Second)
	// The five and the notice about stdout, which stderr did not take.
	if d := l.Drops(); d.WriteError != 6 || d.Full != 0 {
		t.Fatalf("drops %+v, want 6 write errors", d)
	}
	l.Logger.Info().Msg("after close")
	if d := l.Drops(); d.WriteError != 7 {
		t.Fatalf("a record after Close: drops %+v", d)
	}
	l.ResetCounters()
	if d := l.Drops(); d.WriteError != 0 {
		t.Fatalf("after reset: %+v", d)
	}
}

func TestLogCloseFlushes(t *testing.T) {
	var buf bytes.Buffer
	l := NewLog(&buf, nil, zerolog.InfoLevel, now)
	for range 100 {
		l.Logger.Info().Msg("record")
	}
	l.Logger.Info().Msg("shut down")
	l.Close(10 * time.Second)
	lines := bytes.Split(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("\n"))
	if len(lines) != 101 {
		t.Fatalf("%d lines after Close, want 101", len(lines))
	}
	var last map[string]any
	if err := json.Unmarshal(lines[100], &last); err != nil || last["msg"] != "shut down" {
		t.Fatalf("last line %q: %v", lines[100], err)
	}
}

func TestLogCloseDoesNotWaitForAStuckReader(t *testing.T) {
	out := newStuckWriter()
	defer close(out.release)
	l := NewLog(out, nil, zerolog.InfoLevel, now)
	l.Logger.Info().Msg("stuck")
	<-out.entered
	done := make(chan struct{})
	go func() {
		l.Close(time.Millisecond)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a stuck output")
	}
}
