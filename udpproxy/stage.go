package udpproxy

import (
	"net/netip"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/udpproxy/cache"
)

// A reader stages the frames of a batch of datagrams, a stage per
// backend, in memory of its own, and queues each stage at the batch's
// end in one hold of the backend's queue lock (Backend.SendUDPBatch):
// readers of one address, sending to the same backends, meet on each
// backend's lock once a batch rather than once a datagram, and each
// stage's frames stay whole and together.

// stage is a reader's frames for one backend in the batch being read.
type stage struct {
	be      *backend.Backend
	buf     []byte  // the frames, back to back
	ends    []int32 // where each ends in buf
	queries []staged
}

// staged is what the batch's end needs of a staged query: to count it
// sent, or, refused by the queue, to take it off the record, answer it
// from the cache if it can, or count the drop.
type staged struct {
	key  uint64
	ck   cache.Key
	rem  *remotes.Remote
	from netip.AddrPort
	o    origin
	data []byte // the datagram's buffer past the frame header: the query, n bytes
	n    int
}

// stage returns l's stage for be in the batch being read.
func (l *listener) stage(be *backend.Backend) *stage {
	for i := range l.stages[:l.nstages] {
		if l.stages[i].be == be {
			return &l.stages[i]
		}
	}
	if l.nstages == len(l.stages) {
		l.stages = append(l.stages, stage{
			buf:     make([]byte, 0, batchLen*(protocol.UDPHeaderLen+128)),
			ends:    make([]int32, 0, batchLen),
			queries: make([]staged, 0, batchLen),
		})
	}
	st := &l.stages[l.nstages]
	l.nstages++
	st.be = be
	return st
}

func (st *stage) add(frame []byte, q staged) {
	st.buf = append(st.buf, frame...)
	st.ends = append(st.ends, int32(len(st.buf)))
	st.queries = append(st.queries, q)
}

func (st *stage) reset() {
	st.be, st.buf, st.ends = nil, st.buf[:0], st.ends[:0]
	clear(st.queries) // let go of the buffers and remotes
	st.queries = st.queries[:0]
}

// endBatch queues each of l's stages to its backend and writes it (one
// write per backend for the whole batch), then sends the answers from
// the cache (one sendmmsg).
func (p *Proxy) endBatch(l *listener, now int64) {
	for i := range l.stages[:l.nstages] {
		st := &l.stages[i]
		be := st.be
		n := be.SendUDPBatch(st.buf, st.ends, now)
		for j := range st.queries[:n] {
			q := &st.queries[j]
			q.rem.CountUDP()
			if p.tap != nil {
				p.tap.Query(q.from, l.local(&q.o), q.data[:q.n], now)
			}
		}
		for j := n; j < len(st.queries); j++ {
			p.refused(l, be, &st.queries[j], now)
		}
		if n > 0 {
			countSent(be, n)
		}
		be.Flush(now)
		st.reset()
	}
	l.nstages = 0
	if l.cached.n > 0 {
		l.cached.flush()
	}
}

// refused is a staged query be's queue did not take: it comes off the
// record, and is answered from the cache, stale if need be, when it can
// be; otherwise it is dropped, as stuck when be is ok and as down when
// not.
func (p *Proxy) refused(l *listener, be *backend.Backend, q *staged, now int64) {
	var a answered
	p.flights.take(q.key, &a)
	if q.ck.Hash != 0 && p.serveStale(l, q.data, q.n, &q.ck, be, q.from, &q.o, now) {
		return
	}
	q.rem.CountDrop()
	if be.OK() {
		p.drop(l, DropStuck)
	} else {
		p.drop(l, DropDown)
	}
}
