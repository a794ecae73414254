package remotes

import (
	"cmp"
	"net/netip"
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
	// DefaultMaxRemotes bounds the table: about 170 MB at some 170
	// bytes per remote.
	DefaultMaxRemotes = 1_000_000
)

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

// Remote is one client address and its assignment.
type Remote struct {
	addr    addrKey
	standin uint32 // an IPv6 remote's stand-in IPv4 address; 0 for IPv4
	primary backend.ID
	backup  backend.ID
	first   uint32 // seconds since the table's epoch
	last    atomic.Uint32

	udp   atomic.Uint64
	tcp   atomic.Uint64
	drops atomic.Uint64

	// The query rate limit's (ratelimit.go): when the next query is on
	// schedule (unix nanoseconds), and the queries over the limit.
	tat     atomic.Int64
	limited atomic.Uint64
	overAt  atomic.Int64 // unix nanoseconds: the last query over the limit
	shared  bool         // the record of clients the full table cannot pin
}

// touch marks the remote seen at now (seconds since the table's epoch),
// writing only when that is news: readers of several cores that route
// one client's queries do not all write its line.
func (r *Remote) touch(now uint32) {
	if r.last.Load() != now {
		r.last.Store(now)
	}
}

// CountUDP records a datagram from the remote sent on to its backend.
func (r *Remote) CountUDP() { r.udp.Add(1) }

// CountTCP records a TCP connection from the remote proxied to its
// backend.
func (r *Remote) CountTCP() { r.tcp.Add(1) }

// CountDrop records a datagram or connection from the remote that could
// not be sent on.
func (r *Remote) CountDrop() { r.drops.Add(1) }

// Table maps client addresses to remotes. Create it with New.
type Table struct {
	cfg   Config
	log   zerolog.Logger
	clock timeouts.Clock
	epoch time.Time

	// The remotes, in shards by a hash of their address (see the
	// package comment's Concurrency); n counts them all.
	shards [shardCount]shard
	n      atomic.Int64

	// gen is the generation of the assignments, which RouteCache
	// entries are valid for (routecache.go).
	gen atomic.Uint64

	// cmu guards the per-backend counts, and is taken within a shard's
	// lock to change an assignment.
	cmu       sync.Mutex
	primaries map[backend.ID]int // remotes per primary backend
	backups   map[backend.ID]int // remotes per backup backend

	mask     uint32 // applied to an IPv4 address to make its key
	overflow Remote // counts for clients served without a record
	unpinned atomic.Uint64
	maxPause atomic.Int64 // nanoseconds, the longest hold of a shard's lock by a scan
	logLimit *timeouts.Limiter
	fullLog  *timeouts.Limiter

	// Stand-ins of IPv6 remotes, with the reverse map the reply path
	// reads under the stand-ins' own lock.
	standins *standins

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
		primaries: map[backend.ID]int{},
		backups:   map[backend.ID]int{},
		kick:      make(chan func(), 2),
		done:      make(chan struct{}),
		mask:      ^uint32(0) << (32 - cfg.PrefixBits),
		standins:  newStandins(cfg.Standins),
		logLimit:  timeouts.NewBurstLimiter(clock, remoteLogInterval, remoteLogBurst),
		fullLog:   timeouts.NewLimiter(clock, 5*time.Second),
	}
	t.overflow.shared = true
	for i := range t.shards {
		t.shards[i].tree = btree.NewG(64, lessEntry)
	}
	t.rebalanceT = cfg.Timeouts.NewTimeout("remotes rebalance", func() { t.post(t.rebalanceTick) })
	t.expireT = cfg.Timeouts.NewTimeout("remotes expiry", func() { t.post(t.expireTick) })
	return t
}

// DropReason is why Route serves no client: the caller drops its packet
// or closes its connection, and counts the reason.
type DropReason uint8

const (
	NotDropped       DropReason = iota // served: Backend and Wire are set
	DropStandinRange                   // an IPv4 address within the stand-in range, which no real client has
	DropNoStandin                      // an IPv6 client that could be given no stand-in (the table or the range is full)
)

// Routing is what Route returns for a client. It is returned by value,
// so that routing a packet allocates nothing.
type Routing struct {
	// Remote is the client's remote, which counts its traffic; when
	// the client has no record, the shared one that counts such
	// clients.
	Remote *Remote
	// Wire is the IPv4 address the backend is to be told: the client's
	// own, or an IPv6 client's stand-in; 0 when the client is dropped.
	Wire uint32
	// Backend is the backend to use; 0 when no backend is ok, or when
	// the client is dropped.
	Backend backend.ID
	// Primary is the client's primary backend, though it be down: 0
	// for none (a client the full table cannot record has none).
	Primary backend.ID
	// Drop is why the client is not served; NotDropped when it is.
	Drop DropReason
}

// Route finds the remote for ip (its network, with PrefixBits), creating
// it if it is new, marks it seen, and returns it with the backend to use
// and the IPv4 address the backend is to be told. A client is not
// served (Drop says why, and the caller drops the packet) when it is an
// IPv4 address within the stand-in range, or an IPv6 client that could
// be given no stand-in. When the table is full, a new IPv4 client gets
// no record: it is served by HashID. An IPv4-mapped IPv6 address is
// taken as the IPv4 one.
func (t *Table) Route(ip netip.Addr) Routing {
	return t.RouteAt(ip, t.clock.Now().UnixNano())
}

// RouteAt is Route for a caller that has read the clock already (the UDP
// reader reads it once per batch of datagrams): now is in unix
// nanoseconds.
func (t *Table) RouteAt(ip netip.Addr, now int64) Routing {
	return t.route(ip, t.second(now))
}

