package backend

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/bbal/bbal/protocol"
)

// queueState says what a queue accepts.
type queueState uint8

const (
	queueClosed  queueState = iota // no session: everything is refused
	queueControl                   // session open, no SERVER_HELLO yet: control frames only
	queueOpen                      // backend ok: control and data frames
)

// Push outcomes.
type pushResult uint8

const (
	pushed    pushResult = iota
	pushDown             // the backend has no ready session
	pushStuck            // the queue is full: the backend is not draining it
)

// mark records where a queued frame starts and when it was queued. A
// kept frame never expires: a control frame, or the rest of a frame
// partly written.
type mark struct {
	off  int32
	keep bool
	at   int64 // unix nanoseconds
}

// queue is a backend's outgoing byte queue. Frames are appended whole to
// one buffer; whoever writes to the socket takes the buffer in exchange
// for the spare one and writes it all in one call. Two buffers per
// backend, reused for the life of the process: nothing is allocated once
// they have grown.
//
// One writer at a time owns the socket (writing is set). That is usually
// the UDP reader, which writes what it queued at the end of each batch of
// datagrams without blocking ([Backend.Flush]); when the socket is full,
// the rest goes back to the front of the queue and the session's writer
// goroutine, which may block, takes over.
//
// The queue is bounded in bytes and in frames, counting the batch being
// written until it is done: when a frame does not fit,
// the backend is not keeping up and the frame is refused (the caller drops
// and counts it as stuck). A data frame that has waited longer than maxAge
// when a writer takes the queue is dropped (counted as expired) rather
// than written: its client has given up on it.
type queue struct {
	mu         sync.Mutex
	state      queueState
	buf        []byte
	marks      []mark
	spare      []byte
	spareMarks []mark

	limit     int   // bytes
	maxFrames int   // frames
	maxAge    int64 // nanoseconds; 0: none
	writing   bool
	// The batch a writer holds counts against the caps until done, so
	// that its unwritten rest and what was queued meanwhile still fit.
	outBytes, outFrames int
	epoch               uint64 // counts resets: a write from before one is stale
	// since is when a writer last began a write with no progress made
	// since (unix nanoseconds; 0: none waiting): how long the session
	// has not taken what is queued for it.
	since int64

	// kick has room for one token: the writer goroutine has work.
	kick chan struct{}
}

func newQueue(limit, maxFrames int, maxAge int64) *queue {
	return &queue{limit: limit, maxFrames: maxFrames, maxAge: maxAge, kick: make(chan struct{}, 1)}
}

// push appends frame, queued at now (unix nanoseconds), if the queue
// accepts it. Data frames need an open queue; control frames (hello,
// heartbeat) need a session, never expire, and wake the writer goroutine;
// data frames wait for Flush.
func (q *queue) push(frame []byte, control bool, now int64) pushResult {
	q.mu.Lock()
	switch {
	case q.state == queueClosed || (!control && q.state != queueOpen):
		q.mu.Unlock()
		return pushDown
	case q.outBytes+len(q.buf)+len(frame) > q.limit || q.outFrames+len(q.marks) >= q.maxFrames:
		q.mu.Unlock()
		return pushStuck
	}
	m := mark{off: int32(len(q.buf)), keep: control, at: now}
	q.marks = append(q.marks, m)
	q.buf = append(q.buf, frame...)
	q.mu.Unlock()
	if control {
		q.wake()
	}
	return pushed
}

// pushBatch appends data frames, back to back in frames, frame i ending
// at ends[i], queued at now: as many of them, from the first, as the
// queue accepts, all in one hold of its lock and one copy. It returns
// how many, and why the rest were refused.
func (q *queue) pushBatch(frames []byte, ends []int32, now int64) (int, pushResult) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != queueOpen {
		return 0, pushDown
	}
	room := q.limit - q.outBytes - len(q.buf)
	roomFrames := q.maxFrames - q.outFrames - len(q.marks)
	n := 0
	for n < len(ends) && n < roomFrames && int(ends[n]) <= room {
		n++
	}
	if n == 0 {
		return 0, pushStuck
	}
	base, start := int32(len(q.buf)), int32(0)
	for _, end := range ends[:n] {
		q.marks = append(q.marks, mark{off: base + start, at: now})
		start = end
	}
	q.buf = append(q.buf, frames[:start]...)
	if n < len(ends) {
		return n, pushStuck
	}
	return n, pushed
}

