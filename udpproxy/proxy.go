package udpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/counter"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy/cache"
)

// Drop reasons.
type DropReason uint8

const (
	DropOversized    DropReason = iota // datagram over 1500 bytes
	DropNoBackend                      // no backend ok
	DropStuck                          // the backend's queue is full
	DropDown                           // the backend went down before the send
	DropBadSource                      // the source address is unusable
	DropRunt                           // datagram shorter than a DNS header
	DropStandinRange                   // an IPv4 source within the stand-in range
	DropNoStandin                      // an IPv6 client that could be given no stand-in
	DropQuarantined                    // a query seen at two backend deaths
	DropRateLimited                    // the client is over its query rate (-q)
	numDrops
)

var dropNames = [numDrops]string{"oversized", "no_backend", "stuck", "down", "bad_source", "runt",
	"standin_range", "no_standin", "quarantined", "ratelimited"}

// tableDrops names, for each reason the remotes table gives for serving
// no client, the drop counted.
var tableDrops = [...]DropReason{remotes.DropStandinRange: DropStandinRange, remotes.DropNoStandin: DropNoStandin}

func (r DropReason) String() string {
	if r < numDrops {
		return dropNames[r]
	}
	return "unknown"
}

// listener is one of the proxy's sockets.
type listener struct {
	idx  uint8
	conn *net.UDPConn
	raw  syscall.RawConn
	addr netip.AddrPort
	v6   bool
	// pktinfo: bound to a wildcard address, the socket is told each
	// query's destination, and each reply is sent from it.
	pktinfo bool
	// retired: inherited beyond this process's readers (Retire); still
	// read, but given no new datagrams, and not handed on.
	retired bool
	// sampler picks the datagrams the top talkers sample: a xorshift
	// generator, so that no periodic pattern of traffic escapes it; its
	// reader's own.
	sampler uint32
	// cached is the reader's queue of answers from the cache, sent at
	// the end of each batch; tapQuery its copy of a query so answered,
	// for the tap.
	cached   *sendQueue
	tapQuery [protocol.MaxData]byte
	// out is the reader's scratch for the answers bbal gives itself
	// (-F, -q), made when either is set.
	out []byte
	// seq orders the queries the reader sends on (flightInfo.seq).
	seq int64
	// routes is the reader's cache of its clients' routes.
	routes remotes.RouteCache
	// stages are the reader's frames of the batch being read, one
	// stage per backend, nstages of them in use (stage.go).
	stages  []stage
	nstages int
	// The reader's work, for the readers' checks (readers.go): its
	// reads, those that were full, and the time spent on them.
	reads     atomic.Uint64
	fullReads atomic.Uint64
	busy      atomic.Uint64 // nanoseconds
}

// nextSeq returns the order of a query sent on at now: after the
// reader's last, and, across readers, as near their time order as the
// clock read once per batch can say.
func (l *listener) nextSeq(now int64) int64 {
	l.seq = max(l.seq+1, now)
	return l.seq
}

// MaxListeners bounds the sockets of one proxy (a query's record keeps
// its socket's number in a byte); each has a stripe of the counts.
const MaxListeners = 256

var _ [counter.Stripes - MaxListeners]struct{} // a stripe per socket

// Proxy is the UDP half of the balancer.
type Proxy struct {
	ls       []*listener
	first    [2]*listener // the first IPv4 and IPv6 listeners, for replies with no query on record
	clock    timeouts.Clock
	ts       *timeouts.Set
	table    *remotes.Table
	backends *backend.Set
	flights  *flights
	sweepT   *timeouts.Timeout
	log      zerolog.Logger

	// Counted by every datagram, each reader to a stripe of its own
	// (that of its socket's number).
	packetsIn   counter.Striped
	bytesIn     counter.Striped
	packetsOut  counter.Striped
	bytesOut    counter.Striped
	drops       [numDrops]counter.Striped
	sendErrors  atomic.Uint64
	unmatched   atomic.Uint64 // replies to no query on record, sent to a known client
	unsolicited atomic.Uint64 // replies to no query on record for a client not known, dropped
	lostReplies atomic.Uint64 // replies to a stand-in of no client, or to a family with no listener
	duplicates  atomic.Uint64 // queries that were copies of one in flight
	resent      atomic.Uint64 // queries sent again after their backend died
	unresent    atomic.Uint64 // queries of a dead backend that could not be sent again
	withheld    atomic.Uint64 // queries of a dead backend not sent again: suspected of its death
	quarantined atomic.Uint64 // queries seen at two backend deaths, put in quarantine
	quar        quarantine
	redundant   atomic.Uint64 // second answers to queries sent again, dropped
	owed        owed
	top         *top          // the top talkers (top.go)
	sampled     atomic.Uint64 // datagrams sampled for them
	unparsed    atomic.Uint64 // of those, questions that could not be read

	oversizeLog    *timeouts.Limiter
	sendLog        *timeouts.Limiter
	unsolicitedLog *timeouts.Limiter
	suspectLog     *timeouts.Limiter
	quarantineLog  *timeouts.Limiter

	// servfail, when set, answers a query SERVFAIL when no backend is
	// available instead of dropping it.
	servfail  bool
	servfails atomic.Uint64
	// rate, when set, limits each client's queries (ratelimit.go).
	rate    *remotes.Rate
	slips   atomic.Uint64 // truncated answers given for queries over the limit
	rateLog *timeouts.Limiter

	wg       sync.WaitGroup // the readers
	once     sync.Once
	stopping atomic.Bool // StopReading or Close was called
	started  atomic.Bool // Start was called: queries may have been sent on

	done     chan struct{}  // closed by Close: resendLoop ends
	resendWG sync.WaitGroup // resendLoop

	// The stall check (stall.go): nil stalls, none.
	stalls      *placement.Stalls[backend.ID, *backend.Backend]
	stallT      *timeouts.Timeout
	stallCheck  chan struct{} // stallTick's posts to resendLoop
	stallChecks atomic.Uint64 // checks done

	tap Tap // tap.go: nil, none

	// The readers with the load (readers.go).
	steering     bool // SteerReaders: Start steers each address's readers
	adapt        bool
	groups       []*readerGroup
	readersT     *timeouts.Timeout
	readersCheck chan struct{} // readersTick's posts to resendLoop
	readerChecks atomic.Uint64 // checks done
	steerLog     *timeouts.Limiter

	// The answer cache (cache.go): nil cache, none.
	cache      *cache.Cache
	cacheT     *timeouts.Timeout
	cacheSweep chan struct{} // cacheTick's posts to cacheLoop
	staleLog   *timeouts.Limiter
}