// second returns unix nanoseconds now as the table keeps times: whole
// seconds since its epoch.
func (t *Table) second(now int64) uint32 {
	return uint32(max(now-t.epoch.UnixNano(), 0) / int64(time.Second))
}

// route takes the lock of the client's shard once; for a client new to
// the table or to be given a backend the counts' lock within it, and for
// an IPv6 client new to the table the stand-ins' lock within that (see
// the package comment's Concurrency).
func (t *Table) route(ip netip.Addr, now uint32) Routing {
	ip = ip.Unmap()
	k, wire := ip, uint32(0)
	if ip.Is4() {
		wire = protocol.AddrToU32(ip)
		if t.standins.contains(wire) {
			return t.dropped(DropStandinRange)
		}
		k = t.network(ip)
	}
	ek := key(k)
	s := t.shard(ek.addr)
	s.mu.Lock()
	e, found := s.tree.Get(ek)
	r := e.r
	if !found {
		// A bound that concurrent new clients may pass by one each.
		if t.n.Load() >= int64(t.cfg.MaxRemotes) {
			s.mu.Unlock()
			return t.unpinnedRoute(wire)
		}
		r = &Remote{addr: ek.addr, first: now}
		if wire == 0 && !t.standins.give(r) {
			s.mu.Unlock()
			return t.dropped(DropNoStandin)
		}
		ek.r = r
		s.tree.ReplaceOrInsert(ek)
		t.n.Add(1)
		if l := t.remoteLog(r); l != nil {
			l.Msg("new remote peer")
		}
	}
	if wire == 0 {
		wire = r.standin
	}
	r.touch(now)
	id := t.assign(r)
	primary := r.primary
	s.mu.Unlock()
	return Routing{Remote: r, Backend: id, Primary: primary, Wire: wire}
}

// dropped is the Routing of a client not served for reason why.
func (t *Table) dropped(why DropReason) Routing {
	return Routing{Remote: &t.overflow, Drop: why}
}

// unpinnedRoute serves a client the full table cannot record, wire being
// its IPv4 address (0 for IPv6). An IPv6 client without a record has no
// stand-in, and is not served.
func (t *Table) unpinnedRoute(wire uint32) Routing {
	if ok, held := t.fullLog.Allow(); ok {
		t.log.Warn().Int("max_remotes", t.cfg.MaxRemotes).Int64("suppressed", held).
			Msg("remotes table full: new clients served by address hash")
	}
	if wire == 0 {
		t.standins.refused.Add(1)
		return t.dropped(DropNoStandin)
	}
	t.unpinned.Add(1)
	return Routing{Remote: &t.overflow, Backend: t.cfg.Picker.HashID(hash(wire & t.mask)), Wire: wire}
}

// InStandins reports whether the IPv4 address ip (as the protocol
// carries it) is within the stand-in range, reserved addresses included.
func (t *Table) InStandins(ip uint32) bool { return t.standins.contains(ip) }

// Standins returns the stand-in range.
func (t *Table) Standins() netip.Prefix { return t.cfg.Standins }

// Client returns the client that ip (an address as the backends know
// it) stands for: the IPv6 client whose stand-in it is, or the IPv4
// address itself outside the stand-in range; false for a stand-in no
// client has.
func (t *Table) Client(ip uint32) (netip.Addr, bool) {
	if !t.standins.contains(ip) {
		return protocol.U32ToAddr(ip), true
	}
	return t.standins.client(ip)
}

// Known reports whether ip has a remote: a client heard from and not yet
// forgotten. With PrefixBits, that of its network: every address of a
// pinned network is known. A client served unpinned (the table full) is
// not. It allocates nothing; the UDP proxy asks it of an answer that
// matches no query in flight, which only a client that asked may have.
func (t *Table) Known(ip netip.Addr) bool {
	k := t.keyOf(ip)
	s := t.shard(k.addr)
	s.mu.Lock()
	_, ok := s.tree.Get(k)
	s.mu.Unlock()
	return ok
}

// keyOf returns the tree's key for ip: its network, with PrefixBits.
func (t *Table) keyOf(ip netip.Addr) entry {
	ip = ip.Unmap()
	if ip.Is4() {
		ip = t.network(ip)
	}
	return key(ip)
}

// NoStandin returns the number of datagrams and connections from IPv6
// clients that could not be given a stand-in.
func (t *Table) NoStandin() uint64 { return t.standins.refused.Load() }

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

// Unpinned returns the number of datagrams and connections from clients
// the full table could not record.
func (t *Table) Unpinned() uint64 { return t.unpinned.Load() }

// MaxRemotes returns the table's bound.
func (t *Table) MaxRemotes() int { return t.cfg.MaxRemotes }

// Len returns the number of remotes.
func (t *Table) Len() int { return int(t.n.Load()) }

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
	// RateLimited counts the UDP queries over the rate limit (-q), the
	// last at LastLimited (the zero Time for none); NextQuery is when
	// its next query is on the limit's schedule (the zero Time when
	// never counted).
	RateLimited uint64
	LastLimited time.Time
	NextQuery   time.Time
}

// Lookup returns a snapshot of the remote for ip (its network, with
// PrefixBits).
func (t *Table) Lookup(ip netip.Addr) (Info, bool) {
	k := t.keyOf(ip)
	s := t.shard(k.addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.tree.Get(k)
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
		FirstSeen:   t.epoch.Add(time.Duration(r.first) * time.Second),
		LastSeen:    t.epoch.Add(time.Duration(r.last.Load()) * time.Second),
		RateLimited: r.limited.Load(),
		LastLimited: unixTime(r.overAt.Load()),
		NextQuery:   unixTime(r.tat.Load()),
	}
}

// unixTime is the Time of unix nanoseconds ns, the zero Time for 0.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
