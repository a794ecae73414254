package remotes

import (
	"cmp"
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
	// DefaultMaxRemotes bounds the table: about 100 MB at some 100
	// bytes per remote.
	DefaultMaxRemotes = 1_000_000
)

// scanChunk is how many remotes a maintenance scan handles per hold of
// the lock, so that a scan of a large table never stalls the packet path
// for long (the longest hold is measured: MaxPause).
const scanChunk = 1024

// Per-remote log records (new remote, assignments, rebalancing, expiry)
// are limited to remoteLogBurst per remoteLogInterval, so that a flood of
// new (spoofed) sources cannot flood the log; the next record says how
// many were not written.
const (
	remoteLogBurst    = 1000
	remoteLogInterval = 5 * time.Second
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
	// HashID chooses an eligible backend by a hash of a client's
	// address, for clients the full table cannot pin; 0 when none is
	// eligible. The same hash gives the same backend while the set of
	// eligible backends stays the same.
	HashID(h uint32) backend.ID
}

// Config configures a Table. Backends and Timeouts are required.
type Config struct {
	Backends          Backends
	Timeouts          *timeouts.Set
	Log               zerolog.Logger
	RebalanceInterval time.Duration
	ExpireInterval    time.Duration
	ExpireAfter       time.Duration
	// MaxRemotes bounds the table (DefaultMaxRemotes when zero). When it
	// is full, a new client is served by a hash of its address over the
	// eligible backends, without a record, and counted (Unpinned).
	MaxRemotes int
	// PrefixBits pins clients by network rather than by address: with
	// 24, every address of a /24 is one remote (like ipvsadm's
	// netmask). 0 means 32.
	PrefixBits int
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

	mask     uint32 // applied to an address to make its key
	overflow Remote // counts for clients served without a record
	unpinned atomic.Uint64
	maxPause atomic.Int64 // nanoseconds, the longest hold of mu by a scan
	logLimit *timeouts.Limiter
	fullLog  *timeouts.Limiter

	rebalanceT *timeouts.Timeout
	expireT    *timeouts.Timeout
	kick       chan func()
	done       chan struct{}
	wg         sync.WaitGroup
}

// New returns an empty table. Its maintenance starts with Start.
func New(cfg Config) *Table {
	cfg.RebalanceInterval = cmp.Or(cfg.RebalanceInterval, DefaultRebalanceInterval)
	cfg.ExpireInterval = cmp.Or(cfg.ExpireInterval, DefaultExpireInterval)
	cfg.ExpireAfter = cmp.Or(cfg.ExpireAfter, DefaultExpireAfter)
	cfg.MaxRemotes = cmp.Or(cfg.MaxRemotes, DefaultMaxRemotes)
	if cfg.PrefixBits <= 0 || cfg.PrefixBits > 32 {
		cfg.PrefixBits = 32
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
		mask:      ^uint32(0) << (32 - cfg.PrefixBits),
		logLimit:  timeouts.NewBurstLimiter(clock, remoteLogInterval, remoteLogBurst),
		fullLog:   timeouts.NewLimiter(clock, 5*time.Second),
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

// Route finds the remote for ip (its network, with PrefixBits), creating
// it if it is new, marks it seen, and returns it with the backend to use
// (0 when no backend is ok). When the table is full, a new client gets
// no record: it is served by HashID, and the Remote returned is the
// shared one that counts such clients.
func (t *Table) Route(ip uint32) (*Remote, backend.ID) {
	return t.RouteAt(ip, t.clock.Now().UnixNano())
}

// RouteAt is Route for a caller that has read the clock already (the UDP
// reader reads it once per batch of datagrams): now is in unix
// nanoseconds.
func (t *Table) RouteAt(ip uint32, now int64) (*Remote, backend.ID) {
	return t.route(ip, uint32(max(now-t.epoch.UnixNano(), 0)/int64(time.Second)))
}

func (t *Table) route(ip, now uint32) (*Remote, backend.ID) {
	k := ip & t.mask
	t.mu.Lock()
	e, found := t.tree.Get(key(k))
	r := e.r
	if !found {
		if t.tree.Len() >= t.cfg.MaxRemotes {
			t.mu.Unlock()
			return t.unpinnedRoute(k)
		}
		r = &Remote{addr: k, first: now}
		t.tree.ReplaceOrInsert(entry{k, r})
		if l := t.remoteLog(r); l != nil {
			l.Msg("new remote peer")
		}
	}
	r.last = now
	id := t.assign(r)
	t.mu.Unlock()
	return r, id
}

// unpinnedRoute serves a client the full table cannot record.
func (t *Table) unpinnedRoute(k uint32) (*Remote, backend.ID) {
	t.unpinned.Add(1)
	if ok, held := t.fullLog.Allow(); ok {
		t.log.Warn().Int("max_remotes", t.cfg.MaxRemotes).Int64("suppressed", held).
			Msg("remotes table full: new clients served by address hash")
	}
	return &t.overflow, t.cfg.Backends.HashID(hash(k))
}

// hash mixes an address so that neighbouring addresses spread (the
// finaliser of MurmurHash3).
func hash(k uint32) uint32 {
	k ^= k >> 16
	k *= 0x85ebca6b
	k ^= k >> 13
	k *= 0xc2b2ae35
	k ^= k >> 16
	return k
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
				if l := t.remoteLog(r); l != nil {
					l.Uint16("be_id", uint16(r.primary)).Msg("remote assigned to original primary backend")
				}
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
				if l := t.remoteLog(r); l != nil {
					l.Uint16("be_id", uint16(id)).Msg("remote assigned to new backup backend")
				}
				t.setBackup(r, id)
			}
			return id
		}
	}
	id := b.PickID()
	if id != 0 {
		if l := t.remoteLog(r); l != nil {
			l.Uint16("be_id", uint16(id)).Msg("remote assigned to new primary backend")
		}
		t.setPrimary(r, id)
	}
	t.setBackup(r, 0)
	return id
}