// New returns a proxy on conns (at least one, at most MaxListeners),
// which it owns from then on, routing datagrams with table to the
// backends of set; its timers live in ts. Its Replies may be used at
// once (the Set's Links.Replies); nothing is read until Start. A socket
// bound to a wildcard address is set to learn each query's destination
// (IP_PKTINFO, IPV6_RECVPKTINFO), so that each reply leaves from the
// address its query came to.
func New(conns []*net.UDPConn, table *remotes.Table, set *backend.Set, ts *timeouts.Set, log zerolog.Logger) (*Proxy, error) {
	if len(conns) == 0 || len(conns) > MaxListeners {
		return nil, fmt.Errorf("%d UDP sockets (want 1 to %d)", len(conns), MaxListeners)
	}
	clock := ts.Clock()
	p := &Proxy{clock: clock, ts: ts, log: log, flights: newFlights(), top: newTop(),
		table: table, backends: set, done: make(chan struct{}), stallCheck: make(chan struct{}, 1),
		oversizeLog:    timeouts.NewLimiter(clock, 5*time.Second),
		sendLog:        timeouts.NewLimiter(clock, 5*time.Second),
		unsolicitedLog: timeouts.NewLimiter(clock, 5*time.Second),
		suspectLog:     timeouts.NewLimiter(clock, 5*time.Second),
		quarantineLog:  timeouts.NewLimiter(clock, 5*time.Second),
		rateLog:        timeouts.NewLimiter(clock, 5*time.Second),
		steerLog:       timeouts.NewLimiter(clock, 5*time.Second),
		readersCheck:   make(chan struct{}, 1),
	}
	for i, c := range conns {
		raw, err := c.SyscallConn()
		if err != nil {
			return nil, err
		}
		addr := c.LocalAddr().(*net.UDPAddr).AddrPort()
		l := &listener{idx: uint8(i), conn: c, raw: raw, addr: addr, v6: addr.Addr().Is6() && !addr.Addr().Is4In6(),
			sampler: 0x9e3779b9 ^ uint32(i)}
		if addr.Addr().IsUnspecified() {
			var serr error
			raw.Control(func(fd uintptr) {
				if l.v6 {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
				}
			})
			if serr != nil {
				return nil, fmt.Errorf("UDP socket %v: PKTINFO: %w", addr, serr)
			}
			l.pktinfo = true
		}
		l.cached = newSendQueue(p, l)
		p.ls = append(p.ls, l)
		if fam := family(l.v6); p.first[fam] == nil {
			p.first[fam] = l
		}
	}
	p.sweepT = ts.NewTimeout("udp queries in flight", p.sweep)
	p.stallT = ts.NewTimeout("udp stall check", p.stallTick)
	p.readersT = ts.NewTimeout("udp readers check", p.readersTick)
	p.group()
	return p, nil
}

