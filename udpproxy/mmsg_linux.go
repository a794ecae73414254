package udpproxy

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/protocol"
)

// batchLen is how many datagrams one recvmmsg or sendmmsg call moves at
// most. Sixty-four amortises the system call without holding a reply
// back.
const batchLen = 64

// slotLen is the buffer of one received datagram: the frame header, then
// the datagram. A longer datagram is truncated, but recvmmsg with
// MSG_TRUNC still reports its true length, so it is refused as
// oversized.
const slotLen = protocol.UDPHeaderLen + 2048

// ctlLen is the control buffer of one datagram: room for one IP_PKTINFO
// or IPV6_PKTINFO message.
const ctlLen = 64

// mmsghdr is the kernel's struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// recvBatch is a listener's reader's set of buffers for recvmmsg,
// allocated once.
type recvBatch struct {
	hdrs  [batchLen]mmsghdr
	iovs  [batchLen]unix.Iovec
	names [batchLen]unix.RawSockaddrInet6 // room for either family
	ctls  [batchLen][ctlLen]byte
	bufs  [batchLen][]byte // each slotLen; the datagram starts at UDPHeaderLen
	ctl   bool             // the listener asks for PKTINFO

	// The callback for RawConn.Read, made once; what the reader does with
	// each batch; the error that ended a run.
	readFn  func(fd uintptr) bool
	process func(n int)
	err     error
}

func newRecvBatch(ctl bool, process func(n int)) *recvBatch {
	r := &recvBatch{process: process, ctl: ctl}
	mem := make([]byte, batchLen*slotLen)
	for i := range r.hdrs {
		r.bufs[i] = mem[i*slotLen : (i+1)*slotLen : (i+1)*slotLen]
		data := r.bufs[i][protocol.UDPHeaderLen:]
		r.iovs[i].Base = &data[0]
		r.iovs[i].SetLen(len(data))
		h := &r.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if ctl {
			h.Control = &r.ctls[i][0]
		}
	}
	r.readFn = r.recvmmsg
	return r
}

// run receives datagrams and hands each batch to process, waiting in
// the runtime's poller when there are none, until the socket is closed
// (net.ErrClosed) or fails.
//
// A batch that does not fill every slot has emptied the socket's queue;
// the poller is edge-triggered and any datagram arriving after that
// signals it, so the reader can wait at once rather than spend a system
// call to see EAGAIN.
func (r *recvBatch) run(rc syscall.RawConn) error {
	r.err = nil
	if err := rc.Read(r.readFn); err != nil {
		return err
	}
	return r.err
}

// mmsg makes the recvmmsg or sendmmsg system call (trap) on fd for n
// messages from hdrs, again when a signal interrupts it, and returns how
// many it moved, or its error: EAGAIN when the socket has nothing to
// give or no room. An interrupted call has moved nothing, nor written
// to the headers.
func mmsg(trap, fd uintptr, hdrs *mmsghdr, n int, flags uintptr) (int, unix.Errno) {
	for {
		m, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(hdrs)), uintptr(n), flags, 0, 0)
		if e != unix.EINTR {
			return int(m), e
		}
	}
}

func (r *recvBatch) recvmmsg(fd uintptr) bool {
	for {
		for i := range r.hdrs {
			h := &r.hdrs[i].hdr
			h.Namelen = unix.SizeofSockaddrInet6
			h.Flags = 0
			if r.ctl {
				h.SetControllen(ctlLen)
			}
		}
		m, e := mmsg(unix.SYS_RECVMMSG, fd, &r.hdrs[0], batchLen, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		switch e {
		case 0:
			r.process(m)
			if m < batchLen {
				return false
			}
		case unix.EAGAIN:
			return false
		default:
			r.err = e
			return true
		}
	}
}

// datagram returns the i'th datagram's true length (which may exceed its
// buffer) and source (ok false: no usable source address).
func (r *recvBatch) datagram(i int) (n int, ip netip.Addr, port uint16, ok bool) {
	name := &r.names[i]
	h := &r.hdrs[i].hdr
	n = int(r.hdrs[i].n)
	switch {
	case name.Family == unix.AF_INET && h.Namelen >= unix.SizeofSockaddrInet4:
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		port = binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in4.Port))[:])
		return n, netip.AddrFrom4(in4.Addr), port, true
	case name.Family == unix.AF_INET6 && h.Namelen >= unix.SizeofSockaddrInet6:
		port = binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
		return n, netip.AddrFrom16(name.Addr).Unmap(), port, true
	}
	return n, netip.Addr{}, 0, false
}

