package remotes

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/bbal/bbal/backend"
)

// scanChunk is how many remotes a maintenance scan handles per hold of a
// shard's lock, so that a scan of a large table never stalls the packet
// path for long (the longest hold is measured: MaxPause); mergeChunk is
// how many an ordered walk (Walk) copies from a shard per hold.
const (
	scanChunk  = 1024
	mergeChunk = 64
)

func (t *Table) post(f func()) {
	select {
	case t.kick <- f:
	default:
	}
}

// Start runs rebalancing and expiry on the table's goroutine until Close.
func (t *Table) Start() {
	t.rebalanceT.Set(t.cfg.RebalanceInterval)
	t.expireT.Set(t.cfg.ExpireInterval)
	t.wg.Add(1)
	go t.maintain()
}

// Close stops maintenance and waits for it.
func (t *Table) Close() {
	t.rebalanceT.Clear()
	t.expireT.Clear()
	select {
	case <-t.done:
	default:
		close(t.done)
	}
	t.wg.Wait()
}

func (t *Table) maintain() {
	defer t.wg.Done()
	for {
		select {
		case <-t.done:
			return
		case f := <-t.kick:
			f()
		}
	}
}

func (t *Table) rebalanceTick() {
	t.Rebalance()
	t.rebalanceT.Again(t.cfg.RebalanceInterval)
}

func (t *Table) expireTick() {
	t.Expire()
	t.expireT.Again(t.cfg.ExpireInterval)
}

func (t *Table) now() uint32 {
	return uint32(t.clock.Now().Sub(t.epoch) / time.Second)
}

// Rebalance clears the assignment of enough remotes of the fullest
// eligible backend to bring the spread down, as described in the package
// comment, and sheds half the remotes of each backend found slow (rounded
// down: one stays, whose queries go on measuring it), which the spread
// then leaves out. It returns the number of remotes cleared.
func (t *Table) Rebalance() int {
	cleared := 0
	slow := t.cfg.Picker.CheckSlow()
	for _, id := range slow {
		t.cmu.Lock()
		n := t.primaries[id] / 2
		t.cmu.Unlock()
		cleared += t.shed(id, n, "rebalancing away from slow backend")
	}
	ok := slices.DeleteFunc(t.cfg.Picker.EligibleIDs(), func(id backend.ID) bool { return slices.Contains(slow, id) })
	if len(ok) == 0 {
		return cleared
	}
	// Each backend's count is compared per unit of its weight; with
	// equal weights, this is the original's spread.
	weights := make([]int, len(ok))
	total, sumW := 0, 0
	t.cmu.Lock()
	for i, id := range ok {
		weights[i] = max(t.cfg.Picker.Weight(id), 1)
		total += t.primaries[id]
		sumW += weights[i]
	}
	maxI, minI := 0, 0
	for i, id := range ok {
		if t.primaries[id]*weights[maxI] > t.primaries[ok[maxI]]*weights[i] {
			maxI = i
		}
		if t.primaries[id]*weights[minI] < t.primaries[ok[minI]]*weights[i] {
			minI = i
		}
	}
	maxID, maxN, minN := ok[maxI], t.primaries[ok[maxI]], t.primaries[ok[minI]]
	t.cmu.Unlock()
	spread := maxN - minN
	if slices.ContainsFunc(weights, func(w int) bool { return w != weights[0] }) {
		// Weighted: how far the fullest is over its share.
		spread = maxN - total*weights[maxI]/sumW
	}
	if e := t.log.Trace(); e != nil {
		e.Int("max_count", maxN).Int("min_count", minN).Uint16("max_be_id", uint16(maxID)).
			Int("spread", spread).Msg("balancer spread statistics")
	}
	if spread <= len(ok) {
		return cleared
	}
	return cleared + t.shed(maxID, spread-len(ok), "rebalancing to reduce spread")
}

// shed clears the assignment of up to n remotes whose primary is id.
func (t *Table) shed(id backend.ID, n int, msg string) int {
	cleared := 0
	if n <= 0 {
		return 0
	}
	t.scan(func(r *Remote) (stop bool) {
		if r.primary == id {
			if l := t.remoteLog(r); l != nil {
				l.Uint16("be_id", uint16(id)).Msg(msg)
			}
			t.cmu.Lock()
			t.reset(r)
			t.cmu.Unlock()
			cleared++
		}
		return cleared >= n
	}, nil)
	return cleared
}