func family(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// ServfailWhenDown makes the proxy answer SERVFAIL, rather than drop, a
// query that finds no backend available. Call it before Start.
func (p *Proxy) ServfailWhenDown() {
	p.servfail = true
	p.makeScratch()
}

// makeScratch gives each reader its scratch for the answers bbal gives
// itself.
func (p *Proxy) makeScratch() {
	for _, l := range p.ls {
		if l.out == nil {
			l.out = make([]byte, 0, protocol.MaxData)
		}
	}
}

// LimitRate limits each client's UDP queries to rate (-q). Call it
// before Start.
func (p *Proxy) LimitRate(rate remotes.Rate) {
	p.rate = &rate
	p.makeScratch()
}

// Rate returns the per-client limit, nil for none.
func (p *Proxy) Rate() *remotes.Rate { return p.rate }

// Replies returns a new batch of replies from backend be to send from the
// DNS sockets: the backends' Links.Replies.
func (p *Proxy) Replies(be *backend.Backend) backend.ReplyBatch { return p.newSendBatch(be) }

// sendFailed counts a reply that could not be sent, and logs it at most
// once per 5 s.
func (p *Proxy) sendFailed(err error, to netip.AddrPort) {
	p.sendErrors.Add(1)
	if ok, held := p.sendLog.Allow(); ok {
		p.log.Error().Err(err).Stringer("dest", to).Int64("suppressed", held).Msg("outbound UDP packet error")
	}
}

// Addr returns the first socket's local address.
func (p *Proxy) Addr() netip.AddrPort { return p.ls[0].addr }

// Addrs returns the sockets' local addresses, each once, in order.
func (p *Proxy) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, l := range p.ls {
		if !slices.Contains(out, l.addr) {
			out = append(out, l.addr)
		}
	}
	return out
}

// Retire marks socket c, one of the proxy's, as one this process
// inherited beyond its readers, which SteerByID gives no new datagrams:
// its reader still reads what it holds, its replies still leave from
// it, but it is not handed on (Conns). Call it before Start.
func (p *Proxy) Retire(c *net.UDPConn) {
	for _, l := range p.ls {
		if l.conn == c {
			l.retired = true
		}
	}
	p.group()
}

// Reader is one socket's reader, as the debug API shows it.
type Reader struct {
	Addr      netip.AddrPort
	Datagrams uint64 // read from the socket
	Reads     uint64 // recvmmsg calls that returned datagrams
	// Active: given new datagrams now (see SteerReaders; before Start,
	// every reader not retired).
	Active  bool
	Retired bool // see Retire
}

// Readers returns the sockets' readers, in order.
func (p *Proxy) Readers() []Reader {
	out := make([]Reader, len(p.ls))
	for i, l := range p.ls {
		out[i] = Reader{Addr: l.addr, Datagrams: p.packetsIn.Stripe(int(l.idx)), Reads: l.reads.Load(),
			Active: !l.retired, Retired: l.retired}
	}
	for _, g := range p.groups {
		for j, l := range g.ls {
			out[l.idx].Active = j < int(g.active.Load())
		}
	}
	return out
}

// Start starts a reader goroutine per socket, and resendLoop, which
// acts on the backends' Down events until Close.
func (p *Proxy) Start() {
	p.started.Store(true)
	p.sweepT.Set(FlightAge)
	if p.stalls != nil && p.stalls.Enabled() {
		p.stallT.Set(placement.StallCheckInterval)
	}
	p.startReaders()
	p.resendWG.Add(1)
	go p.resendLoop()
	if p.cache != nil {
		p.cacheT.Set(CacheSweepInterval)
		p.resendWG.Add(1)
		go p.cacheLoop()
	}
	for _, l := range p.ls {
		p.wg.Add(1)
		go p.readLoop(l)
	}
}

// resendLoop is the goroutine that consumes the Set's Down events: for
// each, it sends the queries the backend had not answered elsewhere
// (resend). It keeps on after StopReading: queries already sent on are
// still the proxy's.
func (p *Proxy) resendLoop() {
	defer p.resendWG.Done()
	downs := p.backends.Downs()
	for {
		select {
		case <-p.done:
			return
		case d := <-downs:
			p.resend(d.Backend, d.Fault)
		case <-p.stallCheck:
			p.checkStalls()
		case <-p.readersCheck:
			p.checkReaders()
		}
	}
}

// Serving reports whether the readers are reading: started, and not
// stopped by StopReading or Close.
func (p *Proxy) Serving() bool { return p.started.Load() && !p.stopping.Load() }

// StopReading stops the readers but keeps the sockets, so that replies
// to queries already sent on can still go out: a process handing over to
// its successor, which reads the same sockets from then on, does this.
func (p *Proxy) StopReading() {
	p.stopping.Store(true)
	for _, l := range p.ls {
		l.conn.SetReadDeadline(time.Now())
	}
	p.wg.Wait()
}

// Conns returns the sockets, in order, but the retired: a successor
// process inherits them.
func (p *Proxy) Conns() []*net.UDPConn {
	var out []*net.UDPConn
	for _, l := range p.ls {
		if !l.retired {
			out = append(out, l.conn)
		}
	}
	return out
}

// Close closes the sockets and waits for the readers to stop.
func (p *Proxy) Close() {
	p.once.Do(func() {
		p.stopping.Store(true)
		p.sweepT.Clear()
		p.stallT.Clear()
		p.readersT.Clear()
		if p.cacheT != nil {
			p.cacheT.Clear()
		}
		close(p.done)
		for _, l := range p.ls {
			l.conn.Close()
		}
	})
	p.wg.Wait()
	p.resendWG.Wait()
}

