package remotes

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
)

// Defaults for the zero fields of Config.
const (
	DefaultRebalanceInterval = 15 * time.Second
	DefaultExpireInterval    = 30 * time.Second
	DefaultExpireAfter       = 5 * time.Minute
)

// Backends is what the table needs to know of the backends;
// *backend.Set provides it.
type Backends interface {
	// Status reports whether backend id serves its remotes now (ok),
	// and whether it is unknown or its socket was removed (gone).
	Status(id backend.ID) (ok, gone bool)
	// PickID chooses a backend for a new assignment; 0 when none is
	// eligible.
	PickID() backend.ID
	// EligibleIDs lists, in ID order, the backends that may be given
	// new remotes: those rebalancing spreads remotes over.
	EligibleIDs() []backend.ID
}

// Config configures a Table. Backends and Timeouts are required.
type Config struct {
	Backends          Backends
	Timeouts          *timeouts.Set
	Log               zerolog.Logger
	RebalanceInterval time.Duration
	ExpireInterval    time.Duration
	ExpireAfter       time.Duration
}

// Remote is one client address and its assignment.
type Remote struct {
	addr    uint32
	primary backend.ID
	backup  backend.ID
	first   uint32 // seconds since the table's epoch
	last    uint32

	udp   atomic.Uint64
	tcp   atomic.Uint64
	drops atomic.Uint64
}

// CountUDP records a datagram from the remote sent on to its backend.
func (r *Remote) CountUDP() { r.udp.Add(1) }

// CountTCP records a TCP connection from the remote proxied to its
// backend.
func (r *Remote) CountTCP() { r.tcp.Add(1) }

// CountDrop records a datagram or connection from the remote that could
// not be sent on.
func (r *Remote) CountDrop() { r.drops.Add(1) }

// entry is an item of the tree: the address inline, so that a search
// compares keys in the node's own memory and follows a pointer only to
// the remote it finds.
type entry struct {
	addr uint32
	r    *Remote
}

func lessEntry(a, b entry) bool { return a.addr < b.addr }

func key(ip uint32) entry { return entry{addr: ip} }

// Table maps client addresses to remotes. Create it with New.
type Table struct {
	cfg   Config
	log   zerolog.Logger
	clock timeouts.Clock
	epoch time.Time

	mu        sync.Mutex
	tree      *btree.BTreeG[entry]
	primaries map[backend.ID]int // remotes per primary backend
	backups   map[backend.ID]int // remotes per backup backend

	rebalanceT *timeouts.Timeout
	expireT    *timeouts.Timeout
	kick       chan func()
	done       chan struct{}
	wg         sync.WaitGroup
}

// New returns an empty table. Its maintenance starts with Start.
func New(cfg Config) *Table {
	if cfg.RebalanceInterval <= 0 {
		cfg.RebalanceInterval = DefaultRebalanceInterval
	}
	if cfg.ExpireInterval <= 0 {
		cfg.ExpireInterval = DefaultExpireInterval
	}
	if cfg.ExpireAfter <= 0 {
		cfg.ExpireAfter = DefaultExpireAfter
	}
	clock := cfg.Timeouts.Clock()
	t := &Table{
		cfg:       cfg,
		log:       cfg.Log,
		clock:     clock,
		epoch:     clock.Now(),
		tree:      btree.NewG(64, lessEntry),
		primaries: map[backend.ID]int{},
		backups:   map[backend.ID]int{},
		kick:      make(chan func(), 2),
		done:      make(chan struct{}),
	}
	t.rebalanceT = cfg.Timeouts.NewTimeout("remotes rebalance", func() { t.post(t.rebalanceTick) })
	t.expireT = cfg.Timeouts.NewTimeout("remotes expiry", func() { t.post(t.expireTick) })
	return t
}

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
	t.rebalanceT.Set(t.cfg.RebalanceInterval)
}

