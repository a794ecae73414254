package backend

import "sync"

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

// queue is a backend's outgoing byte queue: frames are appended whole to
// one buffer, and the session's writer swaps that buffer for its spare and
// writes the lot in one call. Two buffers per backend, reused for the
// life of the process; nothing is allocated once they have grown.
//
// The cap is in bytes: when a frame does not fit, the backend is not
// keeping up and the frame is refused (the caller drops and counts it).
type queue struct {
	mu     sync.Mutex
	state  queueState
	buf    []byte
	frames int
	limit  int

	// kick has room for one token: the writer has work.
	kick chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, kick: make(chan struct{}, 1)}
}

// push appends frame if the queue accepts it. Data frames need an open
// queue; control frames (hello, heartbeat) need a session.
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
	select {
	case q.kick <- struct{}{}:
	default:
	}
	return pushed
}

// take hands the queued bytes to the writer in exchange for spare, its
// emptied previous batch.
func (q *queue) take(spare []byte) (batch []byte, frames int) {
	q.mu.Lock()
	batch, frames = q.buf, q.frames
	q.buf, q.frames = spare[:0], 0
	q.mu.Unlock()
	return batch, frames
}

// reset empties the queue and sets its state, returning the number of
// frames discarded.
func (q *queue) reset(s queueState) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.frames
	q.buf, q.frames, q.state = q.buf[:0], 0, s
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
