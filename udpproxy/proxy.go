package udpproxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
)

// Drop reasons.
type DropReason uint8

const (
	DropOversized DropReason = iota // datagram over 1500 bytes
	DropNoBackend                   // no backend ok
	DropStuck                       // the backend's queue is full
	DropDown                        // the backend went down before the send
	DropNotIPv4                     // the source address is not IPv4
	DropRunt                        // datagram shorter than a DNS header
	numDrops
)

var dropNames = [numDrops]string{"oversized", "no_backend", "stuck", "down", "not_ipv4", "runt"}

// dnsHeaderLen is the length of a DNS message header: nothing shorter can
// be a query, and no backend could answer it.
const dnsHeaderLen = 12

func (r DropReason) String() string {
	if r < numDrops {
		return dropNames[r]
	}
	return "unknown"
}

// Proxy is the UDP half of the balancer.
type Proxy struct {
	conn     *net.UDPConn
	raw      syscall.RawConn
	clock    timeouts.Clock
	table    *remotes.Table
	backends *backend.Set
	log      zerolog.Logger

	packetsIn  atomic.Uint64
	bytesIn    atomic.Uint64
	packetsOut atomic.Uint64
	bytesOut   atomic.Uint64
	sendErrors atomic.Uint64
	drops      [numDrops]atomic.Uint64

	oversizeLog *timeouts.Limiter
	sendLog     *timeouts.Limiter

	// servfail, when set, answers a query SERVFAIL when no backend is
	// available instead of dropping it; out is the reader's scratch.
	servfail  bool
	servfails atomic.Uint64
	out       []byte

	wg       sync.WaitGroup
	once     sync.Once
	stopping atomic.Bool // StopReading was called
}

// New returns a proxy on conn, which it owns from then on. Its Reply may
// be used at once; nothing is read until Start.
func New(conn *net.UDPConn, clock timeouts.Clock, log zerolog.Logger) (*Proxy, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &Proxy{conn: conn, raw: raw, clock: clock, log: log,
		oversizeLog: timeouts.NewLimiter(clock, 5*time.Second),
		sendLog:     timeouts.NewLimiter(clock, 5*time.Second),
	}, nil
}

// ServfailWhenDown makes the proxy answer SERVFAIL, rather than drop, a
// query that finds no backend available. Call it before Start.
func (p *Proxy) ServfailWhenDown() {
	p.servfail = true
	p.out = make([]byte, 0, protocol.MaxData)
}

// Replies returns a new batch of replies to send from the DNS socket: the
// backends' Config.Replies.
func (p *Proxy) Replies() backend.ReplyBatch { return p.newSendBatch() }

// sendFailed counts a reply that could not be sent, and logs it at most
// once per 5 s.
func (p *Proxy) sendFailed(err error, to *unix.RawSockaddrInet4) {
	p.sendErrors.Add(1)
	if ok, held := p.sendLog.Allow(); ok {
		port := uint16(to.Port>>8 | to.Port<<8)
		p.log.Error().Err(err).Stringer("dest", netip.AddrPortFrom(netip.AddrFrom4(to.Addr), port)).
			Int64("suppressed", held).Msg("outbound UDP packet error")
	}
}