func (p *Proxy) readLoop(l *listener) {
	defer p.wg.Done()
	var o origin
	o.lis = l.idx
	var r *recvBatch
	r = newRecvBatch(l.pktinfo, func(n int) {
		start := time.Now()
		now := p.clock.Now().UnixNano()
		for i := range n {
			size, ip, port, ok := r.datagram(i)
			r.origin(i, &o)
			if !ok {
				ip = netip.Addr{}
			}
			p.handle(l, r.bufs[i], size, ip, port, &o, now)
		}
		p.endBatch(l, now)
		l.reads.Add(1)
		if n == batchLen {
			l.fullReads.Add(1)
		}
		l.busy.Add(uint64(time.Since(start)))
	})
	for {
		err := r.run(l.raw)
		if errors.Is(err, net.ErrClosed) || p.stopping.Load() {
			return
		}
		// ICMP errors and the like surface here on Linux; they concern
		// one earlier datagram, not the socket.
		p.log.Debug().Err(err).Msg("UDP read error")
	}
}

// handle routes one datagram of n bytes from ip:port (not valid: the
// source was unusable), read on l at buf[UDPHeaderLen:] at now, having
// come in as o says, and returns the backend it was staged for: its
// frame is queued with the rest of the batch's at its end (endBatch),
// and buf must stay as it is until then.
func (p *Proxy) handle(l *listener, buf []byte, n int, ip netip.Addr, port uint16, o *origin, now int64) *backend.Backend {
	p.packetsIn.Add(int(l.idx), 1)
	p.bytesIn.Add(int(l.idx), uint64(n))
	switch {
	case !ip.IsValid():
		p.drop(l, DropBadSource)
		return nil
	case n < protocol.DNSHeaderLen:
		p.drop(l, DropRunt)
		return nil
	case n > protocol.MaxData:
		// Refused before it can create a remote: a flood of these
		// from spoofed sources must not fill the table.
		p.drop(l, DropOversized)
		p.warnOversized(ip, n)
		return nil
	}
	if e := p.log.Trace(); e != nil {
		e.Stringer("remote_ip", ip).Uint16("remote_port", port).Int("len", n).
			Msg("received UDP packet from remote")
	}
	rt := p.table.RouteCached(&l.routes, ip, now)
	if rt.Drop != remotes.NotDropped {
		p.drop(l, tableDrops[rt.Drop])
		return nil
	}
	rem, id, wire := rt.Remote, rt.Backend, rt.Wire
	query := buf[protocol.UDPHeaderLen : protocol.UDPHeaderLen+n]
	if l.sampleNext() {
		p.sampled.Add(1)
		if !p.top.sample(ip, query, now) {
			p.unparsed.Add(1)
		}
	}
	if p.rate != nil {
		if ok, over := rem.Admit(p.rate, now); !ok {
			p.overRate(l, rem, query, netip.AddrPortFrom(ip, port), o, over)
			return nil
		}
	}
	key := flightKey(wire, port, uint16(query[0])<<8|uint16(query[1]))
	if p.quar.holds(key, query, now) {
		rem.CountDrop()
		p.drop(l, DropQuarantined)
		return nil
	}
	be := p.backends.Get(id)
	from := netip.AddrPortFrom(ip, port)
	ck := p.cacheKey(query)
	if ck.Hash != 0 && p.fromCache(l, buf[protocol.UDPHeaderLen:], n, &ck, be, rt.Primary, from, o, now) {
		return nil
	}
	if be == nil {
		rem.CountDrop()
		p.drop(l, DropNoBackend)
		if p.servfail {
			p.answerServfail(l, query, netip.AddrPortFrom(ip, port), o)
		}
		return nil
	}
	// On record before it is sent, so that its answer finds it.
	if pl := p.flights.put(key, id, o, query, ck, now, l.nextSeq(now)); pl.dup {
		p.duplicates.Add(1)
	} else {
		p.forget(pl.displaced, pl.copies, pl.evicted)
	}
	protocol.PutUDPHeader(buf, protocol.FrameInboundUDP, wire, port, n)
	l.stage(be).add(buf[:protocol.UDPHeaderLen+n], staged{key: key, ck: ck, rem: rem, from: from, o: *o, data: buf[protocol.UDPHeaderLen:], n: n})
	return be
}

// forget counts copies of a query of backend id displaced from the
// table.
func (p *Proxy) forget(id backend.ID, copies int, evicted bool) {
	if id == 0 {
		return
	}
	if be := p.backends.Get(id); be != nil {
		countForgotten(be, copies, evicted)
	}
}

// sweep forgets the queries not answered in FlightAge.
func (p *Proxy) sweep() {
	p.flights.sweep(p.clock.Now().UnixNano(), func(id backend.ID, copies int) { p.forget(id, copies, false) })
	p.sweepT.Again(FlightAge)
}