func (t *Table) expireTick() {
	t.Expire()
	t.expireT.Set(t.cfg.ExpireInterval)
}

func (t *Table) now() uint32 {
	return uint32(t.clock.Now().Sub(t.epoch) / time.Second)
}

// Route finds the remote for ip, creating it if it is new, marks it seen,
// and returns it with the backend to use (0 when no backend is ok).
func (t *Table) Route(ip uint32) (*Remote, backend.ID) {
	now := t.now()
	t.mu.Lock()
	e, found := t.tree.Get(key(ip))
	r := e.r
	if !found {
		r = &Remote{addr: ip, first: now}
		t.tree.ReplaceOrInsert(entry{ip, r})
		t.log.Info().Stringer("remote_ip", protocol.U32ToAddr(ip)).Msg("new remote peer")
	}
	r.last = now
	id := t.assign(r)
	t.mu.Unlock()
	return r, id
}

// assign applies the assignment rules of the package comment. t.mu is
// held.
func (t *Table) assign(r *Remote) backend.ID {
	b := t.cfg.Backends
	if r.primary != 0 {
		ok, gone := b.Status(r.primary)
		switch {
		case gone:
			t.reset(r)
		case ok:
			if r.backup != 0 {
				t.remoteLog(r).Uint16("be_id", uint16(r.primary)).Msg("remote assigned to original primary backend")
				t.setBackup(r, 0)
			}
			return r.primary
		default:
			if r.backup != 0 {
				if ok, _ := b.Status(r.backup); ok {
					return r.backup
				}
				t.setBackup(r, 0)
			}
			id := b.PickID()
			if id != 0 {
				t.remoteLog(r).Uint16("be_id", uint16(id)).Msg("remote assigned to new backup backend")
				t.setBackup(r, id)
			}
			return id
		}
	}
	id := b.PickID()
	if id != 0 {
		t.remoteLog(r).Uint16("be_id", uint16(id)).Msg("remote assigned to new primary backend")
		t.setPrimary(r, id)
	}
	t.setBackup(r, 0)
	return id
}

func (t *Table) remoteLog(r *Remote) *zerolog.Event {
	return t.log.Info().Stringer("remote_ip", protocol.U32ToAddr(r.addr))
}

// The per-backend counts change only here, with the assignment they
// count. t.mu is held.

func (t *Table) setPrimary(r *Remote, id backend.ID) {
	move(t.primaries, r.primary, id)
	r.primary = id
}

func (t *Table) setBackup(r *Remote, id backend.ID) {
	move(t.backups, r.backup, id)
	r.backup = id
}

// reset clears both of r's assignments.
func (t *Table) reset(r *Remote) {
	t.setPrimary(r, 0)
	t.setBackup(r, 0)
}

func move(counts map[backend.ID]int, from, to backend.ID) {
	if from != 0 {
		if counts[from]--; counts[from] <= 0 {
			delete(counts, from)
		}
	}
	if to != 0 {
		counts[to]++
	}
}

