package backend

import (
	"encoding/binary"
	"sync"

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
// The cap is in bytes: when a frame does not fit, the backend is not
// keeping up and the frame is refused (the caller drops and counts it).
type queue struct {
	mu      sync.Mutex
	state   queueState
	buf     []byte
	spare   []byte
	frames  int
	limit   int
	writing bool
	epoch   uint64 // counts resets: a write from before one is stale

	// kick has room for one token: the writer goroutine has work.
	kick chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, kick: make(chan struct{}, 1)}
}

// push appends frame if the queue accepts it. Data frames need an open
// queue; control frames (hello, heartbeat) need a session. Control frames
// wake the writer goroutine; data frames wait for Flush.
func (q *queue) push(frame []byte, control bool) pushResult {
	q.mu.Lock()
	switch {
	case q.state == queueClosed || (!control && q.state != queueOpen):
		q.mu.Unlock()
		return pushDown
	case len(q.buf)+len(frame) > q.limit:
		q.mu.Unlock()
		return pushStuck
	}
	q.buf = append(q.buf, frame...)
	q.frames++
	q.mu.Unlock()
	if control {
		q.wake()
	}
	return pushed
}

// wake hands the queue to the writer goroutine.
func (q *queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// take makes the caller the writer and hands it the queued bytes, with
// the queue's epoch for done. It returns nil when another writer is at
// work or nothing is queued.
func (q *queue) take() ([]byte, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.writing || len(q.buf) == 0 || q.state == queueClosed {
		return nil, 0
	}
	q.writing = true
	b := q.buf
	q.buf, q.spare = q.spare[:0], nil
	q.frames = 0
	return b, q.epoch
}

// done ends a write of b, taken at epoch, of which n bytes were written:
// the rest goes back to the front of the queue, and b becomes the spare.
// A write from before a reset is over and done with: its rest is
// dropped, so that nothing of an old session reaches a new one. done
// reports whether anything is left to write.
func (q *queue) done(b []byte, n int, epoch uint64) (more bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if epoch != q.epoch {
		if q.spare == nil {
			q.spare = b[:0]
		}
		return false
	}
	q.writing = false
	if n < len(b) {
		// The unwritten rest, then what was queued meanwhile.
		q.frames += unfinished(b, n)
		m := copy(b, b[n:])
		b = append(b[:m], q.buf...)
		q.buf, b = b, q.buf
	}
	q.spare = b[:0]
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
	n := q.frames
	q.buf, q.frames, q.state = q.buf[:0], 0, s
	q.writing = false
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

// length returns the queued bytes and frames.
func (q *queue) length() (bytes, frames int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buf), q.frames
}
