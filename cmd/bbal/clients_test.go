package main

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/tools/testbed"
)

func TestBadClientInputDisturbsNoOne(t *testing.T) {
	m := newMnameBed(t)
	good := testbed.Loopback(1)
	m.Who(good, false)

	send := func(payload []byte) {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: testbed.Loopback(66).AsSlice()}, net.UDPAddrFromAddrPort(m.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	before := m.B.UDP.Stats()
	send(nil)                              // empty datagram
	send([]byte("GET / HTTP/1.0\r\n\r\n")) // not DNS
	send(make([]byte, 3000))               // oversized
	send(make([]byte, protocol.MaxData+1))

	// A TCP client that connects and sends nothing, and one that closes
	// half-way through a query.
	idle := m.DialTCP(testbed.Loopback(67))
	half := m.DialTCP(testbed.Loopback(68))
	q := new(dns.Msg)
	q.SetQuestion("half.example.", dns.TypeA)
	wire, _ := q.Pack()
	half.Write(binary.BigEndian.AppendUint16(nil, uint16(len(wire))))
	half.Write(wire[:5])
	half.Close()

	m.Logs.Wait(t, "dropping oversized UDP packet", map[string]any{"len": 3000})
	testbed.Eventually(t, "datagrams read", func() bool { return m.B.UDP.Stats().PacketsIn >= before.PacketsIn+4 })
	st := m.B.UDP.Stats()
	if d := st.Drops["oversized"] - before.Drops["oversized"]; d != 2 {
		t.Fatalf("%d oversized drops, want 2", d)
	}
	if d := st.Drops["runt"] - before.Drops["runt"]; d != 1 {
		t.Fatalf("%d runt drops, want 1 (the empty datagram)", d)
	}
	// Everyone else is still answered, over both transports.
	for i := range 4 {
		m.Who(testbed.Loopback(i), false)
		m.Who(testbed.Loopback(i), true)
	}
	if m.Logs.Count("dropping oversized UDP packet", nil) != 1 {
		t.Fatal("oversized warnings not rate-limited to one per 5 s")
	}
	// The idle client leaves; node-mname holds the half query for
	// good, so that session ends when the drain timeout expires.
	idle.Close()
	testbed.Eventually(t, "idle session closed", func() bool { return m.B.TCP.Stats().Active == 1 })
	testbed.Eventually(t, "drain timer armed", func() bool {
		for _, e := range m.B.Timeouts.List() {
			if strings.HasSuffix(e.Name, " drain") {
				return true
			}
		}
		return false
	})
	m.Advance(tcpproxy.DefaultDrainTimeout)
	testbed.Eventually(t, "TCP sessions closed", func() bool { return m.B.TCP.Stats().Active == 0 })
}

func TestRebalanceSpreadsRemotes(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartGo(t, h.Sock("5301"), "one")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	for i := range 10 {
		h.Who(testbed.Loopback(i), false)
	}
	mark := h.Logs.Mark()
	testbed.StartGo(t, h.Sock("5302"), "two")
	h.B.Backends.Scan()
	h.Established(mark, 5302)
	if c := h.B.Table.Counts(); c[5301].Primary != 10 || c[5302].Primary != 0 {
		t.Fatalf("counts before rebalance %v", c)
	}

	// Spread 10 > 2 ok backends: 8 remotes of the fullest are cleared.
	h.Heartbeat()
	h.Advance(remotes.DefaultRebalanceInterval - backend.DefaultHeartbeatInterval)
	testbed.Eventually(t, "rebalance", func() bool {
		return h.Logs.Count("rebalancing to reduce spread", map[string]any{"be_id": 5301}) == 8
	})
	for i := range 10 {
		h.Who(testbed.Loopback(i), false)
	}
	c := h.B.Table.Counts()
	p1, p2 := c[5301].Primary, c[5302].Primary
	if p1+p2 != 10 || p1-p2 > 2 || p2-p1 > 2 {
		t.Fatalf("counts after rebalance %v", c)
	}
}

func TestIdleRemotesExpire(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartGo(t, h.Sock("5301"), "one")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	a, b, c := testbed.Loopback(1), testbed.Loopback(2), testbed.Loopback(3)
	for _, from := range []netip.Addr{a, b, c} {
		h.Who(from, false)
	}
	advanceWithHeartbeats(h, 4*time.Minute)
	h.Who(a, false) // a stays fresh
	advanceWithHeartbeats(h, 90*time.Second)
	h.Logs.Wait(t, "expiring remote entry", map[string]any{"remote_ip": b.String()})
	h.Logs.Wait(t, "expiring remote entry", map[string]any{"remote_ip": c.String()})
	testbed.Eventually(t, "two remotes expired", func() bool { return h.B.Table.Len() == 1 })
	if _, ok := h.B.Table.Lookup(a); !ok {
		t.Fatal("the recently seen remote expired")
	}
	if n := h.B.Table.Counts()[5301].Primary; n != 1 {
		t.Fatalf("backend still counts %d remotes", n)
	}
}

// advanceWithHeartbeats moves the clock by d in heartbeat steps, so the
// backends stay up on the fake clock.
func advanceWithHeartbeats(h *harness, d time.Duration) {
	for ; d >= backend.DefaultHeartbeatInterval; d -= backend.DefaultHeartbeatInterval {
		h.Heartbeat()
	}
	h.Advance(d)
}

func TestNoBackendsAvailable(t *testing.T) {
	h := newHarness(t, nil)
	h.B.Backends.Scan() // an empty directory
	for i := range 5 {
		if _, err := testbed.WhoTimeout(h.Addr, testbed.Loopback(i), false, 50*time.Millisecond); err == nil {
			t.Fatal("answered with no backends")
		}
	}
	testbed.Eventually(t, "drops counted", func() bool { return h.B.UDP.Stats().Drops["no_backend"] == 5 })
	// TCP connections are closed at once.
	c := h.DialTCP(testbed.Loopback(9))
	expectEOF(t, c)
	if n := h.Logs.Count("no backends available", nil); n != 1 {
		t.Fatalf("%d 'no backends available' errors, want 1 per 5 s", n)
	}
	h.Advance(5 * time.Second)
	testbed.WhoTimeout(h.Addr, testbed.Loopback(1), false, 50*time.Millisecond)
	h.Logs.Wait(t, "no backends available", nil)
	testbed.Eventually(t, "second error", func() bool { return h.Logs.Count("no backends available", nil) == 2 })
}