// wake hands the queue to the writer goroutine.
func (q *queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// batch is what a writer takes from the queue: buf[off:] to write. The
// whole buffer and the epoch go back to the queue with done.
type batch struct {
	buf   []byte
	off   int
	epoch uint64
}

func (b batch) bytes() []byte { return b.buf[b.off:] }

// take makes the caller the writer and hands it the queued bytes, after
// dropping the data frames at the front that are older than maxAge at now
// (their number is returned). ok is false when another writer is at work
// or nothing is left to write.
func (q *queue) take(now int64) (b batch, expired int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.writing || len(q.buf) == 0 || q.state == queueClosed {
		return batch{}, 0, false
	}
	if q.maxAge > 0 {
		for expired < len(q.marks) && !q.marks[expired].keep && now-q.marks[expired].at > q.maxAge {
			expired++
		}
	}
	b = batch{buf: q.buf, off: len(q.buf), epoch: q.epoch}
	if expired < len(q.marks) {
		b.off = int(q.marks[expired].off)
	}
	q.buf, q.spare = q.spare[:0], nil
	q.marks, q.spareMarks = q.spareMarks[:0], q.marks
	if b.off == len(b.buf) { // all of it expired
		q.spare = b.buf[:0]
		return batch{}, expired, false
	}
	q.writing = true
	q.outBytes, q.outFrames = len(b.buf)-b.off, len(q.spareMarks)-expired
	if q.since == 0 {
		q.since = now
	}
	return b, expired, true
}

// done ends the write of b, of which n bytes were written: the rest goes
// back to the front of the queue (never to expire: a frame begun must be
// finished), and the buffer becomes the spare. A write from before a reset
// is over and done with: its rest is dropped, so that nothing of an old
// session reaches a new one. done reports whether anything is left to
// write.
func (q *queue) done(b batch, n int) (more bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.epoch != q.epoch {
		if q.spare == nil {
			q.spare = b.buf[:0]
		}
		return false
	}
	q.writing = false
	q.outBytes, q.outFrames = 0, 0
	if n > 0 {
		q.since = 0
	}
	full, written := b.buf, b.buf[b.off:]
	if n < len(written) {
		// The unwritten rest, then what was queued meanwhile.
		rest := len(written) - n
		k := unfinished(written, n)
		copy(full, written[n:])
		full = append(full[:rest], q.buf...)
		marks := q.spareMarks[:0]
		for range k {
			marks = append(marks, mark{keep: true})
		}
		for _, m := range q.marks {
			m.off += int32(rest)
			marks = append(marks, m)
		}
		q.buf, full = full, q.buf
		q.marks, q.spareMarks = marks, q.marks
	}
	q.spare = full[:0]
	return len(q.buf) > 0
}

// unfinished counts the frames of b (a queue's bytes, which begin at a
// frame boundary) that do not lie wholly in its first n bytes.
func unfinished(b []byte, n int) int {
	count, off := 0, 0
	for off+protocol.TypeLen <= len(b) {
		l := protocol.TypeLen
		switch protocol.FrameType(binary.LittleEndian.Uint32(b[off:])) {
		case protocol.FrameInboundUDP:
			if off+protocol.UDPHeaderLen <= len(b) {
				l = protocol.UDPHeaderLen + int(binary.LittleEndian.Uint32(b[off+12:]))
			}
		case protocol.FrameInboundTCP:
			l = protocol.InboundTCPLen
		}
		if off+l > n {
			count++
		}
		off += l
	}
	return count
}

// reset empties the queue and sets its state, returning the number of
// frames discarded. A write under way finishes on its own (its socket is
// being closed) and its rest is dropped by done.
func (q *queue) reset(s queueState) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.marks)
	q.buf, q.marks, q.state = q.buf[:0], q.marks[:0], s
	q.writing = false
	q.outBytes, q.outFrames = 0, 0
	q.since = 0
	q.epoch++
	select {
	case <-q.kick:
	default:
	}
	return n
}

// open lets data frames in, once the backend is ok.
func (q *queue) open() {
	q.mu.Lock()
	q.state = queueOpen
	q.mu.Unlock()
}

// waiting returns how long, at now, the queue has held bytes that the
// session would not take: since a write began after the last one that
// made progress. 0 when nothing waits.
func (q *queue) waiting(now int64) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.since == 0 || q.state == queueClosed {
		return 0
	}
	return time.Duration(max(now-q.since, 0))
}

// length returns the bytes and frames queued or being written.
func (q *queue) length() (bytes, frames int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.outBytes + len(q.buf), q.outFrames + len(q.marks)
}
