package tcpproxy

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/counter"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
)

// DefaultOKTimeout is how long a new session waits for INBOUND_TCP_OK.
// The wait is in line with the client's query, so a longer one would be
// visible to clients while a backend is failing.
const DefaultOKTimeout = 10 * time.Second

// DefaultDrainTimeout is how long the backend has to finish its answers
// after the client's half-close. node-mname keeps a connection open for
// good when it holds part of a query, so without this a client that
// closes half-way through one would leave a session behind.
const DefaultDrainTimeout = 10 * time.Second

// Defaults of the connection limits.
const (
	// DefaultMaxConns bounds the client connections open at once.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP bounds one client address's connections.
	DefaultMaxConnsPerIP = 64
	// DefaultIdleTimeout closes a connection that has no query
	// outstanding and has carried no complete message for this long (the
	// original had none; dnsdist uses 2 s, node-mname 5 s). It also
	// closes one whose client has left a write of answers to it pending
	// this long: a client that does not read is as good as idle, and it
	// holds its place whatever it sends.
	DefaultIdleTimeout = 5 * time.Second
	// DefaultMaxLifetime closes any connection this old.
	DefaultMaxLifetime = 5 * time.Minute
	// DefaultAnswerTimeout closes a connection whose backend owes an
	// answer (a query outstanding) and has completed none for this long,
	// counting from the later of the query and the last answer: a
	// backend that never finishes an answer (a length of 65535, then
	// nothing) would otherwise hold a patient client and its place until
	// MaxLifetime. As long as the other waits on the backend (OKTimeout,
	// DrainTimeout); resolvers give up long before.
	DefaultAnswerTimeout = 10 * time.Second
	// sweepInterval is how often the idle, unread, answer and lifetime
	// limits are checked: they are enforced to within it.
	sweepInterval = time.Second
)

// Accept back-off bounds, for errors such as EMFILE that would otherwise
// make the accept loop spin.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Config configures a Proxy. Every field but OKTimeout is required.
type Config struct {
	Table     *remotes.Table
	Backends  *backend.Set
	Timeouts  *timeouts.Set
	Log       zerolog.Logger
	OKTimeout time.Duration // DefaultOKTimeout when zero
	// DrainTimeout bounds the wait for the backend after the client's
	// half-close; DefaultDrainTimeout when zero.
	DrainTimeout time.Duration
	// The connection limits; the defaults above when zero.
	MaxConns      int
	MaxConnsPerIP int
	IdleTimeout   time.Duration
	MaxLifetime   time.Duration
	// AnswerTimeout bounds the wait for an answer the backend owes;
	// DefaultAnswerTimeout when zero.
	AnswerTimeout time.Duration
}

// Limit names a connection limit.
type Limit uint8

// The connection limits; their String values are the metric labels.
const (
	LimitConns    Limit = iota // too many connections
	LimitPerIP                 // too many from one address
	LimitIdle                  // idle too long
	LimitLifetime              // open too long
	LimitUnread                // an answer left unread by the client too long
	LimitAnswer                // an answer owed by the backend too long
	numLimits
)

var limitNames = [numLimits]string{"max_conns", "max_conns_per_ip", "idle_timeout", "max_lifetime", "unread_timeout", "answer_timeout"}

func (l Limit) String() string {
	if l < numLimits {
		return limitNames[l]
	}
	return "unknown"
}

// Drop reasons: why a client connection was closed without being proxied.
type DropReason uint8

const (
	DropNoBackend    DropReason = iota // no backend ok
	DropDial                           // the backend's socket refused the connection
	DropOKTimeout                      // no INBOUND_TCP_OK in time
	DropBadOK                          // the backend sent something else, or closed
	DropStandinRange                   // an IPv4 client within the stand-in range
	DropNoStandin                      // an IPv6 client that could be given no stand-in
	numDrops
)

var dropNames = [numDrops]string{"no_backend", "dial_error", "ok_timeout", "bad_ok", "standin_range", "no_standin"}

