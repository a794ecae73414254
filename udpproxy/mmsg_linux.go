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

// mmsghdr is the kernel's struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// recvBatch is the UDP reader's set of buffers for recvmmsg, allocated
// once.
type recvBatch struct {
	hdrs  [batchLen]mmsghdr
	iovs  [batchLen]unix.Iovec
	names [batchLen]unix.RawSockaddrInet4
	bufs  [batchLen][]byte // each slotLen; the datagram starts at UDPHeaderLen

	// The callback for RawConn.Read, made once; what the reader does with
	// each batch; the error that ended a run.
	readFn  func(fd uintptr) bool
	process func(n int)
	err     error
}

func newRecvBatch(process func(n int)) *recvBatch {
	r := &recvBatch{process: process}
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

func (r *recvBatch) recvmmsg(fd uintptr) bool {
	for {
		for i := range r.hdrs {
			r.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
			r.hdrs[i].hdr.Flags = 0
		}
		m, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), batchLen,
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		switch e {
		case 0:
			r.process(int(m))
			if m < batchLen {
				return false
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.err = e
			return true
		}
	}
}

// datagram returns the i'th datagram's true length (which may exceed its
// buffer) and source.
func (r *recvBatch) datagram(i int) (n int, ip uint32, port uint16, ok bool) {
	name := &r.names[i]
	if r.hdrs[i].hdr.Namelen < unix.SizeofSockaddrInet4 || name.Family != unix.AF_INET {
		return int(r.hdrs[i].n), 0, 0, false
	}
	port = binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
	return int(r.hdrs[i].n), binary.BigEndian.Uint32(name.Addr[:]), port, true
}

// sendBatch collects replies for one sendmmsg. It is one session
// reader's own.
type sendBatch struct {
	p     *Proxy
	n     int
	hdrs  [batchLen]mmsghdr
	iovs  [batchLen]unix.Iovec
	names [batchLen]unix.RawSockaddrInet4

	// The callback for RawConn.Write, made once, and its state.
	writeFn func(fd uintptr) bool
	sent    int
	m       int
	err     error
}

func (p *Proxy) newSendBatch() *sendBatch {
	b := &sendBatch{p: p}
	for i := range b.hdrs {
		h := &b.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		b.names[i].Family = unix.AF_INET
	}
	b.writeFn = b.sendmmsg
	return b
}

// Add queues data for to, sending the batch first if it is full.
func (b *sendBatch) Add(data []byte, to netip.AddrPort) {
	if len(data) == 0 {
		return
	}
	if b.n == batchLen {
		b.flush()
	}
	i := b.n
	b.iovs[i].Base = &data[0]
	b.iovs[i].SetLen(len(data))
	b.names[i].Addr = to.Addr().As4()
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&b.names[i].Port))[:], to.Port())
	b.n++
}

// Flush sends what was added; it returns how many could not be sent.
func (b *sendBatch) Flush() int { return b.flush() }

func (b *sendBatch) flush() (failed int) {
	p := b.p
	b.sent = 0
	for b.sent < b.n {
		b.m, b.err = 0, nil
		if err := p.raw.Write(b.writeFn); err != nil { // the socket is closed
			failed += b.n - b.sent
			break
		}
		if b.err != nil {
			// The first datagram of the rest could not be sent
			// (a routing error, say): count it and go on.
			p.sendFailed(b.err, &b.names[b.sent])
			failed++
			b.sent++
			continue
		}
		for i := b.sent; i < b.sent+b.m; i++ {
			p.bytesOut.Add(uint64(b.iovs[i].Len))
		}
		p.packetsOut.Add(uint64(b.m))
		b.sent += b.m
	}
	for i := range b.n {
		b.iovs[i].Base = nil // let go of the session's buffer
	}
	b.n = 0
	return failed
}

func (b *sendBatch) sendmmsg(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.sent])),
			uintptr(b.n-b.sent), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			b.m = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			b.err = e
			return true
		}
	}
}