// resend sends the queries backend be has not answered (up to FlightAge
// old) to the backends their remotes use now: what resendLoop does with
// be's Down event, which says why be died. A query too long to have
// been kept is left to be forgotten.
//
// One datagram must not take down more than one backend, so not every
// query is sent again. A suspect is not: the query whose answer faulted
// be (why.Answer), or, when that is not known, the query be was given
// first of those it had not answered ("the last ones written before an
// EOF" are the ones be was given from that one on: that one is
// withheld, and those after it, which came while be was dying, are sent
// again). A backend such as node-mname reads and answers its queries
// in order; one that dies of a query has answered those before it. How
// long it takes to die is no guide: node-mname under load was seen to
// take 15 to 650 ms from the poison's arrival to its EOF. A backend
// killed for no fault of a query loses that one query to its client's
// retry. A backend faulted for a heartbeat, probe or TCP OK timeout is
// wedged, or too far behind to answer: it may not have read the
// queries it has not answered, the poison may be any of them, and none
// is sent on. A query seen at a death before (sent again once already,
// or withheld and asked again by its client) is quarantined.
func (p *Proxy) resend(be *backend.Backend, why backend.Fault) {
	r := p.moveQueries(be, why, resendDeath)
	if r.any() {
		be.Logger().Info().Int("resent", r.moved).Int("not_resent", r.stuck).Int("withheld", r.held).
			Int("quarantined", r.quarantined).Dur("suspect_age", r.suspectAge).Msg("unanswered queries sent to other backends")
	}
}

// moved is what became of a backend's unanswered queries.
type moved struct {
	moved, stuck, held, quarantined int
	suspectAge                      time.Duration // of the query withheld as the suspect
}

func (m moved) any() bool { return m.moved+m.stuck+m.held+m.quarantined > 0 }

// resendMode is why a backend's unanswered queries are sent on.
type resendMode uint8

const (
	resendDeath      resendMode = iota // it died, for why
	resendStall                        // it is alive but answers nothing: a stall (a death, for the quarantine)
	resendStallAgain                   // stalled again after a trial, having answered nothing: no suspect
)

// moveQueries sends be's unanswered queries to the backends their
// remotes use now, as resend says for a death. A stalled backend is
// treated as one that died of a query, not as a wedged one.
func (p *Proxy) moveQueries(be *backend.Backend, why backend.Fault, mode resendMode) (r moved) {
	table, set := p.table, p.backends
	now := p.clock.Now().UnixNano()
	wedged := mode == resendDeath && why.Faulted && (why.Reason == backend.ReasonHeartbeatTimeout ||
		why.Reason == backend.ReasonProbeTimeout || why.Reason == backend.ReasonTCPOKTimeout)
	first, found, age := int64(0), false, int64(0)
	if !why.Answer.Known && !wedged && mode != resendStallAgain {
		p.flights.each(be.ID(), now, func(_ uint64, sent int64, f *flightInfo, _ []byte) {
			if !found || f.seq < first {
				first, found, age = f.seq, true, now-sent
			}
		})
	}
	var touched []*backend.Backend
	resent, stuck, held, quarantined := 0, 0, 0, 0
	frame := make([]byte, protocol.UDPHeaderLen+keepLen)
	p.flights.each(be.ID(), now, func(key uint64, sent int64, f *flightInfo, query []byte) {
		wire, port := uint32(key>>32), uint16(key>>16)
		suspected := found && f.seq == first
		if a := why.Answer; a.Known {
			suspected = a.IP == wire && a.Port == port && (!a.HasID || a.ID == uint16(key))
		}
		prior := uint8(0)
		if f.resent {
			prior = 2
		}
		if deaths := p.quar.seen(key, querySum(query), now, suspected, prior); deaths > 0 || wedged {
			// Not sent again: counted unanswered, and no longer be's.
			countForgotten(be, int(f.copies), false)
			f.be = 0
			if deaths >= 2 {
				quarantined++
				p.quarantined.Add(1)
			} else {
				held++
				p.withheld.Add(1)
			}
			if deaths > 0 {
				p.logSuspect(be, table, key, query, deaths)
			}
			return
		}
		client, ok := table.Client(wire)
		if !ok {
			p.unresent.Add(1)
			stuck++
			return
		}
		id := table.RouteAt(client, now).Backend
		to := set.Get(id)
		if len(query) == 0 || to == nil || to == be {
			p.unresent.Add(1)
			stuck++
			return
		}
		n := len(query)
		protocol.PutUDPHeader(frame, protocol.FrameInboundUDP, wire, port, n)
		copy(frame[protocol.UDPHeaderLen:], query)
		if !to.SendUDP(frame[:protocol.UDPHeaderLen+n], now) {
			p.unresent.Add(1)
			stuck++
			return
		}
		resent++
		// Every copy be had is moved; one goes to the other backend.
		countMoved(be, int(f.copies), to)
		f.from, f.be, f.resent, f.copies = be.ID(), id, true, 1
		p.resent.Add(1)
		if !slices.Contains(touched, to) {
			touched = append(touched, to)
		}
	})
	for _, to := range touched {
		to.Flush(now)
	}
	return moved{moved: resent, stuck: stuck, held: held, quarantined: quarantined, suspectAge: time.Duration(age)}
}

// logSuspect logs a query of dead backend be held back (seen at one
// death) or quarantined (at two), each at most once per 5 s.
func (p *Proxy) logSuspect(be *backend.Backend, table *remotes.Table, key uint64, query []byte, deaths uint8) {
	lim := p.suspectLog
	if deaths >= 2 {
		lim = p.quarantineLog
	}
	ok, held := lim.Allow()
	if !ok {
		return
	}
	e := be.Logger().Warn()
	if client, ok := table.Client(uint32(key >> 32)); ok {
		e = e.Stringer("remote_ip", client)
	}
	e = e.Uint16("remote_port", uint16(key>>16)).Uint16("dns_id", uint16(key)).Str("question", question(query)).
		Int("deaths", int(deaths)).Int64("suppressed", held)
	if deaths >= 2 {
		e.Dur("for", QuarantineTime).Msg("query seen at two backend deaths: quarantined")
	} else {
		e.Msg("query suspected of a backend's death: not sent again")
	}
}

