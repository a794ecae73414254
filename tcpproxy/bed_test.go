package tcpproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// bed is a started proxy on a real TCP listener, with a real remotes
// table and backend set whose one backend (5301) is a scriptable fake
// on a real AF_UNIX socket, all on a fake clock run by a timeouts
// goroutine.
type bed struct {
	p     *Proxy
	set   *backend.Set
	table *remotes.Table
	clock *timeouts.Fake
	fake  *testbed.Fake // nil with noBackend
	logs  *testbed.Logs
}

// bedOptions varies a bed: the proxy's Config (its limits), the
// table's stand-in range, the listener's address, and no backend at all.
type bedOptions struct {
	cfg       Config
	standins  netip.Prefix
	listen    string // "127.0.0.1:0" when empty
	noBackend bool
}

const backendID = 5301

func newBed(t *testing.T, o bedOptions) *bed {
	t.Helper()
	dir := testbed.SocketDir(t)
	b := &bed{clock: timeouts.NewFake(testbed.Epoch), logs: testbed.NewLogs()}
	log := testbed.Logger(b.logs)
	ts := testbed.RunTimeouts(t, timeouts.New(b.clock))

	var standing *testbed.FakeConn
	if !o.noBackend {
		b.fake = testbed.NewFake(t, filepath.Join(dir, "5301"))
	}
	// No heartbeats: the tests move the clock by hours, and the fake's
	// answers to heartbeats are not what they test.
	b.set = backend.NewSet(backend.Config{Dir: dir, Log: log, Timeouts: ts,
		HeartbeatInterval: 1000 * time.Hour, HeartbeatTimeout: 1000 * time.Hour})
	picker := placement.New[backend.ID, *backend.Backend](b.set, placement.Config{Log: log, Clock: ts.Clock()})
	b.table = remotes.New(remotes.Config{Backends: b.set, Picker: picker, Timeouts: ts, Log: log, Standins: o.standins})
	b.set.Start(backend.Links{Replies: func(*backend.Backend) backend.ReplyBatch { return &testbed.Replies{} }})
	if !o.noBackend {
		standing = b.fake.Accept(t)
		standing.Hello(t)
		testbed.Eventually(t, "backend ok", func() bool { return b.set.Get(backendID).OK() })
		go standing.Answer("a")
	}

	addr := o.listen
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.cfg
	cfg.Table, cfg.Backends, cfg.Timeouts, cfg.Log = b.table, b.set, ts, log
	b.p = New([]*net.TCPListener{ln.(*net.TCPListener)}, cfg)
	b.p.Start()
	t.Cleanup(func() {
		b.p.Close()
		b.set.Close()
	})
	return b
}

// addrPort is the proxy's listening address.
func (b *bed) addrPort() netip.AddrPort {
	return b.p.Addr().(*net.TCPAddr).AddrPort()
}

// dial connects to the proxy from address from (any loopback address
// when invalid).
func (b *bed) dial(t *testing.T, from netip.Addr) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))
	}
	c, err := d.Dial("tcp", b.addrPort().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// accept returns the next connection the proxy opens to the backend,
// having read its INBOUND_TCP frame.
func (b *bed) accept(t *testing.T) (*testbed.FakeConn, protocol.Frame) {
	t.Helper()
	c := b.fake.Accept(t)
	return c, c.Expect(t, protocol.FrameInboundTCP)
}

// session connects a client from 127.0.0.1 and completes the backend's
// side of the handshake: the pipe is open once it returns.
func (b *bed) session(t *testing.T) (client *net.TCPConn, back *testbed.FakeConn) {
	t.Helper()
	client = b.dial(t, netip.MustParseAddr("127.0.0.1"))
	back, _ = b.accept(t)
	back.SendType(t, protocol.FrameInboundTCPOK)
	testbed.Eventually(t, "the session piping", func() bool { return b.piping() == 1 })
	return client, back
}

// piping is the number of sessions past INBOUND_TCP_OK.
func (b *bed) piping() int {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	n := 0
	for s := range b.p.sessions {
		if s.piping.Load() {
			n++
		}
	}
	return n
}

// advanceUntil moves the clock on by step until cond holds, failing the
// test after 10 s of real time. The sweep and the other timers run on
// the timeouts goroutine, so each step is given time to take effect.
func (b *bed) advanceUntil(t *testing.T, what string, step time.Duration, cond func() bool) {
	t.Helper()
	testbed.Eventually(t, what, func() bool {
		if cond() {
			return true
		}
		b.clock.Advance(step)
		return false
	})
}

// ended waits until the proxy holds no session, and checks that every
// trace of them is gone: the active gauge, the per-address counts and
// the sessions' goroutines.
func (b *bed) ended(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !b.p.Wait(ctx) {
		t.Fatalf("sessions still open: %+v", b.p.Stats())
	}
	// The gauge comes down just after the session leaves the map.
	testbed.Eventually(t, "Active back to 0", func() bool { return b.p.Stats().Active == 0 })
	b.p.mu.Lock()
	perIP := len(b.p.perIP)
	b.p.mu.Unlock()
	if perIP != 0 {
		t.Fatalf("%d addresses still counted", perIP)
	}
	testbed.Eventually(t, "the sessions' goroutines gone", func() bool { return sessionGoroutines() == "" })
}

// sessionGoroutines returns the stacks of the goroutines running a
// session's code.
func sessionGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "tcpproxy.(*session)") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// wantCounts checks the proxy's drop and limit counters: each one named
// in want has its value, every other one is zero.
func (b *bed) wantCounts(t *testing.T, want map[string]uint64) {
	t.Helper()
	st := b.p.Stats()
	for name, n := range st.Drops {
		if n != want[name] {
			t.Errorf("drops[%s] = %d, want %d", name, n, want[name])
		}
	}
	for name, n := range st.Limits {
		if n != want[name] {
			t.Errorf("limits[%s] = %d, want %d", name, n, want[name])
		}
	}
}

// expectClosed reads c until the proxy closes it (EOF or a reset),
// failing the test if that takes 10 s or if data arrives.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection not closed: %v", err)
	}
	if n != 0 {
		t.Fatalf("%d bytes before the close", n)
	}
}

// readN reads exactly n bytes from c, with a 10 s deadline.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// readToEOF reads c until EOF, with a 10 s deadline.
func readToEOF(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to EOF: %v (after %d bytes)", err, len(b))
	}
	return b
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// msg is a DNS-over-TCP message: a two-byte length and n bytes of fill.
func msg(n int, fill byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(n))
	return append(b, bytes.Repeat([]byte{fill}, n)...)
}

// inQueue returns the bytes waiting to be read on c.
func inQueue(c syscall.Conn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

// pour writes m to c 2000 times (far more than the sockets' buffers
// hold) on a goroutine of its own, and sends the write error that
// stopped it, or nil if none did.
func pour(c net.Conn, m []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		for range 2000 {
			if _, err := c.Write(m); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}
