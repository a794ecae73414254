package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// loggerName is the bunyan "name" of every record, the original's.
const loggerName = "mname-balancer"

// bunyanLevels maps zerolog levels to bunyan's numeric levels.
var bunyanLevels = map[zerolog.Level]int{
	zerolog.TraceLevel: 10,
	zerolog.DebugLevel: 20,
	zerolog.InfoLevel:  30,
	zerolog.WarnLevel:  40,
	zerolog.ErrorLevel: 50,
	zerolog.FatalLevel: 60,
	zerolog.PanicLevel: 60,
}

// ParseLevel accepts bunyan's level names and numbers.
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "trace", "10":
		return zerolog.TraceLevel, nil
	case "debug", "20":
		return zerolog.DebugLevel, nil
	case "info", "30":
		return zerolog.InfoLevel, nil
	case "warn", "40":
		return zerolog.WarnLevel, nil
	case "error", "50":
		return zerolog.ErrorLevel, nil
	case "fatal", "60":
		return zerolog.FatalLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("invalid log level %q (want trace, debug, info, warn, error or fatal)", s)
}

// bunyanHook adds the fields bunyan derives per record: the numeric level
// and the time (UTC, milliseconds, "Z").
type bunyanHook struct{ now func() time.Time }

func (h bunyanHook) Run(e *zerolog.Event, l zerolog.Level, _ string) {
	var b [24]byte
	e.Int("level", bunyanLevels[l]).
		Bytes("time", h.now().UTC().AppendFormat(b[:0], "2006-01-02T15:04:05.000Z"))
}

func init() {
	// The field names are zerolog's only global configuration; bunyan's
	// level and time are added by bunyanHook instead.
	zerolog.LevelFieldName = ""
	zerolog.TimestampFieldName = ""
	zerolog.MessageFieldName = "msg"
	zerolog.ErrorFieldName = "err"
	zerolog.DurationFieldUnit = time.Millisecond
}

// NewLogger returns the root logger: bunyan JSON records, one per line,
// with the core fields v, level, name, hostname, pid, time and msg.
func NewLogger(w io.Writer, level zerolog.Level, now func() time.Time) zerolog.Logger {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return zerolog.New(w).Level(level).Hook(bunyanHook{now: now}).With().
		Int("v", 0).
		Str("name", loggerName).
		Str("hostname", host).
		Int("pid", os.Getpid()).
		Logger()
}

// logBuffer bounds the records waiting to be written: 1 MiB, some 4000
// records, a burst of new clients' records while the reader is slow.
// More than that is dropped and counted, not queued: a log reader that
// stops reading must never stop DNS.
const logBuffer = 1 << 20

// Log is bbal's log output. Records are copied into a bounded buffer and
// written by one goroutine (writeLoop), so the code that logs, such as
// the UDP reader or a timer, never waits for the log's reader. When the
// buffer is full a record is dropped and counted, and a warning record
// saying how many were dropped ("log records dropped", with dropped) is
// written in their place once there is room. When a write to the output
// fails (the reader has exited: EPIPE) the records go to the fallback
// (stderr) from then on, after a record saying so; when that fails too,
// records are counted as lost. The writer goroutine sleeps when there is
// nothing to write: an idle log costs no CPU.
//
// Log is the io.Writer of its Logger, one record per Write.
type Log struct {
	Logger zerolog.Logger

	mu      sync.Mutex
	more    *sync.Cond // pending, dropped or closing changed
	pending []byte     // whole records, not yet taken by writeLoop
	spare   []byte     // the other buffer, while writeLoop writes
	dropped uint64     // records dropped since the last notice
	closing bool
	done    chan struct{} // writeLoop has returned

	outs    []io.Writer    // the output, then the fallback; the first one is in use
	notices zerolog.Logger // formats the writer's own records into notice
	notice  []byte

	full, failed atomic.Uint64
}

// NewLog starts a Log writing to out, and to fallback (which may be nil)
// once out fails. Close flushes it.
func NewLog(out, fallback io.Writer, level zerolog.Level, now func() time.Time) *Log {
	l := &Log{
		pending: make([]byte, 0, logBuffer),
		spare:   make([]byte, 0, logBuffer),
		done:    make(chan struct{}),
		outs:    []io.Writer{out},
	}
	if fallback != nil {
		l.outs = append(l.outs, fallback)
	}
	l.more = sync.NewCond(&l.mu)
	l.Logger = NewLogger(l, level, now)
	l.notices = NewLogger(noticeWriter{l}, zerolog.TraceLevel, now)
	go l.writeLoop()
	return l
}

