package remotes

import (
	"cmp"
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
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

// Backends is what the table reads of the backends' state, for every
// packet; *backend.Set provides it.
type Backends interface {
	// Status reports whether backend id serves its remotes now (ok),
	// and whether it is unknown or its socket was removed (gone).
	Status(id backend.ID) (ok, gone bool)
}

// Picker is the placement the table consults: which backend a remote is
// given, and which backends rebalancing spreads remotes over.
// *placement.Picker over the backend.Set provides it.
type Picker interface {
	// Pick chooses a backend for a new assignment; 0 when none is
	// eligible. primaries counts the remotes whose primary each backend
	// is; it is only read, during the call.
	Pick(primaries map[backend.ID]int) backend.ID
	// Weight returns backend id's weight: its share of remotes relative
	// to the others'.
	Weight(id backend.ID) int
	// CheckSlow returns the backends found answering far slower than
	// their peers, whose remotes rebalancing sheds.
	CheckSlow() []backend.ID
	// EligibleIDs lists, in ID order, the backends that may be given
	// new remotes: those rebalancing spreads remotes over.
	EligibleIDs() []backend.ID
	// HashID chooses an eligible backend by a hash of a client's
	// address, for clients the full table cannot pin; 0 when none is
	// eligible. The same hash gives the same backend while the set of
	// eligible backends stays the same.
	HashID(h uint32) backend.ID
}

// Config configures a Table. Backends, Picker and Timeouts are required.
type Config struct {
	Backends          Backends
	Picker            Picker
	Timeouts          *timeouts.Set
	Log               zerolog.Logger
	RebalanceInterval time.Duration
	ExpireInterval    time.Duration
	ExpireAfter       time.Duration
	// MaxRemotes bounds the table (DefaultMaxRemotes when zero). When it
	// is full, a new client is served by a hash of its address over the
	// eligible backends, without a record, and counted (Unpinned).
	MaxRemotes int
	// PrefixBits pins IPv4 clients by network rather than by address:
	// with 24, every address of a /24 is one remote (like ipvsadm's
	// netmask). 0 means 32. IPv6 clients are pinned by address.
	PrefixBits int
	// Standins is the IPv4 range from which IPv6 clients are given
	// their stand-in addresses (DefaultStandins when not usable: see
	// StandinRange). Its
	// first two addresses are reserved for bbal's own use (see
	// ProbeSource), and no IPv4 client within it is served.
	Standins netip.Prefix
}

// DefaultStandins is the default stand-in range: 240.0.0.0/4, reserved
// since RFC 1112 and never the source of a real datagram.
var DefaultStandins = netip.MustParsePrefix("240.0.0.0/4")

// StandinRange returns the stand-in range a Table configured with p
// uses: p masked, or DefaultStandins unless p is an IPv4 prefix of /30
// or shorter.
func StandinRange(p netip.Prefix) netip.Prefix {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 {
		return DefaultStandins
	}
	return p.Masked()
}

// ProbeSource returns the reserved address of the stand-in range that
// bbal's own queries (health probes) come from: its second address.
func ProbeSource(standins netip.Prefix) netip.Addr { return standins.Masked().Addr().Next() }

// Remote is one client address and its assignment.
type Remote struct {
	addr    addrKey
	standin uint32 // an IPv6 remote's stand-in IPv4 address; 0 for IPv4
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
	addr addrKey
	r    *Remote
}

func lessEntry(a, b entry) bool {
	return a.addr.hi < b.addr.hi || a.addr.hi == b.addr.hi && a.addr.lo < b.addr.lo
}

func key(ip netip.Addr) entry { return entry{addr: keyOf(ip)} }

// addrKey is an address as the tree orders it: the 128 bits of its IPv6
// form (an IPv4 address as IPv4-mapped), which compare faster and take
// less room than a netip.Addr.
type addrKey struct{ hi, lo uint64 }

func keyOf(ip netip.Addr) addrKey {
	if ip.Is4() {
		return addrKey{0, 0xffff<<32 | uint64(protocol.AddrToU32(ip))}
	}
	b := ip.As16()
	return addrKey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// Addr returns the address k is the key of.
func (k addrKey) Addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.AddrFrom16(b).Unmap()
}

func (k addrKey) String() string { return k.Addr().String() }

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

	mask     uint32 // applied to an IPv4 address to make its key
	overflow Remote // counts for clients served without a record
	unpinned atomic.Uint64
	maxPause atomic.Int64 // nanoseconds, the longest hold of mu by a scan
	logLimit *timeouts.Limiter
	fullLog  *timeouts.Limiter

	// Stand-ins of IPv6 remotes: the range (first, size), and the
	// reverse map, which the reply path reads under its own lock.
	sFirst    uint32
	sSize     uint32
	smu       sync.RWMutex
	standins  map[uint32]netip.Addr
	noStandin atomic.Uint64

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
	cfg.Standins = StandinRange(cfg.Standins)
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
		sFirst:    protocol.AddrToU32(cfg.Standins.Addr()),
		sSize:     uint32(1) << (32 - cfg.Standins.Bits()),
		standins:  map[uint32]netip.Addr{},
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
	t.rebalanceT.Again(t.cfg.RebalanceInterval)
}