// drop counts a datagram read on l dropped for r.
func (p *Proxy) drop(l *listener, r DropReason) { p.drops[r].Add(int(l.idx), 1) }

func (p *Proxy) answerServfail(l *listener, query []byte, to netip.AddrPort, o *origin) {
	p.answerSelf(l, query, to, o, servfail, &p.servfails)
}

// answerSelf sends the answer build makes of query to the client at to
// from l, the way the query came in (o), counting it in count.
func (p *Proxy) answerSelf(l *listener, query []byte, to netip.AddrPort, o *origin, build func(q, out []byte) []byte, count *atomic.Uint64) {
	resp := build(query, l.out)
	if resp == nil {
		return
	}
	var ctl [ctlLen]byte
	var oob []byte
	if l.pktinfo {
		oob = ctl[:putPktinfo(ctl[:], l.v6, o)]
	}
	// Counted before it is sent, so that whoever has the answer sees
	// it counted; taken back if it cannot be sent.
	count.Add(1)
	if _, _, err := l.conn.WriteMsgUDPAddrPort(resp, oob, to); err != nil {
		count.Add(^uint64(0))
		p.sendErrors.Add(1)
		return
	}
	p.packetsOut.Add(int(l.idx), 1)
	p.bytesOut.Add(int(l.idx), uint64(len(resp)))
	if p.tap != nil {
		now := p.clock.Now().UnixNano()
		p.tap.Query(to, l.local(o), query, now)
		p.tap.Response(to, l.local(o), resp, now, true)
	}
}

func (p *Proxy) warnOversized(ip netip.Addr, n int) {
	if ok, held := p.oversizeLog.Allow(); ok {
		p.log.Warn().Stringer("remote_ip", ip).Int("len", n).Int64("suppressed", held).
			Msg("dropping oversized UDP packet")
	}
}

// sendBatch collects the replies of one session's reader, a queue per
// listener, each sent with one sendmmsg.
type sendBatch struct {
	p   *Proxy
	be  *backend.Backend
	qs  []*sendQueue // by listener, made when first used
	now int64        // the clock, read at the first answer of a batch
	a   answered

	// The batch's answers from be, for its load: how many, how many of
	// those measure its latency, and their sum.
	answered, measured int
	rttSum             time.Duration
}

func (p *Proxy) newSendBatch(be *backend.Backend) *sendBatch {
	return &sendBatch{p: p, be: be, qs: make([]*sendQueue, len(p.ls))}
}

// Add queues data, an answer from the batch's backend for to (a client
// address or stand-in as the backend knows it), for the listener and
// from the address its query came to. An answer to no query on record
// leaves from the first listener of the client's family if the client
// is known to the remotes table (a late answer), and is dropped
// otherwise: bbal's DNS port sends nothing to an address that never
// asked. A full queue is sent at once.
func (b *sendBatch) Add(data []byte, to netip.AddrPort) {
	if len(data) == 0 {
		return
	}
	p := b.p
	wire := protocol.AddrToU32(to.Addr())
	if b.now == 0 {
		b.now = p.clock.Now().UnixNano()
	}
	var o *origin
	var key uint64
	hasID := len(data) >= 2
	if hasID {
		key = flightKey(wire, to.Port(), uint16(data[0])<<8|uint16(data[1]))
	}
	if hasID && p.flights.take(key, &b.a) {
		o = &b.a.origin
		rtt := time.Duration(max(b.now-b.a.sent, 0))
		if second := b.a.be; b.a.other != 0 {
			// Sent again: the other backend's answer is the second.
			if second == b.be.ID() {
				second = b.a.other
			}
			p.owed.add(key, second, b.now)
		}
		p.keep(&b.a.ck, b.be, data, b.now)
		if b.a.be == b.be.ID() {
			// Counted, and the latency averaged, per batch.
			b.answered++
			if b.a.measure {
				b.measured++
				b.rttSum += rtt
			}
		} else if other := p.backends.Get(b.a.be); other != nil {
			// Sent again elsewhere, answered here after all.
			countAnswered(other, 1, 0, 0)
		}
	}
	if !p.started.Load() {
		// Not started: no query was sent on, so none is answered.
		b.refuse(to.Addr(), to.Port())
		return
	}
	client, ok := p.table.Client(wire)
	if !ok {
		p.lostReplies.Add(1)
		return
	}
	if o == nil {
		if hasID && p.owed.take(key, b.be.ID(), b.now) {
			// The second answer of a query sent again: its client
			// has the first.
			p.redundant.Add(1)
			return
		}
		// No lock is held here; Known takes the remotes table's.
		if !p.table.Known(client) {
			b.refuse(client, to.Port())
			return
		}
		p.unmatched.Add(1)
	}
	var l *listener
	if o != nil && int(o.lis) < len(p.ls) && p.ls[o.lis].v6 == client.Is6() {
		l = p.ls[o.lis]
	} else if l = p.first[family(client.Is6())]; l == nil {
		p.lostReplies.Add(1)
		return
	}
	q := b.qs[l.idx]
	if q == nil {
		q = newSendQueue(p, l)
		b.qs[l.idx] = q
	}
	if q.n == batchLen {
		b.count()
		q.flush()
	}
	q.add(data, netip.AddrPortFrom(client, to.Port()), o)
	if p.tap != nil {
		p.tap.Response(netip.AddrPortFrom(client, to.Port()), l.local(o), data, b.now, false)
	}
}