// Addr returns the socket's local address.
func (p *Proxy) Addr() netip.AddrPort {
	return p.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Start starts the reader goroutine, routing datagrams with table to
// backends. (The backends need Reply before they exist, hence the late
// binding.)
func (p *Proxy) Start(table *remotes.Table, backends *backend.Set) {
	p.table, p.backends = table, backends
	p.wg.Add(1)
	go p.readLoop()
}

// StopReading stops the reader but keeps the socket, so that replies to
// queries already sent on can still go out: a process handing over to
// its successor, which reads the same socket from then on, does this.
func (p *Proxy) StopReading() {
	p.stopping.Store(true)
	p.conn.SetReadDeadline(time.Now())
	p.wg.Wait()
}

// File returns a duplicate of the socket's descriptor, for a successor
// process.
func (p *Proxy) File() (*os.File, error) { return p.conn.File() }

// Close closes the socket and waits for the reader to stop.
func (p *Proxy) Close() {
	p.once.Do(func() { p.conn.Close() })
	p.wg.Wait()
}

func (p *Proxy) readLoop() {
	defer p.wg.Done()
	touched := make([]*backend.Backend, 0, batchLen)
	var r *recvBatch
	r = newRecvBatch(func(n int) {
		now := p.clock.Now().UnixNano()
		for i := range n {
			size, ip, port, ok := r.datagram(i)
			if be := p.handle(r.bufs[i], size, ip, port, ok, now); be != nil && !slices.Contains(touched, be) {
				touched = append(touched, be)
			}
		}
		// One write per backend for the whole batch.
		for i, be := range touched {
			be.Flush(now)
			touched[i] = nil
		}
		touched = touched[:0]
	})
	for {
		err := r.run(p.raw)
		if errors.Is(err, net.ErrClosed) || p.stopping.Load() {
			return
		}
		// ICMP errors and the like surface here on Linux; they concern
		// one earlier datagram, not the socket.
		p.log.Debug().Err(err).Msg("UDP read error")
	}
}

// handle routes one datagram of n bytes from ip:port (ok false: not
// IPv4), read at buf[UDPHeaderLen:] at now, and returns the backend it was
// queued for.
func (p *Proxy) handle(buf []byte, n int, ip uint32, port uint16, ok bool, now int64) *backend.Backend {
	p.packetsIn.Add(1)
	p.bytesIn.Add(uint64(n))
	switch {
	case !ok:
		p.drop(DropNotIPv4)
		return nil
	case n < dnsHeaderLen:
		p.drop(DropRunt)
		return nil
	case n > protocol.MaxData:
		// Refused before it can create a remote: a flood of these
		// from spoofed sources must not fill the table.
		p.drop(DropOversized)
		p.warnOversized(ip, n)
		return nil
	}
	if e := p.log.Trace(); e != nil {
		e.Stringer("remote_ip", protocol.U32ToAddr(ip)).Uint16("remote_port", port).Int("len", n).
			Msg("received UDP packet from remote")
	}
	rem, id := p.table.RouteAt(ip, now)
	be := p.backends.Get(id)
	if be == nil {
		rem.CountDrop()
		p.drop(DropNoBackend)
		if p.servfail {
			p.answerServfail(buf[protocol.UDPHeaderLen:protocol.UDPHeaderLen+n], ip, port)
		}
		return nil
	}
	protocol.PutUDPHeader(buf, protocol.FrameInboundUDP, ip, port, n)
	if !be.SendUDP(buf[:protocol.UDPHeaderLen+n], now) {
		rem.CountDrop()
		if be.OK() {
			p.drop(DropStuck)
		} else {
			p.drop(DropDown)
		}
		return nil
	}
	rem.CountUDP()
	return be
}

func (p *Proxy) drop(r DropReason) { p.drops[r].Add(1) }

func (p *Proxy) answerServfail(query []byte, ip uint32, port uint16) {
	resp := servfail(query, p.out)
	if resp == nil {
		return
	}
	to := netip.AddrPortFrom(protocol.U32ToAddr(ip), port)
	if _, err := p.conn.WriteToUDPAddrPort(resp, to); err != nil {
		p.sendErrors.Add(1)
		return
	}
	p.servfails.Add(1)
	p.packetsOut.Add(1)
	p.bytesOut.Add(uint64(len(resp)))
}

func (p *Proxy) warnOversized(ip uint32, n int) {
	if ok, held := p.oversizeLog.Allow(); ok {
		p.log.Warn().Stringer("remote_ip", protocol.U32ToAddr(ip)).Int("len", n).Int64("suppressed", held).
			Msg("dropping oversized UDP packet")
	}
}

// ResetCounters sets the proxy's counters back to zero.
func (p *Proxy) ResetCounters() {
	for _, c := range []*atomic.Uint64{&p.packetsIn, &p.bytesIn, &p.packetsOut, &p.bytesOut, &p.sendErrors, &p.servfails} {
		c.Store(0)
	}
	for i := range p.drops {
		p.drops[i].Store(0)
	}
}

// Stats is a snapshot of the proxy's counters.
type Stats struct {
	Servfails  uint64 // queries answered SERVFAIL for want of a backend
	PacketsIn  uint64
	BytesIn    uint64
	PacketsOut uint64
	BytesOut   uint64
	SendErrors uint64
	Drops      map[string]uint64
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	s := Stats{
		PacketsIn: p.packetsIn.Load(), BytesIn: p.bytesIn.Load(),
		PacketsOut: p.packetsOut.Load(), BytesOut: p.bytesOut.Load(),
		SendErrors: p.sendErrors.Load(),
		Servfails:  p.servfails.Load(),
		Drops:      make(map[string]uint64, numDrops),
	}
	for r := range numDrops {
		s.Drops[r.String()] = p.drops[r].Load()
	}
	return s
}