// origin fills o with where the i'th datagram came in: its destination
// address and interface, from its PKTINFO control message.
func (r *recvBatch) origin(i int, o *origin) {
	o.ifindex, o.local = 0, [16]byte{}
	if !r.ctl {
		return
	}
	h := &r.hdrs[i].hdr
	ctl := r.ctls[i][:min(int(h.Controllen), ctlLen)]
	for len(ctl) >= unix.SizeofCmsghdr {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		clen := int(c.Len)
		if clen < unix.SizeofCmsghdr || clen > len(ctl) {
			return
		}
		data := ctl[unix.CmsgLen(0):clen]
		switch {
		case c.Level == unix.IPPROTO_IP && c.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			o.local = netip.AddrFrom4(pi.Addr).As16()
			o.ifindex = uint32(pi.Ifindex)
			return
		case c.Level == unix.IPPROTO_IPV6 && c.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			o.local = pi.Addr
			o.ifindex = pi.Ifindex
			return
		}
		ctl = ctl[min(unix.CmsgSpace(clen-unix.CmsgLen(0)), len(ctl)):]
	}
}

// sendQueue collects replies to send from one listener in one sendmmsg.
type sendQueue struct {
	p     *Proxy
	l     *listener
	n     int
	hdrs  [batchLen]mmsghdr
	iovs  [batchLen]unix.Iovec
	names [batchLen]unix.RawSockaddrInet6
	ctls  [batchLen][ctlLen]byte

	// The callback for RawConn.Write, made once, and its state.
	writeFn func(fd uintptr) bool
	sent    int
	m       int
	err     error
}

func newSendQueue(p *Proxy, l *listener) *sendQueue {
	q := &sendQueue{p: p, l: l}
	for i := range q.hdrs {
		h := &q.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&q.names[i]))
		h.Iov = &q.iovs[i]
		h.SetIovlen(1)
	}
	q.writeFn = q.sendmmsg
	return q
}

// add queues data for to (of the listener's family), from the address
// and interface in o when it has one. The queue must not be full.
func (q *sendQueue) add(data []byte, to netip.AddrPort, o *origin) {
	i := q.n
	q.iovs[i].Base = &data[0]
	q.iovs[i].SetLen(len(data))
	h := &q.hdrs[i].hdr
	name := &q.names[i]
	port := to.Port()
	if !q.l.v6 {
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		in4.Family = unix.AF_INET
		in4.Addr = to.Addr().As4()
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&in4.Port))[:], port)
		h.Namelen = unix.SizeofSockaddrInet4
	} else {
		name.Family = unix.AF_INET6
		name.Addr = to.Addr().As16()
		name.Scope_id = 0
		if to.Addr().IsLinkLocalUnicast() && o != nil {
			name.Scope_id = o.ifindex
		}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&name.Port))[:], port)
		h.Namelen = unix.SizeofSockaddrInet6
	}
	h.Control = nil
	h.SetControllen(0)
	if q.l.pktinfo {
		if n := putPktinfo(q.ctls[i][:], q.l.v6, o); n > 0 {
			h.Control = &q.ctls[i][0]
			h.SetControllen(n)
		}
	}
	q.n++
}

// putPktinfo writes into b (ctlLen bytes) the control message that sends
// a datagram from o's address, on a socket of the family v6 says, and
// returns its length: 0 when o has no address, and the kernel chooses.
func putPktinfo(b []byte, v6 bool, o *origin) int {
	if o == nil || o.local == ([16]byte{}) {
		return 0
	}
	c := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	if !v6 {
		c.Level, c.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		c.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		*pi = unix.Inet4Pktinfo{Spec_dst: netip.AddrFrom16(o.local).Unmap().As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	c.Level, c.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	c.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
	*pi = unix.Inet6Pktinfo{Addr: o.local}
	if netip.AddrFrom16(o.local).IsLinkLocalUnicast() {
		pi.Ifindex = o.ifindex // a link-local address needs its link
	}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// flush sends what was added; it returns how many could not be sent.
func (q *sendQueue) flush() (failed int) {
	p := q.p
	q.sent = 0
	for q.sent < q.n {
		q.m, q.err = 0, nil
		if err := q.l.raw.Write(q.writeFn); err != nil { // the socket is closed
			failed += q.n - q.sent
			break
		}
		if q.err != nil {
			// The first datagram of the rest could not be sent
			// (a routing error, say): count it and go on.
			p.sendFailed(q.err, q.dest(q.sent))
			failed++
			q.sent++
			continue
		}
		for i := q.sent; i < q.sent+q.m; i++ {
			p.bytesOut.Add(int(q.l.idx), uint64(q.iovs[i].Len))
		}
		p.packetsOut.Add(int(q.l.idx), uint64(q.m))
		q.sent += q.m
	}
	for i := range q.n {
		q.iovs[i].Base = nil // let go of the session's buffer
	}
	q.n = 0
	return failed
}

// dest returns the destination of the i'th datagram.
func (q *sendQueue) dest(i int) netip.AddrPort {
	name := &q.names[i]
	if !q.l.v6 {
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), port)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom16(name.Addr), port)
}

func (q *sendQueue) sendmmsg(fd uintptr) bool {
	m, e := mmsg(unix.SYS_SENDMMSG, fd, &q.hdrs[q.sent], q.n-q.sent, unix.MSG_DONTWAIT)
	switch e {
	case 0:
		q.m = m
		return true
	case unix.EAGAIN:
		return false
	default:
		q.err = e
		return true
	}
}