// Expire forgets remotes not seen for ExpireAfter, returning how many.
func (t *Table) Expire() int {
	limit := uint32(t.cfg.ExpireAfter / time.Second)
	now := t.now()
	expired := 0
	var stale []*Remote
	t.scan(func(r *Remote) bool {
		if now-r.last.Load() > limit {
			stale = append(stale, r)
		}
		return false
	}, func(s *shard) {
		// At the end of each chunk, still under the shard's lock: its
		// tree may not change while it is being walked.
		t.cmu.Lock()
		for _, r := range stale {
			t.reset(r)
		}
		t.cmu.Unlock()
		for _, r := range stale {
			if l := t.remoteLog(r); l != nil {
				l.Msg("expiring remote entry")
			}
			t.standins.drop(r)
			s.tree.Delete(entry{addr: r.addr})
		}
		t.n.Add(-int64(len(stale)))
		expired += len(stale)
		stale = stale[:0]
	})
	return expired
}

// scan visits every remote, shard by shard, a chunk of scanChunk remotes
// per hold of a shard's lock, so that a scan of a large table never
// stalls the packet path for long: under the lock, visit for each remote
// of the chunk and then endChunk (if not nil) with the shard. The scan
// ends when visit returns true (stop), or at the last remote. The holds
// are measured (MaxPause).
func (t *Table) scan(visit func(*Remote) (stop bool), endChunk func(*shard)) {
	for i := range t.shards {
		s := &t.shards[i]
		next, more := addrKey{}, true
		for more {
			s.mu.Lock()
			start := time.Now()
			more = false
			n, stopped := 0, false
			s.tree.AscendGreaterOrEqual(entry{addr: next}, func(e entry) bool {
				if n == scanChunk {
					more, next = true, e.addr
					return false
				}
				n++
				if visit(e.r) {
					stopped = true
					return false
				}
				return true
			})
			if endChunk != nil {
				endChunk(s)
			}
			t.notePause(time.Since(start))
			s.mu.Unlock()
			if stopped {
				return
			}
		}
	}
}

func (t *Table) notePause(d time.Duration) {
	for {
		old := t.maxPause.Load()
		if int64(d) <= old || t.maxPause.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// MaxPause returns the longest time a maintenance scan has held the
// table's lock (and so kept the packet path waiting).
func (t *Table) MaxPause() time.Duration { return time.Duration(t.maxPause.Load()) }

// ResetCounters sets every remote's counters back to zero, a chunk of
// remotes at a time, and the table's own (Unpinned, NoStandin).
func (t *Table) ResetCounters() {
	t.scan(func(r *Remote) bool {
		r.udp.Store(0)
		r.tcp.Store(0)
		r.drops.Store(0)
		return false
	}, nil)
	t.unpinned.Store(0)
	t.standins.refused.Store(0)
}

// Walk calls fn for each remote in address order (that of their IPv6
// forms), from the address from onwards (all of them when from is the
// zero Addr), merging the shards' orders: it copies up to mergeChunk
// remotes of a shard per hold of its lock, and hands them to fn after
// the lock is released, so that a long walk does not stall the packet
// path. fn must not call the table.
func (t *Table) Walk(ctx context.Context, from netip.Addr, fn func(Info) bool) {
	if ctx.Err() != nil {
		return
	}
	var cur [shardCount]cursor
	start := keyOf(from)
	if !from.IsValid() {
		start = addrKey{}
	}
	for i := range cur {
		cur[i] = cursor{s: &t.shards[i], next: start, more: true}
		t.fill(&cur[i])
	}
	for {
		min := -1
		for i := range cur {
			c := &cur[i]
			if len(c.buf) == 0 && c.more {
				if ctx.Err() != nil {
					return
				}
				t.fill(c)
			}
			if len(c.buf) > 0 && (min < 0 || c.buf[0].key.less(cur[min].buf[0].key)) {
				min = i
			}
		}
		if min < 0 {
			return
		}
		c := &cur[min]
		in := c.buf[0].Info
		c.buf = c.buf[1:]
		if !fn(in) {
			return
		}
	}
}

// cursor is a shard's place in an ordered walk: the remotes copied and
// not yet handed on, and the key to copy from next.
type cursor struct {
	s     *shard
	buf   []keyedInfo // the copied remotes not yet handed on
	store []keyedInfo // buf's memory
	next  addrKey
	more  bool
}

type keyedInfo struct {
	key addrKey
	Info
}

// fill copies up to mergeChunk remotes from c's shard, from c.next on.
func (t *Table) fill(c *cursor) {
	if c.store == nil {
		c.store = make([]keyedInfo, 0, mergeChunk)
	}
	buf := c.store[:0]
	c.more = false
	c.s.mu.Lock()
	c.s.tree.AscendGreaterOrEqual(entry{addr: c.next}, func(e entry) bool {
		if len(buf) == mergeChunk {
			c.more, c.next = true, e.addr
			return false
		}
		buf = append(buf, keyedInfo{e.addr, t.info(e.r)})
		return true
	})
	c.s.mu.Unlock()
	c.buf = buf
}
