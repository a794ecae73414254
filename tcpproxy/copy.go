package tcpproxy

import (
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
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
}

func newCopier(dst net.Conn, src syscall.Conn) (*copier, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &copier{dst: dst, src: raw}
	c.readFn = c.read
	return c, nil
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
		if _, err := c.dst.Write(buf[:n]); err != nil {
			c.err = err
			return true
		}
		c.n += int64(n)
	}
}
