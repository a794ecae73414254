package main

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/tools/testbed"
)

func limitsBed(t *testing.T, config func(*server.Config)) *harness {
	t.Helper()
	h := servertest.NewConfig(t, config, nil)
	h.StartGo("5301")
	return h
}

// tcpQuery sends one query on c and reads its answer.
func tcpQuery(t *testing.T, c net.Conn) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("limits.example.", dns.TypeA)
	wire, _ := q.Pack()
	c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		t.Fatalf("no answer: %v", err)
	}
	io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(l[:])))
}

func TestTCPConnectionLimits(t *testing.T) {
	h := limitsBed(t, func(c *server.Config) { c.TCPMaxConns, c.TCPMaxConnsPerIP = 3, 2 })
	a, b := testbed.Loopback(1), testbed.Loopback(2)
	a1, a2 := h.DialTCP(a), h.DialTCP(a)
	tcpQuery(t, a1)
	tcpQuery(t, a2)
	// A third from the same address is closed at once; another address
	// may still connect, up to the total.
	expectEOF(t, h.DialTCP(a))
	h.Logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "max_conns_per_ip", "remote_ip": a.String()})
	b1 := h.DialTCP(b)
	tcpQuery(t, b1)
	expectEOF(t, h.DialTCP(b))
	h.Logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "max_conns", "value": 3})
	st := h.B.TCP.Stats()
	if st.Limits["max_conns_per_ip"] != 1 || st.Limits["max_conns"] != 1 {
		t.Fatalf("limits counted %v", st.Limits)
	}
	// Freed places are taken again.
	b1.Close()
	testbed.Eventually(t, "session ended", func() bool { return h.B.TCP.Stats().Active == 2 })
	tcpQuery(t, h.DialTCP(b))
	// Each limit is logged once per 5 s however often it is hit.
	for range 3 {
		expectEOF(t, h.DialTCP(a))
	}
	if n := h.Logs.Count("TCP connection closed by a limit", map[string]any{"limit": "max_conns_per_ip"}); n != 1 {
		t.Fatalf("per-address limit logged %d times", n)
	}
}

func TestTCPIdleTimeoutAndLifetime(t *testing.T) {
	h := limitsBed(t, nil)
	silent := h.DialTCP(testbed.Loopback(1)) // connects, says nothing
	busy := h.DialTCP(testbed.Loopback(2))   // a query every 2 s
	half := h.DialTCP(testbed.Loopback(3))   // half a query, then nothing
	half.Write([]byte{0, 40, 1, 2, 3})
	tcpQuery(t, busy)
	// The idle clock starts at INBOUND_TCP_OK.
	testbed.Eventually(t, "sessions piping", func() bool { return h.Logs.Count("backend reports TCP OK", nil) == 3 })
	for range 3 {
		h.Advance(2 * time.Second)
		tcpQuery(t, busy)
	}
	expectEOF(t, silent)
	expectEOF(t, half)
	if n := h.B.TCP.Stats().Limits["idle_timeout"]; n != 2 {
		t.Fatalf("%d closed as idle, want 2", n)
	}
	tcpQuery(t, busy) // still open
	// However busy, a connection ends at its lifetime.
	for elapsed := 6 * time.Second; elapsed+2*time.Second < tcpproxy.DefaultMaxLifetime; elapsed += 2 * time.Second {
		h.Advance(2 * time.Second)
		tcpQuery(t, busy)
	}
	h.Advance(2 * time.Second)
	expectEOF(t, busy)
	if n := h.B.TCP.Stats().Limits["max_lifetime"]; n != 1 {
		t.Fatalf("%d closed at the lifetime, want 1", n)
	}
}

func TestServfailWhenAllBackendsAreDown(t *testing.T) {
	for _, servfail := range []bool{false, true} {
		h := servertest.NewConfig(t, func(c *server.Config) { c.ServfailWhenDown = servfail }, nil)
		h.B.Backends.Scan() // no backends
		r, _, err := testbed.QueryTimeout(h.Addr, testbed.Loopback(1), false, "down.example.", dns.TypeA, 200*time.Millisecond)
		switch {
		case servfail && (err != nil || r.Rcode != dns.RcodeServerFailure):
			t.Fatalf("-F: %v %v, want SERVFAIL", r, err)
		case !servfail && err == nil:
			t.Fatalf("without -F: answered %v", r)
		}
		if n := h.B.UDP.Stats().Drops["no_backend"]; n != 1 {
			t.Fatalf("no_backend drops %d", n)
		}
		// TCP is closed at once either way.
		expectEOF(t, h.DialTCP(testbed.Loopback(2)))

		// Service resumes with the first backend's hello.
		mark := h.Logs.Mark()
		testbed.StartGo(t, h.Sock("5301"), "back")
		h.Advance(5 * time.Second) // the next scan
		h.Established(mark, 5301)
		if got := h.Who(testbed.Loopback(1), false)["backend"]; got != "back" {
			t.Fatalf("answered by %q", got)
		}
	}
}