// refuse drops an answer for client:port, which matches no query on
// record and no known client, and counts and logs it (at most once per
// 5 s): a backend that sends such replies would otherwise make bbal's
// DNS port a reflector.
func (b *sendBatch) refuse(client netip.Addr, port uint16) {
	b.p.unsolicited.Add(1)
	if ok, held := b.p.unsolicitedLog.Allow(); ok {
		b.be.Logger().Warn().Stringer("remote_ip", client).Uint16("remote_port", port).Int64("suppressed", held).
			Msg("dropping UDP reply to a client that asked nothing")
	}
}

// count adds the answers collected so far to the backend's load.
func (b *sendBatch) count() {
	if b.now != 0 {
		b.be.Load().Replied(b.now)
	}
	if b.answered == 0 {
		return
	}
	var mean time.Duration
	if b.measured > 0 {
		mean = b.rttSum / time.Duration(b.measured)
	}
	countAnswered(b.be, b.answered, b.measured, mean)
	b.answered, b.measured, b.rttSum = 0, 0, 0
}

// Flush sends what was added; it returns how many could not be sent.
// The answers are counted first, so that a client that has its answer
// finds it counted.
func (b *sendBatch) Flush() (failed int) {
	b.count()
	for _, q := range b.qs {
		if q != nil && q.n > 0 {
			failed += q.flush()
		}
	}
	b.now = 0
	return failed
}

// ResetCounters sets the proxy's counters back to zero.
func (p *Proxy) ResetCounters() {
	counterTable.Reset(p)
	for i := range p.drops {
		p.drops[i].Store(0)
	}
	for _, l := range p.ls {
		l.reads.Store(0)
	}
}

// Counter is one of the proxy's plain counts; Counters lists them.
type Counter = counter.Counter[Proxy, Counts]

// counterTable is the one list of the proxy's plain counts. It drives
// Stats, ResetCounters and, through Counters, the metrics. The packet
// path updates the fields directly.
var counterTable = counter.Table[Proxy, Counts]{
	{Metric: "bbal_udp_received_packets_total", Help: "Datagrams read from the DNS UDP socket.", Field: func(p *Proxy) counter.Value { return &p.packetsIn }, Stat: func(s *Counts) *uint64 { return &s.PacketsIn }},
	{Metric: "bbal_udp_received_bytes_total", Help: "Bytes of datagrams read from the DNS UDP socket.", Field: func(p *Proxy) counter.Value { return &p.bytesIn }, Stat: func(s *Counts) *uint64 { return &s.BytesIn }},
	{Metric: "bbal_udp_sent_packets_total", Help: "Replies sent from the DNS UDP socket.", Field: func(p *Proxy) counter.Value { return &p.packetsOut }, Stat: func(s *Counts) *uint64 { return &s.PacketsOut }},
	{Metric: "bbal_udp_sent_bytes_total", Help: "Bytes of replies sent from the DNS UDP socket.", Field: func(p *Proxy) counter.Value { return &p.bytesOut }, Stat: func(s *Counts) *uint64 { return &s.BytesOut }},
	{Metric: "bbal_udp_send_errors_total", Help: "Replies that could not be sent.", Field: func(p *Proxy) counter.Value { return &p.sendErrors }, Stat: func(s *Counts) *uint64 { return &s.SendErrors }},
	{Metric: "bbal_udp_servfail_total", Help: "Queries answered SERVFAIL for want of a backend (-F).", Field: func(p *Proxy) counter.Value { return &p.servfails }, Stat: func(s *Counts) *uint64 { return &s.Servfails }},
	{Metric: "bbal_udp_replies_unmatched_total", Help: "Replies to no query on record (later than 1 s) for a known client, sent.", Field: func(p *Proxy) counter.Value { return &p.unmatched }, Stat: func(s *Counts) *uint64 { return &s.Unmatched }},
	{Metric: "bbal_udp_replies_unsolicited_total", Help: "Replies to no query on record for a client not in the remotes table, dropped.", Field: func(p *Proxy) counter.Value { return &p.unsolicited }, Stat: func(s *Counts) *uint64 { return &s.Unsolicited }},
	{Metric: "bbal_udp_replies_lost_total", Help: "Replies that could not be sent: to a stand-in of no client, or to a family not listened on.", Field: func(p *Proxy) counter.Value { return &p.lostReplies }, Stat: func(s *Counts) *uint64 { return &s.LostReplies }},
	{Metric: "bbal_udp_duplicates_total", Help: "Queries with the ID and client port of one in flight (retransmits), answered the way the first came in.", Field: func(p *Proxy) counter.Value { return &p.duplicates }, Stat: func(s *Counts) *uint64 { return &s.Duplicates }},
	{Metric: "bbal_udp_resent_total", Help: "Queries sent again to another backend after theirs died unanswering.", Field: func(p *Proxy) counter.Value { return &p.resent }, Stat: func(s *Counts) *uint64 { return &s.Resent }},
	{Metric: "bbal_udp_unresent_total", Help: "Queries of a dead backend that could not be sent again.", Field: func(p *Proxy) counter.Value { return &p.unresent }, Stat: func(s *Counts) *uint64 { return &s.Unresent }},
	{Metric: "bbal_udp_withheld_total", Help: "Queries of a dead backend not sent again: suspected of its death.", Field: func(p *Proxy) counter.Value { return &p.withheld }, Stat: func(s *Counts) *uint64 { return &s.Withheld }},
	{Metric: "bbal_udp_replies_redundant_total", Help: "Second answers to queries sent again to another backend (their first stalled or died), dropped: the client had the first.", Field: func(p *Proxy) counter.Value { return &p.redundant }, Stat: func(s *Counts) *uint64 { return &s.Redundant }},
	{Metric: "bbal_udp_ratelimit_slips_total", Help: "Queries over a client's rate limit (-q) answered with an empty truncated answer (TC) instead of dropped.", Field: func(p *Proxy) counter.Value { return &p.slips }, Stat: func(s *Counts) *uint64 { return &s.Slips }},
	{Metric: "bbal_udp_sampled_total", Help: "Datagrams sampled (one in 64) for the top talkers.", Field: func(p *Proxy) counter.Value { return &p.sampled }, Stat: func(s *Counts) *uint64 { return &s.Sampled }},
	{Metric: "bbal_udp_sampled_unparsed_total", Help: "Datagrams sampled for the top talkers whose question could not be read (relayed all the same).", Field: func(p *Proxy) counter.Value { return &p.unparsed }, Stat: func(s *Counts) *uint64 { return &s.Unparsed }},
	{Metric: "bbal_udp_quarantined_total", Help: "Queries seen in flight at two backend deaths, dropped on arrival for 30 s.", Field: func(p *Proxy) counter.Value { return &p.quarantined }, Stat: func(s *Counts) *uint64 { return &s.Quarantined }},
}

