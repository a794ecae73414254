package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/tools/testbed"
)

// watchdog ends the test binary, with every goroutine's stack, if the
// test (cleanups included) has not finished within d: a deadlock is a
// clear failure rather than a suite hung until go test's own timeout.
// Call it before anything whose cleanup could hang.
func watchdog(t *testing.T, d time.Duration) {
	t.Helper()
	name := t.Name()
	w := time.AfterFunc(d, func() {
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "watchdog: %s still running after %v (deadlock?); goroutines:\n%s\n", name, d, buf)
		panic("watchdog: " + name + " deadlocked")
	})
	t.Cleanup(func() { w.Stop() })
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// hostileDialer connects from `from` with tiny socket buffers, so that a
// client that never reads backs the stream up after a few answers.
func hostileDialer(from netip.Addr) *net.Dialer {
	return &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: from.AsSlice()},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048); serr == nil {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
				}
			})
			return errors.Join(err, serr)
		},
	}
}

// pipeline writes queries on c, never reading, until a write fails (the
// connection closed by either side), storing the time of each write's
// progress in progress. An error before the client's connection is closed
// goes to errs.
func pipeline(c *net.TCPConn, progress *atomic.Int64, errs chan<- error) {
	q := new(dns.Msg)
	q.SetQuestion("hostile.example.", dns.TypeA)
	wire, _ := q.Pack()
	var chunk []byte
	for len(chunk) < 16<<10 {
		chunk = binary.BigEndian.AppendUint16(chunk, uint16(len(wire)))
		chunk = append(chunk, wire...)
	}
	for off := 0; ; {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Write(chunk[off:]) // after a timeout, the rest of the chunk: the stream stays well framed
		if n > 0 {
			progress.Store(time.Now().UnixNano())
		}
		if off += n; off == len(chunk) {
			off = 0
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
		case errors.Is(err, net.ErrClosed):
			return
		case err != nil:
			select {
			case errs <- err:
			default:
			}
			return
		}
	}
}

// hostileClients connects n clients (each from its own address) that
// pipeline queries and never read, and returns once no client's write
// has progressed for a second: every stream is backed up, from the
// client through the balancer to the backend and back. The clients go on
// writing until their connection is closed; they are closed at the end
// of the test.
func hostileClients(t *testing.T, h *harness, n int) []*net.TCPConn {
	t.Helper()
	mark := h.Logs.Mark()
	conns := make([]*net.TCPConn, n)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for i := range conns {
		c, err := hostileDialer(testbed.Loopback(200+i)).Dial("tcp", h.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.TCPConn)
		t.Cleanup(func() { c.Close() })
	}
	testbed.Eventually(t, "every session piping", func() bool {
		return h.Logs.CountAfter(mark, "backend reports TCP OK", nil) == n
	})
	progress := make([]atomic.Int64, n)
	errs := make(chan error, 1)
	for i, c := range conns {
		progress[i].Store(time.Now().UnixNano())
		wg.Add(1)
		go func() {
			defer wg.Done()
			pipeline(c, &progress[i], errs)
		}()
	}
	stuck := func() bool {
		for i := range progress {
			if time.Since(time.Unix(0, progress[i].Load())) < time.Second {
				return false
			}
		}
		return true
	}
	if !pollUntil(time.Minute, func() bool { return len(errs) > 0 || stuck() }) {
		t.Fatal("the clients' streams never backed up")
	}
	if len(errs) > 0 {
		t.Fatalf("pipelining: %v", <-errs)
	}
	return conns
}

// dumpOnFailure logs, if the test fails, the timers, the end of the log
// and every goroutine's stack, before the balancer is closed.
func dumpOnFailure(t *testing.T, h *harness) {
	t.Cleanup(func() {
		if t.Failed() {
			buf := make([]byte, 1<<22)
			buf = buf[:runtime.Stack(buf, true)]
			lines := h.Logs.Lines()
			t.Logf("now %v, timers %v\nlast log records:\n%s\ngoroutines:\n%s", h.Clock.Now(), h.B.Timeouts.List(),
				strings.Join(lines[max(0, len(lines)-40):], "\n"), buf)
		}
	})
}

// noTimerOverdue waits until the timers' goroutine has run everything
// due on the fake clock, failing the test with the overdue timers after
// 10 s.
func noTimerOverdue(t *testing.T, h *harness) {
	t.Helper()
	var late []string
	if !pollUntil(10*time.Second, func() bool {
		now := h.Clock.Now()
		late = late[:0]
		for _, e := range h.B.Timeouts.List() {
			if !e.Due.After(now) {
				late = append(late, e.Name)
			}
		}
		return len(late) == 0
	}) {
		t.Fatalf("timers overdue (is the timers' goroutine blocked?): %v", late)
	}
}

// hostileClientCount clients take every place of a hostileBed.
const hostileClientCount = 20

// hostileBed is a balancer with -T 20 -I 5, under a watchdog, with no
// backend yet.
func hostileBed(t *testing.T) *harness {
	t.Helper()
	watchdog(t, 2*time.Minute)
	return servertest.NewConfig(t, func(c *server.Config) {
		c.TCPMaxConns, c.TCPIdleTimeout = hostileClientCount, 5*time.Second
	}, nil)
}

