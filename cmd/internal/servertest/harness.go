// Package servertest runs a balancer in a test's own process, on real
// sockets and a fake clock, with its logs captured: the harness of the
// end-to-end tests of bbal and balstat.
package servertest

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// Harness is a balancer running in the test process on 127.0.0.1 with a
// fake clock, its bunyan logs captured at debug level.
type Harness struct {
	T     testing.TB
	Dir   string // the backend socket directory
	Clock *timeouts.Fake
	Logs  *testbed.Logs
	B     *server.Balancer
	Addr  netip.AddrPort // where it listens, UDP and TCP
	// DebugSocket is the debug socket's path (outside Dir).
	DebugSocket string
}

// New starts a balancer on a new socket directory, with a debug socket.
// setup, if not nil, may change the options first.
func New(t testing.TB, setup func(*server.Options)) *Harness {
	t.Helper()
	return NewConfig(t, nil, setup)
}

// NewConfig is New with a chance to change the configuration too.
func NewConfig(t testing.TB, config func(*server.Config), setup func(*server.Options)) *Harness {
	t.Helper()
	h := &Harness{
		T:           t,
		Dir:         testbed.SocketDir(t),
		Clock:       timeouts.NewFake(testbed.Epoch),
		Logs:        testbed.NewLogs(),
		DebugSocket: filepath.Join(testbed.SocketDir(t), "bbal.sock"),
	}
	opt := server.Options{Clock: h.Clock}
	if setup != nil {
		setup(&opt)
	}
	cfg := server.Config{SocketDir: h.Dir, Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, DebugSocket: h.DebugSocket}
	if config != nil {
		config(&cfg)
	}
	b, err := server.Start(cfg, opt, server.NewLogger(h.Logs, zerolog.DebugLevel, h.Clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	h.B, h.Addr = b, b.Addr()
	t.Cleanup(b.Close)
	return h
}

// Sock returns the path of socket name in the directory.
func (h *Harness) Sock(name string) string { return filepath.Join(h.Dir, name) }

// Advance moves the fake clock.
func (h *Harness) Advance(d time.Duration) { h.Clock.Advance(d) }

// StallStep moves the fake clock by one stall check interval and waits
// for the check it makes due.
func (h *Harness) StallStep() {
	h.T.Helper()
	before := h.B.UDP.StallChecks()
	h.Advance(placement.StallCheckInterval)
	testbed.Eventually(h.T, "stall check", func() bool { return h.B.UDP.StallChecks() > before })
}

// Who asks which backend answers the client at from, failing the test
// (with the end of the log) when there is no answer.
func (h *Harness) Who(from netip.Addr, tcp bool) map[string]string {
	h.T.Helper()
	got, err := testbed.Who(h.Addr, from, tcp)
	if err != nil {
		lines := h.Logs.Lines()
		h.T.Fatalf("query from %v (tcp %v): %v\nlast log records:\n%s", from, tcp, err,
			strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	return got
}

// Established waits for backend id's SERVER_HELLO to be logged, counting
// from the log mark.
func (h *Harness) Established(mark, id int) {
	h.T.Helper()
	h.Logs.WaitAfter(h.T, mark, "backend socket established", map[string]any{"be_id": id})
}

// StartGo serves well-behaved Go backends on the named sockets, scans,
// and waits until they are established.
func (h *Harness) StartGo(names ...string) {
	h.T.Helper()
	mark := h.Logs.Mark()
	for _, n := range names {
		testbed.StartGo(h.T, h.Sock(n), n)
	}
	h.B.Backends.Scan()
	for _, n := range names {
		id, _ := strconv.Atoi(n)
		h.Established(mark, id)
	}
}

// ReconnectDue returns how long until backend id's reconnect timer is
// due, waiting for it to be armed.
func (h *Harness) ReconnectDue(id int) time.Duration {
	h.T.Helper()
	return h.TimerDue("backend " + strconv.Itoa(id) + " reconnect")
}

// TimerDue returns how long until the timer name is due, waiting for it
// to be armed.
func (h *Harness) TimerDue(name string) time.Duration {
	h.T.Helper()
	var due time.Time
	testbed.Eventually(h.T, name+" armed", func() bool {
		for _, e := range h.B.Timeouts.List() {
			if e.Name == name {
				due = e.Due
				return true
			}
		}
		return false
	})
	return due.Sub(h.Clock.Now())
}

// Heartbeat moves the clock to the next heartbeat and waits until every
// ok backend but those in wedged has answered it, so that a later jump of
// the clock does not overtake a reply still on its way.
func (h *Harness) Heartbeat(wedged ...backend.ID) {
	h.T.Helper()
	type want struct {
		b *backend.Backend
		n uint64
	}
	var ws []want
	for _, b := range h.B.Backends.All() {
		if b.OK() && !slices.Contains(wedged, b.ID()) {
			ws = append(ws, want{b, b.Stats().Heartbeats + 1})
		}
	}
	h.Advance(backend.DefaultHeartbeatInterval)
	for _, w := range ws {
		testbed.Eventually(h.T, "heartbeat reply", func() bool { return w.b.Stats().Heartbeats >= w.n })
	}
}

// PinTo returns a loopback client address that the table assigns to
// backend id, routing fresh addresses until one lands there.
func (h *Harness) PinTo(id backend.ID) netip.Addr {
	h.T.Helper()
	for i := 1000; i < 1100; i++ {
		a := testbed.Loopback(i)
		if info, ok := h.B.Table.Lookup(a); ok && info.Primary != id {
			continue
		}
		if got := h.B.Table.Route(a).Backend; got == id {
			return a
		}
	}
	h.T.Fatalf("no client address could be pinned to %d", id)
	return netip.Addr{}
}

// DialTCP connects to the balancer from the loopback address from.
func (h *Harness) DialTCP(from netip.Addr) *net.TCPConn {
	h.T.Helper()
	c, err := net.DialTCP("tcp", &net.TCPAddr{IP: from.AsSlice()}, net.TCPAddrFromAddrPort(h.Addr))
	if err != nil {
		h.T.Fatal(err)
	}
	h.T.Cleanup(func() { c.Close() })
	return c
}