// remoteLog starts an info record about r, or returns nil when per-remote
// records are over their limit (or info is off).
func (t *Table) remoteLog(r *Remote) *zerolog.Event {
	if t.log.GetLevel() > zerolog.InfoLevel {
		return nil
	}
	ok, held := t.logLimit.Allow()
	if !ok {
		return nil
	}
	e := t.log.Info().Stringer("remote_ip", protocol.U32ToAddr(r.addr))
	if held > 0 {
		e = e.Int64("suppressed", held)
	}
	return e
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

// Rebalance clears the assignment of enough remotes of the fullest
// eligible backend to bring the spread down, as described in the package
// comment. It returns the number of remotes cleared.
func (t *Table) Rebalance() int {
	ok := t.cfg.Backends.EligibleIDs()
	if len(ok) == 0 {
		return 0
	}
	t.mu.Lock()
	maxID, maxN, minN := ok[0], t.primaries[ok[0]], t.primaries[ok[0]]
	for _, id := range ok[1:] {
		n := t.primaries[id]
		if n > maxN {
			maxID, maxN = id, n
		}
		minN = min(minN, n)
	}
	t.mu.Unlock()
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
	t.scan(func(r *Remote) (stop bool) {
		if r.primary == maxID {
			if l := t.remoteLog(r); l != nil {
				l.Uint16("be_id", uint16(maxID)).Msg("rebalancing to reduce spread")
			}
			t.reset(r)
			cleared++
		}
		return cleared >= todo
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
			t.tree.Delete(key(r.addr))
		}
		expired += len(stale)
		stale = stale[:0]
	})
	return expired
}

// scan visits every remote in address order, scanChunk at a time, each
// chunk under the lock, calling endChunk (if not nil) at the end of each
// chunk before the lock is released. It stops when visit returns true.
func (t *Table) scan(visit func(*Remote) (stop bool), endChunk func()) {
	next, more := uint32(0), true
	for more {
		t.mu.Lock()
		start := time.Now()
		more = false
		n := 0
		stopped := false
		t.tree.AscendGreaterOrEqual(key(next), func(e entry) bool {
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
			endChunk()
		}
		t.notePause(time.Since(start))
		t.mu.Unlock()
		if stopped {
			return
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

// Unpinned returns the number of datagrams and connections from clients
// the full table could not record.
func (t *Table) Unpinned() uint64 { return t.unpinned.Load() }

// MaxRemotes returns the table's bound.
func (t *Table) MaxRemotes() int { return t.cfg.MaxRemotes }

// Restore adds a remote as a predecessor process had it: its
// assignments, counters and times (kept to the second; times before the
// table's epoch are clamped to it). It is for a fresh table, before
// traffic; an existing remote for the address is left alone.
func (t *Table) Restore(in Info) {
	sec := func(tm time.Time) uint32 {
		if d := tm.Sub(t.epoch); d > 0 {
			return uint32(d / time.Second)
		}
		return 0
	}
	k := in.Addr & t.mask
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tree.Has(key(k)) || t.tree.Len() >= t.cfg.MaxRemotes {
		return
	}
	r := &Remote{addr: k, first: sec(in.FirstSeen), last: sec(in.LastSeen)}
	r.udp.Store(in.UDP)
	r.tcp.Store(in.TCP)
	r.drops.Store(in.Drops)
	t.setPrimary(r, in.Primary)
	t.setBackup(r, in.Backup)
	t.tree.ReplaceOrInsert(entry{k, r})
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
	t.scan(func(r *Remote) bool {
		r.udp.Store(0)
		r.tcp.Store(0)
		r.drops.Store(0)
		return false
	}, nil)
	t.unpinned.Store(0)
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

// Lookup returns a snapshot of the remote for ip (its network, with
// PrefixBits).
func (t *Table) Lookup(ip uint32) (Info, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.tree.Get(key(ip & t.mask))
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
