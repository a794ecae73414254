package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) {
	// The test binary doubles as bbal for the tests that need a process
	// of their own (signals, exit status, stdout).
	if os.Getenv("BBAL_TEST_MAIN") == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// harness is a balancer running in this process on 127.0.0.1 with a fake
// clock, its logs captured.
type harness struct {
	t     *testing.T
	dir   string
	clock *timeouts.Fake
	logs  *testbed.Logs
	b     *server.Balancer
	addr  netip.AddrPort
}

// newHarness starts a balancer on a new socket directory. setup, if not
// nil, may change the options first.
func newHarness(t *testing.T, setup func(*server.Options)) *harness {
	t.Helper()
	h := &harness{t: t, dir: testbed.SocketDir(t), clock: timeouts.NewFake(testbed.Epoch), logs: testbed.NewLogs()}
	return h.start(setup)
}

// start starts the balancer on h's directory.
func (h *harness) start(setup func(*server.Options)) *harness {
	h.t.Helper()
	opt := server.Options{Clock: h.clock}
	if setup != nil {
		setup(&opt)
	}
	cfg := server.Config{SocketDir: h.dir, Listen: netip.MustParseAddrPort("127.0.0.1:0")}
	b, err := server.Start(cfg, opt, newLogger(h.logs, zerolog.DebugLevel, h.clock.Now))
	if err != nil {
		h.t.Fatal(err)
	}
	h.b, h.addr = b, b.Addr()
	h.t.Cleanup(b.Close)
	return h
}

// sock returns the path of socket name in the directory.
func (h *harness) sock(name string) string { return filepath.Join(h.dir, name) }

// advance moves the fake clock.
func (h *harness) advance(d time.Duration) { h.clock.Advance(d) }

// who asks which backend answers the client at from.
func (h *harness) who(from netip.Addr, tcp bool) map[string]string {
	h.t.Helper()
	got, err := testbed.Who(h.addr, from, tcp)
	if err != nil {
		lines := h.logs.Lines()
		h.t.Fatalf("query from %v (tcp %v): %v\nlast log records:\n%s", from, tcp, err,
			strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	return got
}

// established waits for backend id's SERVER_HELLO to be logged, counting
// from mark.
func (h *harness) established(mark, id int) {
	h.t.Helper()
	h.logs.WaitAfter(h.t, mark, "backend socket established", map[string]any{"be_id": id})
}

// reconnectDue returns when backend id's reconnect timer is due, failing
// if it is not armed.
func (h *harness) reconnectDue(id int) time.Duration {
	h.t.Helper()
	name := "backend " + strconv.Itoa(id) + " reconnect"
	var due time.Time
	testbed.Eventually(h.t, name+" armed", func() bool {
		for _, e := range h.b.Timeouts.List() {
			if e.Name == name {
				due = e.Due
				return true
			}
		}
		return false
	})
	return due.Sub(h.clock.Now())
}

// heartbeat moves the clock to the next heartbeat and waits until every
// ok backend but those in wedged has answered it, so that a later jump of
// the clock does not overtake a reply still on its way.
func (h *harness) heartbeat(wedged ...backend.ID) {
	h.t.Helper()
	type want struct {
		b *backend.Backend
		n uint64
	}
	var ws []want
	for _, b := range h.b.Backends.All() {
		if b.OK() && !slices.Contains(wedged, b.ID()) {
			ws = append(ws, want{b, b.Stats().Heartbeats + 1})
		}
	}
	h.advance(backend.DefaultHeartbeatInterval)
	for _, w := range ws {
		testbed.Eventually(h.t, "heartbeat reply", func() bool { return w.b.Stats().Heartbeats >= w.n })
	}
}