func (t *Table) expireTick() {
	t.Expire()
	t.expireT.Again(t.cfg.ExpireInterval)
}

func (t *Table) now() uint32 {
	return uint32(t.clock.Now().Sub(t.epoch) / time.Second)
}

// Route finds the remote for ip (its network, with PrefixBits), creating
// it if it is new, marks it seen, and returns it with the backend to use
// (0 when no backend is ok) and the IPv4 address the backend is to be
// told: ip itself, or an IPv6 client's stand-in. That address is 0 when
// the client is not to be served, and the caller drops the packet: an
// IPv4 address within the stand-in range (which no real client has), or
// an IPv6 client that could be given no stand-in (the table or the range
// is full). When the table is full, a new IPv4 client gets no record: it
// is served by HashID, and the Remote returned is the shared one that
// counts such clients. An IPv4-mapped IPv6 address is taken as the IPv4
// one.
func (t *Table) Route(ip netip.Addr) (*Remote, backend.ID, uint32) {
	return t.RouteAt(ip, t.clock.Now().UnixNano())
}

// RouteAt is Route for a caller that has read the clock already (the UDP
// reader reads it once per batch of datagrams): now is in unix
// nanoseconds.
func (t *Table) RouteAt(ip netip.Addr, now int64) (*Remote, backend.ID, uint32) {
	return t.route(ip, uint32(max(now-t.epoch.UnixNano(), 0)/int64(time.Second)))
}

func (t *Table) route(ip netip.Addr, now uint32) (*Remote, backend.ID, uint32) {
	ip = ip.Unmap()
	k, wire := ip, uint32(0)
	if ip.Is4() {
		wire = protocol.AddrToU32(ip)
		if t.InStandins(wire) {
			return &t.overflow, 0, 0
		}
		k = t.network(ip)
	}
	ek := key(k)
	t.mu.Lock()
	e, found := t.tree.Get(ek)
	r := e.r
	if !found {
		if t.tree.Len() >= t.cfg.MaxRemotes {
			t.mu.Unlock()
			return t.unpinnedRoute(k, wire)
		}
		r = &Remote{addr: ek.addr, first: now}
		if wire == 0 && !t.giveStandin(r) {
			t.mu.Unlock()
			return &t.overflow, 0, 0
		}
		ek.r = r
		t.tree.ReplaceOrInsert(ek)
		if l := t.remoteLog(r); l != nil {
			l.Msg("new remote peer")
		}
	}
	if wire == 0 {
		wire = r.standin
	}
	r.last = now
	id := t.assign(r)
	t.mu.Unlock()
	return r, id, wire
}

