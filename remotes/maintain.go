package remotes

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/bbal/bbal/backend"
)

// scanChunk is how many remotes a walk of the table (a maintenance scan,
// or Walk) handles per hold of the lock, so that a walk of a large table
// never stalls the packet path for long (the longest hold of a scan is
// measured: MaxPause).
const scanChunk = 1024

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
		t.mu.Lock()
		n := t.primaries[id] / 2
		t.mu.Unlock()
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
	t.mu.Lock()
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
	t.mu.Unlock()
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
			t.reset(r)
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
		if now-r.last > limit {
			stale = append(stale, r)
		}
		return false
	}, func() {
		// At the end of each chunk, still under the lock: the tree
		// may not change while it is being walked.
		for _, r := range stale {
			if l := t.remoteLog(r); l != nil {
				l.Msg("expiring remote entry")
			}
			t.reset(r)
			t.standins.drop(r)
			t.tree.Delete(entry{addr: r.addr})
		}
		expired += len(stale)
		stale = stale[:0]
	})
	return expired
}

// A walk visits the remotes in address order from the key from, a chunk
// of scanChunk remotes per hold of the lock, so that a walk of a large
// table never stalls the packet path for long: under the lock, visit
// for each remote of the chunk and then endChunk (if not nil); after the
// lock is released, between (if not nil). The walk ends when visit
// returns true (stop) or between returns false (no more), or at the last
// remote. A maintenance walk's holds of the lock are measured
// (MaxPause).
type walk struct {
	from        addrKey
	visit       func(*Remote) (stop bool)
	endChunk    func()
	between     func() (more bool)
	maintenance bool
}

// walk runs w over the table.
func (t *Table) walk(w walk) {
	next, more := w.from, true
	for more {
		t.mu.Lock()
		start := time.Now()
		more = false
		n := 0
		stopped := false
		t.tree.AscendGreaterOrEqual(entry{addr: next}, func(e entry) bool {
			if n == scanChunk {
				more, next = true, e.addr
				return false
			}
			n++
			if w.visit(e.r) {
				stopped = true
				return false
			}
			return true
		})
		if w.endChunk != nil {
			w.endChunk()
		}
		if w.maintenance {
			t.notePause(time.Since(start))
		}
		t.mu.Unlock()
		if stopped || w.between != nil && !w.between() {
			return
		}
	}
}

// scan is a maintenance walk of every remote.
func (t *Table) scan(visit func(*Remote) (stop bool), endChunk func()) {
	t.walk(walk{visit: visit, endChunk: endChunk, maintenance: true})
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

// Walk calls fn for each remote in address order (that of their IPv6 forms),
// from the address from onwards (all of them when from is the zero
// Addr), holding the lock for at most a chunk of remotes at a time so
// that a long walk does not stall the packet path: a chunk's remotes are
// copied under the lock and handed to fn after it is released. fn must
// not call the table.
func (t *Table) Walk(ctx context.Context, from netip.Addr, fn func(Info) bool) {
	if ctx.Err() != nil {
		return
	}
	buf := make([]Info, 0, scanChunk)
	t.walk(walk{
		from: keyOf(from),
		visit: func(r *Remote) bool {
			buf = append(buf, t.info(r))
			return false
		},
		between: func() bool {
			for _, in := range buf {
				if !fn(in) {
					return false
				}
			}
			buf = buf[:0]
			return ctx.Err() == nil
		},
	})
}
