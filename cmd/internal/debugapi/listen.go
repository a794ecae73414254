package debugapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
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

// connSet accepts every connection the debug socket is offered, so that
// the listen backlog never fills, and keeps at most max of them open: at
// the cap, a new connection evicts the oldest idle one, one with no
// request in progress (none read, none waiting to be read). When every
// connection is in the middle of a request, the new one is refused
// (closed). Either way the connection that goes is counted and logged,
// at most once in a while. Each connection's peer credentials are
// recorded.
type connSet struct {
	*net.UnixListener
	max int
	log zerolog.Logger
	// evictLog and refuseLog space the log records of each.
	evictLog, refuseLog *timeouts.Limiter

	mu    sync.Mutex
	conns []*peerConn // open, oldest first

	evicted atomic.Uint64 // idle connections closed for a new one
	refused atomic.Uint64 // new connections closed: every one busy
}

// evictLogEvery spaces the log records of evictions, and of refusals.
const evictLogEvery = 10 * time.Second

func newConnSet(ln *net.UnixListener, max int, clock timeouts.Clock, log zerolog.Logger) *connSet {
	return &connSet{UnixListener: ln, max: max, log: log,
		evictLog: timeouts.NewLimiter(clock, evictLogEvery), refuseLog: timeouts.NewLimiter(clock, evictLogEvery)}
}

func (l *connSet) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		pc := &peerConn{UnixConn: c, set: l}
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
					pc.peer = Peer{UID: int(cred.Uid), PID: int(cred.Pid)}
				}
			})
		}
		if l.admit(pc) {
			return pc, nil
		}
	}
}

// admit adds c to the set, making room if need be. It reports false when
// c was refused (and closed).
func (l *connSet) admit(c *peerConn) bool {
	l.mu.Lock()
	var victim *peerConn
	if len(l.conns) >= l.max {
		for _, o := range l.conns {
			if o.idle() {
				victim = o
				break
			}
		}
		if victim == nil {
			l.mu.Unlock()
			l.refused.Add(1)
			l.note(l.refuseLog, "debug socket connection refused: every one is busy", c)
			c.UnixConn.Close()
			return false
		}
		l.remove(victim)
	}
	l.conns = append(l.conns, c)
	l.mu.Unlock()
	if victim != nil {
		l.evicted.Add(1)
		l.note(l.evictLog, "debug socket connection evicted for a new one", victim)
		victim.Close()
	}
	return true
}

// note logs what happened to c, as lim allows.
func (l *connSet) note(lim *timeouts.Limiter, msg string, c *peerConn) {
	if ok, held := lim.Allow(); ok {
		l.log.Warn().Int("max_conns", l.max).Int("peer_uid", c.peer.UID).Int("peer_pid", c.peer.PID).
			Int64("suppressed", held).Msg(msg)
	}
}

// remove takes c out of the set; l.mu is held.
func (l *connSet) remove(c *peerConn) {
	if i := slices.Index(l.conns, c); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
	}
}

// open returns the number of connections open now.
func (l *connSet) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// setState follows net/http's view of a connection: a request is in
// progress from its first byte (see peerConn.Read) to the end of its
// response (StateIdle).
func (l *connSet) setState(c net.Conn, st http.ConnState) {
	pc, ok := c.(*peerConn)
	if !ok {
		return
	}
	switch st {
	case http.StateActive:
		pc.busy.Store(true)
	case http.StateIdle:
		pc.busy.Store(false)
	}
}

type peerConn struct {
	*net.UnixConn
	peer Peer
	set  *connSet
	busy atomic.Bool // a request is being read or served
	once sync.Once
}

// idle reports whether c has no request in progress: none being read or
// served, and no bytes of one waiting in the socket.
func (c *peerConn) idle() bool {
	if c.busy.Load() {
		return false
	}
	waiting := 0
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { waiting, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	}
	return waiting == 0
}

// Read marks c busy once a request's first bytes are read: net/http
// says StateActive only when its headers are complete.
func (c *peerConn) Read(p []byte) (int, error) {
	n, err := c.UnixConn.Read(p)
	if n > 0 {
		c.busy.Store(true)
	}
	return n, err
}

func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(func() {
		c.set.mu.Lock()
		c.set.remove(c)
		c.set.mu.Unlock()
	})
	return err
}