// unpinnedRoute serves a client the full table cannot record. An IPv6
// client without a record has no stand-in, and is not served.
func (t *Table) unpinnedRoute(k netip.Addr, wire uint32) (*Remote, backend.ID, uint32) {
	if ok, held := t.fullLog.Allow(); ok {
		t.log.Warn().Int("max_remotes", t.cfg.MaxRemotes).Int64("suppressed", held).
			Msg("remotes table full: new clients served by address hash")
	}
	if wire == 0 {
		t.noStandin.Add(1)
		return &t.overflow, 0, 0
	}
	t.unpinned.Add(1)
	return &t.overflow, t.cfg.Picker.HashID(hash(wire & t.mask)), wire
}

// standinProbes bounds the search for a free stand-in.
const standinProbes = 64

// giveStandin finds r (an IPv6 remote) a free stand-in: its address's
// hash within the range, or one of the next few. The hash is fixed, so
// that a client keeps its stand-in from one run to the next (unless two
// clients contend for one), and so do the backends' logs of it. t.mu is
// held.
func (t *Table) giveStandin(r *Remote) bool {
	h := r.addr.hi*0x9e3779b97f4a7c15 ^ r.addr.lo*0xc2b2ae3d27d4eb4f
	h ^= h >> 29
	usable := uint64(t.sSize - 2)
	t.smu.Lock()
	defer t.smu.Unlock()
	for i := range uint64(standinProbes) {
		s := t.sFirst + 2 + uint32((h+i)%usable)
		if _, taken := t.standins[s]; !taken {
			t.standins[s] = r.addr.Addr()
			r.standin = s
			return true
		}
	}
	t.noStandin.Add(1)
	return false
}

// dropStandin frees r's stand-in, if it has one. t.mu is held.
func (t *Table) dropStandin(r *Remote) {
	if r.standin == 0 {
		return
	}
	t.smu.Lock()
	delete(t.standins, r.standin)
	t.smu.Unlock()
	r.standin = 0
}

// InStandins reports whether the IPv4 address ip (as the protocol
// carries it) is within the stand-in range, reserved addresses included.
func (t *Table) InStandins(ip uint32) bool { return ip-t.sFirst < t.sSize }

// Standins returns the stand-in range.
func (t *Table) Standins() netip.Prefix { return t.cfg.Standins }

// Client returns the client that ip (an address as the backends know
// it) stands for: the IPv6 client whose stand-in it is, or the IPv4
// address itself outside the stand-in range; false for a stand-in no
// client has.
func (t *Table) Client(ip uint32) (netip.Addr, bool) {
	if !t.InStandins(ip) {
		return protocol.U32ToAddr(ip), true
	}
	t.smu.RLock()
	a, ok := t.standins[ip]
	t.smu.RUnlock()
	return a, ok
}

// Known reports whether ip has a remote: a client heard from and not yet
// forgotten. With PrefixBits, that of its network: every address of a
// pinned network is known. A client served unpinned (the table full) is
// not. It allocates nothing; the UDP proxy asks it of an answer that
// matches no query in flight, which only a client that asked may have.
func (t *Table) Known(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is4() {
		ip = t.network(ip)
	}
	t.mu.Lock()
	_, ok := t.tree.Get(key(ip))
	t.mu.Unlock()
	return ok
}

// network returns the key of the IPv4 address ip: its network, with
// PrefixBits.
func (t *Table) network(ip netip.Addr) netip.Addr {
	if t.mask == ^uint32(0) {
		return ip
	}
	return protocol.U32ToAddr(protocol.AddrToU32(ip) & t.mask)
}

