package debugapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse: another process answers on the debug socket.
var ErrInUse = errors.New("debug socket is in use by another process")

// Listen creates the debug socket at path with mode 0600, replacing a
// stale socket, refusing a live one (ErrInUse) or a path that is not a
// socket. Closing the listener removes the socket.
func Listen(path string) (*net.UnixListener, error) {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("%s exists and is not a socket", path)
	default:
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", path, ErrInUse)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("checking the existing socket: %w", err)
		}
		// Nobody listens: a dead bbal's socket.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	// The socket is created 0600 (no window in which others could
	// connect), then set so explicitly.
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Peer is who is on the other end of a debug socket connection.
type Peer struct {
	UID, PID int
}

type peerKey struct{}

// PeerOf returns the peer of the connection a request came on.
func PeerOf(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// limitListener serves at most a number of connections at once and
// records each connection's peer credentials.
type limitListener struct {
	*net.UnixListener
	slots chan struct{} // a token per connection, and one for a pending Accept
	open  atomic.Int64  // connections open now
	done  chan struct{}
}

func newLimitListener(ln *net.UnixListener, max int) *limitListener {
	return &limitListener{UnixListener: ln, slots: make(chan struct{}, max), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.AcceptUnix()
	if err != nil {
		<-l.slots
		return nil, err
	}
	l.open.Add(1)
	pc := &peerConn{UnixConn: c, release: func() { l.open.Add(-1); <-l.slots }}
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				pc.peer = Peer{UID: int(cred.Uid), PID: int(cred.Pid)}
			}
		})
	}
	return pc, nil
}

func (l *limitListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return l.UnixListener.Close()
}

type peerConn struct {
	*net.UnixConn
	peer    Peer
	release func()
	once    sync.Once
}

func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(c.release)
	return err
}