// noticeWriter collects the Log's own records into l.notice; it is
// written to with l.mu held.
type noticeWriter struct{ l *Log }

func (w noticeWriter) Write(p []byte) (int, error) {
	w.l.notice = append(w.l.notice, p...)
	return len(p), nil
}

// Write queues one record. It never blocks on the output, and never fails:
// a record that does not fit is dropped and counted.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		l.failed.Add(1)
		return len(p), nil
	}
	// Once a record is dropped, the others are dropped too until the
	// notice is queued, so that it stands where they were.
	if l.dropped > 0 || len(l.pending)+len(p) > logBuffer {
		l.dropped++
		l.full.Add(1) // with dropped, for the notice's dropped_total
		l.mu.Unlock()
		return len(p), nil
	}
	l.pending = append(l.pending, p...)
	l.mu.Unlock()
	l.more.Signal()
	return len(p), nil
}

// writeLoop is the Log's writer goroutine: it takes what is pending,
// with the notice of what was dropped after it, and writes it out, until
// Close.
func (l *Log) writeLoop() {
	defer close(l.done)
	for {
		l.mu.Lock()
		for len(l.pending) == 0 && l.dropped == 0 && !l.closing {
			l.more.Wait()
		}
		if len(l.pending) == 0 && l.dropped == 0 {
			l.mu.Unlock()
			return
		}
		batch := l.pending
		l.pending = l.spare
		if l.dropped > 0 {
			l.notices.Warn().Uint64("dropped", l.dropped).Uint64("dropped_total", l.full.Load()).
				Msg("log records dropped")
			batch = append(batch, l.notice...)
			l.notice, l.dropped = l.notice[:0], 0
		}
		l.mu.Unlock()
		l.write(batch)
		l.mu.Lock()
		l.spare = batch[:0]
		l.mu.Unlock()
	}
}

// write writes whole records to the output in use; when it fails, the
// records not wholly written go to the fallback. Those that no output
// takes are counted as lost.
func (l *Log) write(batch []byte) {
	for len(batch) > 0 {
		if len(l.outs) == 0 {
			l.failed.Add(uint64(bytes.Count(batch, []byte{'\n'})))
			return
		}
		chunk := nextChunk(batch)
		n, err := l.outs[0].Write(chunk)
		if err == nil {
			batch = batch[len(chunk):]
			continue
		}
		batch = batch[bytes.LastIndexByte(chunk[:n], '\n')+1:]
		l.outs = l.outs[1:]
		if len(l.outs) > 0 {
			l.mu.Lock()
			l.notices.Error().Err(err).Msg("log output failed: writing to stderr")
			batch = append(slices.Clip(l.notice), batch...)
			l.notice = nil
			l.mu.Unlock()
		}
	}
}

// pipeBuf is PIPE_BUF: a write of at most this many bytes to a pipe is
// not interleaved with another process's. After a restart the old
// process and its successor share stdout.
const pipeBuf = 4096

// nextChunk returns the whole records at the start of b that fit in
// pipeBuf, or the first record if it alone is longer.
func nextChunk(b []byte) []byte {
	if len(b) <= pipeBuf {
		return b
	}
	if i := bytes.LastIndexByte(b[:pipeBuf], '\n'); i >= 0 {
		return b[:i+1]
	}
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i+1]
	}
	return b
}

// Drops returns the records dropped: while the buffer was full, and for
// want of an output that takes them (or logged after Close).
func (l *Log) Drops() debugapi.LogDrops {
	return debugapi.LogDrops{Full: l.full.Load(), WriteError: l.failed.Load()}
}

// ResetCounters sets the drop counters back to zero.
func (l *Log) ResetCounters() {
	l.full.Store(0)
	l.failed.Store(0)
}

// Close writes what is pending and stops the writer goroutine, waiting
// at most limit for the output to take it: a reader that has stopped
// reading does not hold up the exit. Records logged after Close are
// counted as lost.
func (l *Log) Close(limit time.Duration) {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.more.Signal()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-l.done:
	case <-t.C:
	}
}