// NoStandin returns the number of datagrams and connections from IPv6
// clients that could not be given a stand-in.
func (t *Table) NoStandin() uint64 { return t.noStandin.Load() }

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
	b := t.cfg.Picker
	if r.primary != 0 {
		ok, gone := t.cfg.Backends.Status(r.primary)
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
				if ok, _ := t.cfg.Backends.Status(r.backup); ok {
					return r.backup
				}
				t.setBackup(r, 0)
			}
			id := b.Pick(t.primaries)
			if id != 0 {
				if l := t.remoteLog(r); l != nil {
					l.Uint16("be_id", uint16(id)).Msg("remote assigned to new backup backend")
				}
				t.setBackup(r, id)
			}
			return id
		}
	}
	id := b.Pick(t.primaries)
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
	e := t.log.Info().Stringer("remote_ip", r.addr)
	if r.standin != 0 {
		e = e.Stringer("standin", protocol.U32ToAddr(r.standin))
	}
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
			t.dropStandin(r)
			t.tree.Delete(entry{addr: r.addr})
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
	next, more := addrKey{}, true
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
	k := in.Addr.Unmap()
	if k.Is4() {
		k = t.network(k)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !k.IsValid() || t.tree.Has(key(k)) || t.tree.Len() >= t.cfg.MaxRemotes {
		return
	}
	r := &Remote{addr: keyOf(k), first: sec(in.FirstSeen), last: sec(in.LastSeen)}
	if k.Is6() && !t.restoreStandin(r, in.Standin) {
		return
	}
	r.udp.Store(in.UDP)
	r.tcp.Store(in.TCP)
	r.drops.Store(in.Drops)
	t.setPrimary(r, in.Primary)
	t.setBackup(r, in.Backup)
	t.tree.ReplaceOrInsert(entry{r.addr, r})
}

// restoreStandin gives r (an IPv6 remote) the stand-in it had, if that
// is within the range and free, else a new one. t.mu is held.
func (t *Table) restoreStandin(r *Remote, had netip.Addr) bool {
	if had.Is4() {
		s := protocol.AddrToU32(had)
		t.smu.Lock()
		_, taken := t.standins[s]
		if free := s-t.sFirst-2 < t.sSize-2 && !taken; free {
			t.standins[s] = r.addr.Addr()
			r.standin = s
		}
		t.smu.Unlock()
		if r.standin != 0 {
			return true
		}
	}
	return t.giveStandin(r)
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
	Addr      netip.Addr
	Standin   netip.Addr // an IPv6 remote's stand-in; the zero Addr for IPv4
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
func (t *Table) Lookup(ip netip.Addr) (Info, bool) {
	ip = ip.Unmap()
	if ip.Is4() {
		ip = t.network(ip)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.tree.Get(key(ip))
	if !ok {
		return Info{}, false
	}
	return t.info(e.r), true
}

func (t *Table) info(r *Remote) Info {
	var standin netip.Addr
	if r.standin != 0 {
		standin = protocol.U32ToAddr(r.standin)
	}
	return Info{
		Addr: r.addr.Addr(), Standin: standin, Primary: r.primary, Backup: r.backup,
		UDP: r.udp.Load(), TCP: r.tcp.Load(), Drops: r.drops.Load(),
		FirstSeen: t.epoch.Add(time.Duration(r.first) * time.Second),
		LastSeen:  t.epoch.Add(time.Duration(r.last) * time.Second),
	}
}

// Walk calls fn for each remote in address order (that of their IPv6 forms),
// from the address from onwards (all of them when from is the zero
// Addr), holding the lock for at most chunk remotes at a time so that a
// long walk does not stall the packet path. fn must not call the table.
func (t *Table) Walk(ctx context.Context, from netip.Addr, fn func(Info) bool) {
	const chunk = 1024
	buf := make([]Info, 0, chunk)
	next, more := keyOf(from), true
	for more && ctx.Err() == nil {
		buf = buf[:0]
		t.mu.Lock()
		more = false
		t.tree.AscendGreaterOrEqual(entry{addr: next}, func(e entry) bool {
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