// Rebalance clears the assignment of enough remotes of the fullest ok
// backend to bring the spread down, as described in the package comment.
// It returns the number of remotes cleared.
func (t *Table) Rebalance() int {
	ok := t.cfg.Backends.EligibleIDs()
	if len(ok) == 0 {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	maxID, maxN, minN := ok[0], t.primaries[ok[0]], t.primaries[ok[0]]
	for _, id := range ok[1:] {
		n := t.primaries[id]
		if n > maxN {
			maxID, maxN = id, n
		}
		minN = min(minN, n)
	}
	spread := maxN - minN
	if e := t.log.Trace(); e != nil {
		e.Int("max_count", maxN).Int("min_count", minN).Uint16("max_be_id", uint16(maxID)).
			Int("spread", spread).Msg("balancer spread statistics")
	}
	if spread <= len(ok) {
		return 0
	}
	todo := spread - len(ok)
	cleared := 0
	t.tree.Ascend(func(e entry) bool {
		if r := e.r; r.primary == maxID {
			t.log.Info().Stringer("remote_ip", protocol.U32ToAddr(r.addr)).
				Uint16("be_id", uint16(maxID)).Msg("rebalancing to reduce spread")
			t.reset(r)
			cleared++
		}
		return cleared < todo
	})
	return cleared
}

// Expire forgets remotes not seen for ExpireAfter, returning how many.
func (t *Table) Expire() int {
	limit := uint32(t.cfg.ExpireAfter / time.Second)
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var stale []*Remote
	t.tree.Ascend(func(e entry) bool {
		if now-e.r.last > limit {
			stale = append(stale, e.r)
		}
		return true
	})
	for _, r := range stale {
		t.log.Info().Stringer("remote_ip", protocol.U32ToAddr(r.addr)).Msg("expiring remote entry")
		t.reset(r)
		t.tree.Delete(key(r.addr))
	}
	return len(stale)
}

// Len returns the number of remotes.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tree.Len()
}

// Counts is the number of remotes assigned to one backend.
type Counts struct {
	Primary int // remotes whose primary it is
	Backup  int // remotes it serves as a backup
}

// Counts returns the assignment counts of every backend that has any.
func (t *Table) Counts() map[backend.ID]Counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[backend.ID]Counts, len(t.primaries))
	for id, n := range t.primaries {
		c := out[id]
		c.Primary = n
		out[id] = c
	}
	for id, n := range t.backups {
		c := out[id]
		c.Backup = n
		out[id] = c
	}
	return out
}

// ResetCounters sets every remote's counters back to zero, a chunk of
// remotes at a time.
func (t *Table) ResetCounters() {
	const chunk = 4096
	next, more := uint32(0), true
	for more {
		t.mu.Lock()
		more = false
		n := 0
		t.tree.AscendGreaterOrEqual(key(next), func(e entry) bool {
			r := e.r
			if n == chunk {
				more, next = true, r.addr
				return false
			}
			r.udp.Store(0)
			r.tcp.Store(0)
			r.drops.Store(0)
			n++
			return true
		})
		t.mu.Unlock()
	}
}

// Info is a snapshot of one remote.
type Info struct {
	Addr      uint32
	Primary   backend.ID
	Backup    backend.ID
	UDP       uint64
	TCP       uint64
	Drops     uint64
	FirstSeen time.Time
	LastSeen  time.Time
}

// Lookup returns a snapshot of the remote for ip.
func (t *Table) Lookup(ip uint32) (Info, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.tree.Get(key(ip))
	if !ok {
		return Info{}, false
	}
	return t.info(e.r), true
}

func (t *Table) info(r *Remote) Info {
	return Info{
		Addr: r.addr, Primary: r.primary, Backup: r.backup,
		UDP: r.udp.Load(), TCP: r.tcp.Load(), Drops: r.drops.Load(),
		FirstSeen: t.epoch.Add(time.Duration(r.first) * time.Second),
		LastSeen:  t.epoch.Add(time.Duration(r.last) * time.Second),
	}
}

// Walk calls fn for each remote in address order, from the address from
// onwards, holding the lock for at most chunk remotes at a time so that a
// long walk does not stall the packet path. fn must not call the table.
func (t *Table) Walk(ctx context.Context, from uint32, fn func(Info) bool) {
	const chunk = 1024
	buf := make([]Info, 0, chunk)
	next, more := from, true
	for more && ctx.Err() == nil {
		buf = buf[:0]
		t.mu.Lock()
		more = false
		t.tree.AscendGreaterOrEqual(key(next), func(e entry) bool {
			if len(buf) == chunk {
				more = true
				next = e.addr
				return false
			}
			buf = append(buf, t.info(e.r))
			return true
		})
		t.mu.Unlock()
		for _, in := range buf {
			if !fn(in) {
				return
			}
		}
	}
}