// Counters returns the table of the proxy's plain counts, for the
// metrics. The drops by reason are not in it.
func Counters() []Counter { return slices.Clone(counterTable) }

// Stats is a snapshot of the proxy's counters.
type Stats struct {
	Counts
	Drops map[string]uint64
}

// Counts are the proxy's plain counts, as counterTable loads them; the
// debug API shows them with these names.
type Counts struct {
	PacketsIn  uint64 `json:"packets_in"`
	BytesIn    uint64 `json:"bytes_in"`
	PacketsOut uint64 `json:"packets_out"`
	BytesOut   uint64 `json:"bytes_out"`
	SendErrors uint64 `json:"send_errors"`
	Servfails  uint64 `json:"servfails"` // queries answered SERVFAIL for want of a backend
	// Unmatched counts replies to no query on record (late beyond
	// FlightAge) for a client the remotes table knows: they leave from
	// the first socket of the client's family.
	Unmatched uint64 `json:"unmatched"`
	// Unsolicited counts replies to no query on record for a client
	// the remotes table does not know: they are dropped.
	Unsolicited uint64 `json:"unsolicited"`
	// LostReplies counts replies that could not be sent: to a stand-in
	// no client has, or to a family bbal does not listen on.
	LostReplies uint64 `json:"lost_replies"`
	// Duplicates counts queries with the DNS ID and client port of one
	// still in flight to the same backend (a stub resolver's
	// retransmits): each is counted on that query's record, and its
	// answer leaves the way the first copy came in.
	Duplicates uint64 `json:"duplicates"`
	Resent     uint64 `json:"resent"`   // queries sent again after their backend died
	Unresent   uint64 `json:"unresent"` // queries of a dead backend that could not be
	// Withheld counts queries of a dead backend not sent again because
	// they were suspected of its death; Quarantined those seen at two
	// deaths, dropped on arrival for QuarantineTime (each datagram so
	// dropped is counted in Drops["quarantined"]).
	Withheld    uint64 `json:"withheld"`
	Quarantined uint64 `json:"quarantined"`
	// Redundant counts the second answers of queries sent again, which
	// are dropped: the client had the first.
	Redundant uint64 `json:"redundant"`
	// Slips counts the queries over a client's rate limit answered
	// truncated (each is also counted in Drops["ratelimited"]).
	Slips uint64 `json:"ratelimit_slips"`
	// Sampled counts the datagrams sampled for the top talkers (one in
	// SampleEvery), Unparsed those of them whose question could not be
	// read: they are relayed all the same.
	Sampled  uint64 `json:"sampled"`
	Unparsed uint64 `json:"sampled_unparsed"`
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	s := Stats{Drops: make(map[string]uint64, numDrops)}
	counterTable.Load(p, &s.Counts)
	for r := range numDrops {
		s.Drops[r.String()] = p.drops[r].Load()
	}
	return s
}
