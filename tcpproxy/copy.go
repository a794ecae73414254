package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
)

// copyBufferLen is the buffer of one read: many pipelined DNS messages.
const copyBufferLen = 16 << 10

// buffers are shared by all sessions; a copier holds one only while it
// moves data, so idle connections cost no buffer.
var buffers = sync.Pool{New: func() any { b := make([]byte, copyBufferLen); return &b }}

// copier moves bytes from one connection to another. DNS messages are
// small: a read and a write cost less than the two splices through a pipe
// that io.Copy would use (measured: see BENCHMARKS.md).
//
// It reads until EAGAIN before waiting: on a stream socket a short read
// does not mean nothing is pending, as the peer's FIN may have come with
// the last bytes and will raise no further edge.
type copier struct {
	dst    net.Conn
	src    syscall.RawConn
	readFn func(fd uintptr) bool
	n      int64 // bytes copied
	eof    bool
	err    error // the read or write error that ended the copy

	// The DNS messages that pass, counted by following the two-byte
	// length framing, are reported to onMessages.
	framing    framer
	onMessages func(n int)

	// When pending is set, it holds the time on clock (unix nanoseconds)
	// at which the write in progress to dst began, and 0 between writes:
	// the sweep reads how long the peer has left it unread.
	pending *atomic.Int64
	clock   timeouts.Clock
}

func newCopier(dst net.Conn, src syscall.Conn, onMessages func(int)) (*copier, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &copier{dst: dst, src: raw, onMessages: onMessages}
	c.readFn = c.read
	return c, nil
}

// framer follows DNS-over-TCP's framing (a two-byte length before each
// message) through a byte stream split anywhere, counting whole messages.
type framer struct {
	need    int  // bytes of the current message still to come
	inLen   bool // half of a length seen
	lenHigh byte
}

// feed consumes b and returns the number of messages it completed.
func (f *framer) feed(b []byte) (msgs int) {
	for len(b) > 0 {
		if f.need > 0 {
			k := min(f.need, len(b))
			f.need -= k
			b = b[k:]
			if f.need == 0 {
				msgs++
			}
			continue
		}
		if !f.inLen {
			f.lenHigh, f.inLen = b[0], true
			b = b[1:]
			continue
		}
		f.need, f.inLen = int(f.lenHigh)<<8|int(b[0]), false
		b = b[1:]
		if f.need == 0 {
			msgs++
		}
	}
	return msgs
}

// run copies until EOF (returning nil) or an error.
func (c *copier) run() error {
	if err := c.src.Read(c.readFn); err != nil {
		return err
	}
	if c.eof {
		return nil
	}
	return c.err
}

func (c *copier) read(fd uintptr) bool {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for {
		n, err := unix.Read(int(fd), buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			c.err = err
			return true
		case n == 0:
			c.eof = true
			return true
		}
		if k := c.framing.feed(buf[:n]); k > 0 && c.onMessages != nil {
			c.onMessages(k)
		}
		if c.pending != nil {
			c.pending.Store(c.clock.Now().UnixNano())
		}
		_, err = c.dst.Write(buf[:n])
		if c.pending != nil {
			c.pending.Store(0)
		}
		if err != nil {
			c.err = err
			return true
		}
		c.n += int64(n)
	}
}
