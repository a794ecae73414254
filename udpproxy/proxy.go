package udpproxy

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

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

// DropReasons lists every drop reason, in order.
func DropReasons() []DropReason {
	out := make([]DropReason, numDrops)
	for i := range out {
		out[i] = DropReason(i)
	}
	return out
}

// readBufferLen is the read buffer: the frame header, then room for the
// largest UDP payload so that an oversized datagram is seen whole (and
// its true length logged) rather than truncated.
const readBufferLen = protocol.UDPHeaderLen + 65535

// Proxy is the UDP half of the balancer.
type Proxy struct {
	conn     *net.UDPConn
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

	wg   sync.WaitGroup
	once sync.Once
}

// New returns a proxy on conn, which it owns from then on. Its Reply may
// be used at once; nothing is read until Start.
func New(conn *net.UDPConn, clock timeouts.Clock, log zerolog.Logger) *Proxy {
	return &Proxy{conn: conn, log: log, oversizeLog: timeouts.NewLimiter(clock, 5*time.Second)}
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

// Close closes the socket and waits for the reader to stop.
func (p *Proxy) Close() {
	p.once.Do(func() { p.conn.Close() })
	p.wg.Wait()
}

// Reply sends data to a client from the DNS socket. It is the backends'
// Config.Reply.
func (p *Proxy) Reply(data []byte, to netip.AddrPort) error {
	if _, err := p.conn.WriteToUDPAddrPort(data, to); err != nil {
		p.sendErrors.Add(1)
		return err
	}
	p.packetsOut.Add(1)
	p.bytesOut.Add(uint64(len(data)))
	return nil
}

func (p *Proxy) readLoop() {
	defer p.wg.Done()
	buf := make([]byte, readBufferLen)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf[protocol.UDPHeaderLen:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors and the like surface here on Linux; they
			// concern one earlier datagram, not the socket.
			p.log.Debug().Err(err).Msg("UDP read error")
			continue
		}
		p.handle(buf, n, from)
	}
}

// handle routes one datagram of n bytes, read at buf[UDPHeaderLen:].
func (p *Proxy) handle(buf []byte, n int, from netip.AddrPort) {
	p.packetsIn.Add(1)
	p.bytesIn.Add(uint64(n))
	addr := from.Addr().Unmap()
	if !addr.Is4() {
		p.drops[DropNotIPv4].Add(1)
		return
	}
	if n < dnsHeaderLen {
		p.drop(DropRunt)
		return
	}
	if n > protocol.MaxData {
		// Refused before it can create a remote: a flood of these
		// from spoofed sources must not fill the table.
		p.drop(DropOversized)
		p.warnOversized(addr, n)
		return
	}
	ip := protocol.AddrToU32(addr)
	rem, id := p.table.Route(ip)
	if e := p.log.Trace(); e != nil {
		e.Stringer("remote_ip", addr).Uint16("remote_port", from.Port()).Int("len", n).
			Msg("received UDP packet from remote")
	}
	be := p.backends.Get(id)
	if be == nil {
		rem.CountDrop()
		p.drop(DropNoBackend)
		return
	}
	protocol.PutUDPHeader(buf, protocol.FrameInboundUDP, ip, from.Port(), n)
	if !be.SendUDP(buf[:protocol.UDPHeaderLen+n]) {
		rem.CountDrop()
		if be.OK() {
			p.drop(DropStuck)
		} else {
			p.drop(DropDown)
		}
		return
	}
	rem.CountUDP()
}

func (p *Proxy) drop(r DropReason) { p.drops[r].Add(1) }

func (p *Proxy) warnOversized(addr netip.Addr, n int) {
	if ok, held := p.oversizeLog.Allow(); ok {
		p.log.Warn().Stringer("remote_ip", addr).Int("len", n).Int64("suppressed", held).
			Msg("dropping oversized UDP packet")
	}
}

// ResetCounters sets the proxy's counters back to zero.
func (p *Proxy) ResetCounters() {
	for _, c := range []*atomic.Uint64{&p.packetsIn, &p.bytesIn, &p.packetsOut, &p.bytesOut, &p.sendErrors} {
		c.Store(0)
	}
	for i := range p.drops {
		p.drops[i].Store(0)
	}
}

// Stats is a snapshot of the proxy's counters.
type Stats struct {
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
		Drops:      make(map[string]uint64, numDrops),
	}
	for r := range numDrops {
		s.Drops[r.String()] = p.drops[r].Load()
	}
	return s
}