// TestTCPResetClientsOfAStuckBackendFreeEverything: clients that pipeline
// queries, never read and then reset their connections, against
// node-mname, which stops reading when its answers cannot be written.
// Each session's client-to-backend copy is then blocked writing to the
// backend, inside the read of the client's socket; tearing the session
// down must not wait on that (nor may any timer callback), or every
// timer stops and the sessions' descriptors and -T places are never
// given back.
func TestTCPResetClientsOfAStuckBackendFreeEverything(t *testing.T) {
	h := hostileBed(t)
	testbed.StartMname(t, h.Sock("5301"), "n1")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	h.Who(testbed.Loopback(1), true)
	testbed.Eventually(t, "the first TCP session gone", func() bool { return h.B.TCP.Stats().Active == 0 })
	baseFDs, baseGoroutines := openFDs(), runtime.NumGoroutine()

	conns := hostileClients(t, h, hostileClientCount)
	for _, c := range conns {
		c.SetLinger(0)
		c.Close() // a reset
	}
	// Past the lifetime limit, the timers keep up: heartbeats are
	// answered, the sweeps run, nothing is overdue.
	dumpOnFailure(t, h)
	for range 2 {
		h.Heartbeat()
	}
	h.Advance(tcpproxy.DefaultMaxLifetime)
	noTimerOverdue(t, h)
	h.Heartbeat()
	noTimerOverdue(t, h)

	testbed.Eventually(t, "sessions gone", func() bool { return h.B.TCP.Stats().Active == 0 })
	testbed.Eventually(t, "descriptors and goroutines back to their baseline", func() bool {
		return openFDs() <= baseFDs && runtime.NumGoroutine() <= baseGoroutines
	})
	if got := h.Who(testbed.Loopback(2), true)["backend"]; got != "n1" {
		t.Fatalf("new TCP client answered by %q", got)
	}
}

// TestTCPClientsThatNeverReadAreClosedAsUnread: clients that pipeline
// queries and never read their answers, but stay connected, take every
// -T place; each is closed once an answer has waited -I for the client
// to read it, counted, and well-behaved clients are served again.
func TestTCPClientsThatNeverReadAreClosedAsUnread(t *testing.T) {
	h := hostileBed(t)
	h.StartGo("5301")
	const clients = hostileClientCount
	conns := hostileClients(t, h, clients)
	dumpOnFailure(t, h)
	if st := h.B.TCP.Stats(); st.Active != clients {
		t.Fatalf("%d sessions active, want %d", st.Active, clients)
	}
	expectEOF(t, h.DialTCP(testbed.Loopback(2)))
	if n := h.B.TCP.Stats().Limits["max_conns"]; n != 1 {
		t.Fatalf("max_conns counted %d, want 1", n)
	}

	// None has left an answer unread for 5 s yet.
	h.Advance(5*time.Second - time.Second)
	noTimerOverdue(t, h)
	if n := h.B.TCP.Stats().Limits[tcpproxy.LimitUnread.String()]; n != 0 {
		t.Fatalf("closed as unread after 4 s: %d", n)
	}
	h.Advance(time.Second)
	noTimerOverdue(t, h)
	testbed.Eventually(t, "sessions closed", func() bool { return h.B.TCP.Stats().Active == 0 })
	for _, c := range conns {
		expectReset(t, c)
	}
	st := h.B.TCP.Stats()
	if n := st.Limits[tcpproxy.LimitUnread.String()]; n != clients {
		t.Fatalf("%d closed as unread, want %d (limits %v)", n, clients, st.Limits)
	}
	h.Logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "unread_timeout"})
	if got := h.Who(testbed.Loopback(2), true)["backend"]; got != "5301" {
		t.Fatalf("new TCP client answered by %q", got)
	}
}

// pollUntil checks cond every millisecond for up to d, and reports
// whether it came to hold.
func pollUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// expectReset reads what is buffered on c until the balancer's close
// shows, failing after 10 s.
func expectReset(t *testing.T, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection not closed within 10 s")
		}
		return
	}
}

// TestTCPUnfinishedAnswerClosesTheConnection: a backend that says
// INBOUND_TCP_OK and then owes its answer (none at all, or a length of
// 65535 and no more) does not keep a patient client's connection: after
// AnswerTimeout it is closed and counted.
func TestTCPUnfinishedAnswerClosesTheConnection(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer []byte
	}{
		{"length and no message", []byte{0xff, 0xff}},
		{"nothing", nil},
		{"half a length", []byte{0x00}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			watchdog(t, time.Minute)
			f := newFaultBed(t)
			f.helloOK()
			client := f.DialTCP(f.PinTo(5302))
			s := f.fake.Accept(t)
			s.Expect(t, protocol.FrameInboundTCP)
			s.SendType(t, protocol.FrameInboundTCPOK)
			query := []byte("\x00\x05hello")
			client.Write(query)
			got := make([]byte, len(query))
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != string(query) {
				t.Fatalf("backend read %q, %v", got, err)
			}
			if len(tc.answer) > 0 {
				s.Send(t, tc.answer)
				testbed.Eventually(t, "the partial answer passed on", func() bool {
					client.SetReadDeadline(time.Now().Add(time.Millisecond))
					n, _ := client.Read(make([]byte, 4))
					return n > 0
				})
			}
			// The idle limit does not apply while an answer is owed.
			f.Advance(tcpproxy.DefaultAnswerTimeout - time.Second)
			noTimerOverdue(t, f.harness)
			if n := f.B.TCP.Stats().Limits[tcpproxy.LimitAnswer.String()]; n != 0 {
				t.Fatalf("closed before the answer timeout: %d", n)
			}
			if st := f.B.TCP.Stats(); st.Active != 1 {
				t.Fatalf("%d sessions active, want 1", st.Active)
			}
			f.Advance(time.Second)
			expectEOF(t, client)
			s.ExpectClosed(t)
			if n := f.B.TCP.Stats().Limits[tcpproxy.LimitAnswer.String()]; n != 1 {
				t.Fatalf("answer_timeout counted %d, want 1", n)
			}
			f.Logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "answer_timeout"})
			if !f.B.Backends.Get(5302).OK() {
				t.Fatal("the backend was faulted")
			}
		})
	}
}