// tableDrops names, for each reason the remotes table gives for serving
// no client, the drop counted.
var tableDrops = [...]DropReason{remotes.DropStandinRange: DropStandinRange, remotes.DropNoStandin: DropNoStandin}

func (r DropReason) String() string {
	if r < numDrops {
		return dropNames[r]
	}
	return "unknown"
}

// Proxy is the TCP half of the balancer.
type Proxy struct {
	lns []*net.TCPListener
	cfg Config
	log zerolog.Logger

	nextID       atomic.Uint64
	total        atomic.Uint64
	active       atomic.Int64
	acceptErrors atomic.Uint64
	accepting    atomic.Bool // between Start and StopAccepting
	acceptLog    *timeouts.Limiter
	drops        [numDrops]atomic.Uint64
	limits       [numLimits]atomic.Uint64
	limitLogs    [numLimits]*timeouts.Limiter
	sweepT       *timeouts.Timeout

	mu       sync.Mutex
	sessions map[*session]struct{}
	perIP    map[netip.Addr]int
	closed   bool
	idle     chan struct{} // closed when the last session ends; nil while no one waits

	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New returns a proxy accepting on lns (at least one), which it owns
// from then on.
func New(lns []*net.TCPListener, cfg Config) *Proxy {
	cfg.OKTimeout = cmp.Or(cfg.OKTimeout, DefaultOKTimeout)
	cfg.DrainTimeout = cmp.Or(cfg.DrainTimeout, DefaultDrainTimeout)
	cfg.MaxConns = cmp.Or(cfg.MaxConns, DefaultMaxConns)
	cfg.MaxConnsPerIP = cmp.Or(cfg.MaxConnsPerIP, DefaultMaxConnsPerIP)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxLifetime = cmp.Or(cfg.MaxLifetime, DefaultMaxLifetime)
	cfg.AnswerTimeout = cmp.Or(cfg.AnswerTimeout, DefaultAnswerTimeout)
	ctx, stop := context.WithCancel(context.Background())
	clock := cfg.Timeouts.Clock()
	p := &Proxy{lns: lns, cfg: cfg, log: cfg.Log, sessions: map[*session]struct{}{}, perIP: map[netip.Addr]int{},
		ctx: ctx, stop: stop, acceptLog: timeouts.NewLimiter(clock, 5*time.Second)}
	for i := range p.limitLogs {
		p.limitLogs[i] = timeouts.NewLimiter(clock, 5*time.Second)
	}
	p.sweepT = cfg.Timeouts.NewTimeout("tcp sessions sweep", p.sweep)
	return p
}

// Addr returns the first listener's address.
func (p *Proxy) Addr() net.Addr { return p.lns[0].Addr() }

// Start starts accepting, a goroutine per listener.
func (p *Proxy) Start() {
	p.accepting.Store(true)
	p.sweepT.Set(sweepInterval)
	for _, ln := range p.lns {
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
}

// StopAccepting closes the listeners; the sessions go on. A process
// handing over to its successor, which accepts on the same sockets from
// then on, does this and then waits for its sessions with Wait.
func (p *Proxy) StopAccepting() {
	p.accepting.Store(false)
	for _, ln := range p.lns {
		ln.Close()
	}
}

// Wait waits until no session is left, woken when the last one ends, or
// until ctx is done, and reports whether none is.
func (p *Proxy) Wait(ctx context.Context) bool {
	p.mu.Lock()
	if len(p.sessions) == 0 {
		p.mu.Unlock()
		return true
	}
	if p.idle == nil {
		p.idle = make(chan struct{})
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// Serving reports whether the proxy accepts connections: started, and
// not stopped by StopAccepting or Close.
func (p *Proxy) Serving() bool { return p.accepting.Load() }

// Listeners returns the listeners, in order: a successor process
// inherits them.
func (p *Proxy) Listeners() []*net.TCPListener { return p.lns }

// Close stops accepting, ends every session and waits for them: it
// releases each session's I/O with deadlines, and the session's own
// goroutine closes its sockets.
func (p *Proxy) Close() {
	p.sweepT.Clear()
	p.stop()
	p.StopAccepting()
	p.mu.Lock()
	p.closed = true
	for s := range p.sessions {
		s.abort()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) acceptLoop(ln *net.TCPListener) {
	defer p.wg.Done()
	backoff := time.Duration(0)
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.acceptErrors.Add(1)
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			if ok, held := p.acceptLog.Allow(); ok {
				p.log.Warn().Err(err).Dur("backoff", backoff).Int64("suppressed", held).
					Msg("incoming TCP accept failure")
			}
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		p.admit(c)
	}
}

// admit starts a session for c, or closes it when a limit is reached.
func (p *Proxy) admit(c *net.TCPConn) {
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	addr := from.Addr().Unmap()
	now := p.cfg.Timeouts.Clock().Now().UnixNano()
	s := &session{p: p, front: c, id: p.nextID.Add(1), addr: addr, port: from.Port(), accepted: now}
	s.lastActive.Store(now)
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		c.Close()
		return
	case len(p.sessions) >= p.cfg.MaxConns:
		p.mu.Unlock()
		p.limitHit(LimitConns, addr, p.cfg.MaxConns)
		c.Close()
		return
	case p.perIP[addr] >= p.cfg.MaxConnsPerIP:
		p.mu.Unlock()
		p.limitHit(LimitPerIP, addr, p.cfg.MaxConnsPerIP)
		c.Close()
		return
	}
	p.sessions[s] = struct{}{}
	p.perIP[addr]++
	p.wg.Add(1)
	p.mu.Unlock()
	p.total.Add(1)
	p.active.Add(1)
	go s.serve()
}

// limitHit counts a connection closed by limit l, and logs it at most
// once per 5 s. It is called by the goroutine that closes the connection,
// never on the timers' (a log write can block).
func (p *Proxy) limitHit(l Limit, addr netip.Addr, value any) {
	p.limits[l].Add(1)
	if ok, held := p.limitLogs[l].Allow(); ok {
		p.log.Warn().Str("limit", l.String()).Interface("value", value).Stringer("remote_ip", addr).
			Int64("suppressed", held).Msg("TCP connection closed by a limit")
	}
}

// sweep ends the sessions past a limit: the lifetime, an answer left
// unread by the client or owed by the backend, or idleness. It runs on
// the timers' goroutine every sweepInterval, and so must not block: it
// marks each session with its limit and releases the session's I/O
// ([session.expire]); the session's goroutine closes, counts and logs.
func (p *Proxy) sweep() {
	now := p.cfg.Timeouts.Clock().Now().UnixNano()
	idle, life, answer := int64(p.cfg.IdleTimeout), int64(p.cfg.MaxLifetime), int64(p.cfg.AnswerTimeout)
	p.mu.Lock()
	for s := range p.sessions {
		if now-s.accepted >= life {
			s.expire(LimitLifetime)
			continue
		}
		if !s.piping.Load() {
			continue // OKTimeout bounds the handshake
		}
		owed := s.queries.Load() > s.answers.Load()
		switch w := s.writeSince.Load(); {
		case w != 0 && now-w >= idle:
			s.expire(LimitUnread)
		case owed && now-s.owedSince.Load() >= answer:
			s.expire(LimitAnswer)
		case !owed && now-s.lastActive.Load() >= idle:
			s.expire(LimitIdle)
		}
	}
	p.mu.Unlock()
	p.sweepT.Again(sweepInterval)
}

// limitValue is what the log record of limit l gives as its value.
func (p *Proxy) limitValue(l Limit) string {
	switch l {
	case LimitLifetime:
		return p.cfg.MaxLifetime.String()
	case LimitAnswer:
		return p.cfg.AnswerTimeout.String()
	}
	return p.cfg.IdleTimeout.String()
}

// session is one proxied client connection.
type session struct {
	p     *Proxy
	id    uint64
	front *net.TCPConn

	mu        sync.Mutex // guards back, closed
	back      *net.UnixConn
	closed    bool
	timedOut  atomic.Bool  // INBOUND_TCP_OK came too late
	drainLate atomic.Bool  // the backend did not finish in DrainTimeout
	limit     atomic.Int32 // 1 + the Limit that ended the session (sweep's); 0 while none

	addr      netip.Addr // the client's
	port      uint16
	backendID backend.ID

	// For the sweep's limits, in unix nanoseconds on the timers' clock:
	// when the connection was accepted and last carried a complete
	// message, since when the backend has owed an answer (the query, or
	// the last answer, whichever is later), and since when a write of
	// answers to the client has been pending (0 while none is); and the
	// queries and answers that have passed.
	accepted   int64
	piping     atomic.Bool // past INBOUND_TCP_OK: the idle, unread and answer limits apply
	lastActive atomic.Int64
	owedSince  atomic.Int64
	writeSince atomic.Int64
	queries    atomic.Int64
	answers    atomic.Int64
}

func (s *session) sawQueries(n int) {
	now := s.p.cfg.Timeouts.Clock().Now().UnixNano()
	if s.queries.Add(int64(n))-int64(n) <= s.answers.Load() {
		s.owedSince.Store(now) // nothing was owed: the wait starts
	}
	s.lastActive.Store(now)
}

func (s *session) sawAnswers(n int) {
	now := s.p.cfg.Timeouts.Clock().Now().UnixNano()
	s.answers.Add(int64(n))
	s.owedSince.Store(now)
	s.lastActive.Store(now)
}

// event adds the session's context fields (the original's child logger
// keys) to e; nothing is built for a disabled level.
func (s *session) event(e *zerolog.Event) *zerolog.Event {
	return e.Uint64("conn_id", s.id).Stringer("remote_ip", s.addr).
		Uint16("remote_port", s.port).Uint16("backend", uint16(s.backendID))
}

// expired is a time long past: a deadline set to it fails every read and
// write in progress or to come at once.
var expired = time.Unix(1, 0)

// abort ends the session without waiting for anything: it marks it
// closed and sets both sockets' deadlines in the past, which returns
// every read and write in progress on them, the copiers' included, with
// an error. Any goroutine may call it, holding any lock; the session's
// own goroutines then close the sockets.
//
// Closing would not do: a copier reads the client's socket in its raw
// connection's callback and writes to the backend from within it, and
// closing a socket waits until the reads in progress on it have
// returned, which a write blocked on a backend that reads no more never
// does.
func (s *session) abort() {
	s.mu.Lock()
	s.closed = true
	back := s.back
	s.mu.Unlock()
	s.front.SetDeadline(expired)
	if back != nil {
		back.SetDeadline(expired)
	}
}

// expire aborts the session for limit l, unless a limit already has.
func (s *session) expire(l Limit) {
	if s.limit.CompareAndSwap(0, int32(l)+1) {
		s.abort()
	}
}

// closeBoth closes both sockets, having released their I/O first, so
// that it waits on nothing of its own. serve calls it last, when the
// copiers are done.
func (s *session) closeBoth() {
	s.abort()
	s.mu.Lock()
	back := s.back
	s.mu.Unlock()
	s.front.Close()
	if back != nil {
		back.Close()
	}
}

func (s *session) drop(r DropReason) {
	s.p.drops[r].Add(1)
}

func (s *session) serve() {
	p := s.p
	defer func() {
		if l := s.limit.Load(); l != 0 {
			p.limitHit(Limit(l-1), s.addr, p.limitValue(Limit(l-1)))
		}
		s.closeBoth()
		p.mu.Lock()
		delete(p.sessions, s)
		if p.perIP[s.addr]--; p.perIP[s.addr] <= 0 {
			delete(p.perIP, s.addr)
		}
		if len(p.sessions) == 0 && p.idle != nil {
			close(p.idle)
			p.idle = nil
		}
		p.mu.Unlock()
		p.active.Add(-1)
		p.wg.Done()
	}()

	if e := p.log.Debug(); e != nil {
		e.Uint64("conn_id", s.id).Stringer("remote_ip", s.addr).Uint16("remote_port", s.port).
			Msg("inbound TCP connection")
	}
	rt := p.cfg.Table.Route(s.addr)
	if rt.Drop != remotes.NotDropped {
		s.drop(tableDrops[rt.Drop])
		return
	}
	rem, id := rt.Remote, rt.Backend
	s.backendID = id
	be := p.cfg.Backends.Get(id)
	if be == nil {
		rem.CountDrop()
		s.drop(DropNoBackend)
		return
	}

	back, err := be.DialTCP(p.ctx)
	if err != nil {
		rem.CountDrop()
		s.drop(DropDial)
		s.event(p.log.Warn()).Err(err).Msg("could not connect to backend for TCP")
		return
	}
	defer be.TCPDone()
	if e := p.log.Debug(); e != nil {
		s.event(e).Msg("connected to backend")
	}
	defer func() {
		if e := p.log.Debug(); e != nil {
			s.event(e).Msg("proxy connection finished")
		}
	}()
	s.mu.Lock()
	s.back = back
	closed := s.closed
	s.mu.Unlock()
	if closed {
		back.Close()
		return
	}

	if !s.handshake(be, rt.Wire) {
		rem.CountDrop()
		return
	}
	rem.CountTCP()
	if e := p.log.Debug(); e != nil {
		s.event(e).Msg("backend reports TCP OK")
	}
	s.lastActive.Store(p.cfg.Timeouts.Clock().Now().UnixNano())
	s.piping.Store(true)
	s.pipe()
}

// handshake sends INBOUND_TCP and waits for INBOUND_TCP_OK, reading
// exactly the four bytes of it so that what follows stays in the socket
// for the pipe.
func (s *session) handshake(be *backend.Backend, ip uint32) bool {
	p := s.p
	// Armed before INBOUND_TCP is sent, so that the wait is under way
	// by the time the backend can see the frame.
	t := p.cfg.Timeouts.NewTimeout("tcp "+strconv.FormatUint(s.id, 10)+" inbound_tcp_ok", func() {
		s.timedOut.Store(true)
		s.back.SetDeadline(expired) // not Close: that would wait for the read
	})
	t.Set(p.cfg.OKTimeout)
	defer t.Clear()
	if _, err := s.back.Write(protocol.AppendInboundTCP(make([]byte, 0, protocol.InboundTCPLen), ip, s.port)); err != nil {
		s.drop(DropBadOK)
		s.event(p.log.Warn()).Err(err).Msg("backend hello frame send failed")
		return false
	}
	var ok [protocol.TypeLen]byte
	_, err := io.ReadFull(s.back, ok[:])
	t.Clear()
	switch {
	case s.timedOut.Load():
		s.drop(DropOKTimeout)
		s.event(p.log.Error()).Msg("timed out connecting to backend")
		be.FaultTCPTimeout()
		return false
	case err != nil:
		s.drop(DropBadOK)
		s.event(p.log.Warn()).Err(err).Msg("backend closed before INBOUND_TCP_OK")
		return false
	}
	if ft := protocol.FrameType(binary.LittleEndian.Uint32(ok[:])); ft != protocol.FrameInboundTCPOK {
		s.drop(DropBadOK)
		s.event(p.log.Warn()).Uint32("frame_type", uint32(ft)).Msg("backend invalid TCP OK")
		return false
	}
	return true
}

// pipe copies both ways until both directions are done, passing each EOF
// on as a half-close. An error either way closes both connections, as
// does a backend that has not finished DrainTimeout after the client's
// half-close.
func (s *session) pipe() {
	drain := s.p.cfg.Timeouts.NewTimeout("tcp "+strconv.FormatUint(s.id, 10)+" drain", func() {
		s.drainLate.Store(true)
		s.abort()
	})
	defer drain.Clear()
	toBack, err := newCopier(s.back, s.front, s.sawQueries)
	if err != nil {
		s.copyFailed("front", err)
		return
	}
	toFront, err := newCopier(s.front, s.back, s.sawAnswers)
	if err != nil {
		s.copyFailed("back", err)
		return
	}
	toFront.pending, toFront.clock = &s.writeSince, s.p.cfg.Timeouts.Clock()
	done := make(chan struct{})
	go s.copyToBackend(toBack, done, drain)
	if err := toFront.run(); err != nil {
		s.copyFailed("back", err)
	} else {
		if e := s.p.log.Trace(); e != nil {
			s.event(e).Str("which", "back").Msg("TCP stream EOF")
		}
		s.front.CloseWrite()
	}
	<-done
	if e := s.p.log.Debug(); e != nil && s.drainLate.Load() {
		s.event(e).Msg("backend did not finish after client EOF")
	}
}

func (s *session) copyToBackend(c *copier, done chan<- struct{}, drain *timeouts.Timeout) {
	defer close(done)
	if err := c.run(); err != nil {
		s.copyFailed("front", err)
		return
	}
	if e := s.p.log.Trace(); e != nil {
		s.event(e).Str("which", "front").Msg("TCP stream EOF")
	}
	drain.Set(s.p.cfg.DrainTimeout)
	s.back.CloseWrite()
}

func (s *session) copyFailed(which string, err error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if !closed && !errors.Is(err, net.ErrClosed) {
		s.event(s.p.log.Debug()).Str("which", which).Err(err).Msg("TCP error")
	}
	s.abort() // the other copier too; serve closes once both are done
}

// ResetCounters sets the proxy's counters back to zero; the active
// session count is a gauge and stays.
func (p *Proxy) ResetCounters() {
	counterTable.Reset(p)
	for i := range p.drops {
		p.drops[i].Store(0)
	}
	for i := range p.limits {
		p.limits[i].Store(0)
	}
}

// Counter is one of the proxy's plain counts; Counters lists them.
type Counter = counter.Counter[Proxy, Counts]

// counterTable is the one list of the proxy's plain counts. It drives
// Stats, ResetCounters and, through Counters, the metrics. The
// connection path updates the fields directly.
var counterTable = counter.Table[Proxy, Counts]{
	{Metric: "bbal_tcp_connections_total", Help: "Client TCP connections accepted.", Field: func(p *Proxy) counter.Value { return &p.total }, Stat: func(s *Counts) *uint64 { return &s.Total }},
	{Metric: "bbal_tcp_accept_errors_total", Help: "Failed accepts on the DNS TCP socket.", Field: func(p *Proxy) counter.Value { return &p.acceptErrors }, Stat: func(s *Counts) *uint64 { return &s.AcceptErrors }},
}

// Counters returns the table of the proxy's plain counts, for the
// metrics. The active connections (a gauge), the drops by reason and
// the limits are not in it.
func Counters() []Counter { return slices.Clone(counterTable) }

// Stats is a snapshot of the proxy's counters.
type Stats struct {
	Counts
	Active int64
	Drops  map[string]uint64
	Limits map[string]uint64 // connections closed by each limit
}

// Counts are the proxy's plain counts, as counterTable loads them; the
// debug API shows them with these names.
type Counts struct {
	Total        uint64 `json:"total"`
	AcceptErrors uint64 `json:"accept_errors"`
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	s := Stats{Active: p.active.Load(), Drops: make(map[string]uint64, numDrops)}
	counterTable.Load(p, &s.Counts)
	for r := range numDrops {
		s.Drops[r.String()] = p.drops[r].Load()
	}
	s.Limits = make(map[string]uint64, numLimits)
	for l := range numLimits {
		s.Limits[l.String()] = p.limits[l].Load()
	}
	return s
}
