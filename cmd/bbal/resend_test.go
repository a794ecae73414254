package main

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy"
)

func TestQueriesOfADeadBackendAreSentToTheBackup(t *testing.T) {
	f := newFaultBed(t) // 5301 a Go backend ("good"), 5302 the fake
	f.helloOK()
	from := f.PinTo(5302)
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(f.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The fake takes the queries and never answers them.
	const n = 20
	for i := range n {
		q := new(dns.Msg)
		q.SetQuestion("who.example.", dns.TypeTXT)
		q.Id = uint16(500 + i)
		wire, _ := q.Pack()
		conn.Write(wire)
	}
	for range n {
		if fr := f.conn.Next(t); fr.Type != protocol.FrameInboundUDP {
			t.Fatalf("frame %v, want INBOUND_UDP", fr.Type)
		}
	}
	if got := f.B.Backends.Get(5302).Outstanding(); got != n {
		t.Fatalf("%d queries outstanding on the fake, want %d", got, n)
	}
	// It dies, half a second later: every one of them but the first is
	// answered by the other backend. The first is withheld: the fake
	// may have died of it, as a backend that dies of a query has
	// answered those before it. (node-mname under load takes hundreds
	// of milliseconds to die of one.)
	f.Advance(udpproxy.FlightAge / 2)
	f.conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	seen := map[uint16]bool{}
	buf := make([]byte, 1500)
	for len(seen) < n-1 {
		m, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d queries answered: %v", len(seen), n, err)
		}
		var r dns.Msg
		if err := r.Unpack(buf[:m]); err != nil {
			t.Fatal(err)
		}
		if fl, _ := dnsbackend.TXTFields(&r); fl["backend"] != "good" || fl["client"] != conn.LocalAddr().String() {
			t.Fatalf("answer %v", fl)
		}
		if r.Id == 500 {
			t.Fatal("the first query, the suspect, was sent again")
		}
		seen[r.Id] = true
	}
	if st := f.B.UDP.Stats(); st.Resent != n-1 || st.Unresent != 0 || st.Withheld != 1 {
		t.Fatalf("resent %d, not %d, withheld %d; want %d, 0 and 1", st.Resent, st.Unresent, st.Withheld, n-1)
	}
	if st := f.B.Backends.Get(5302).Stats(); st.Resent != n-1 || st.Unanswered != 1 || st.Outstanding != 0 {
		t.Fatalf("dead backend: resent %d, unanswered %d, outstanding %d", st.Resent, st.Unanswered, st.Outstanding)
	}
	f.Logs.Wait(t, "unanswered queries sent to other backends", map[string]any{"be_id": 5302, "resent": n - 1, "not_resent": 0, "withheld": 1})
}

// TestNoQueriesLostWhenNodeMnameIsKilled kills one of two node-mname
// processes under steady load from 16 clients and counts the queries
// never answered. One may be the query the killed backend was given
// first of those it had not answered: bbal cannot tell a SIGKILL from a
// death by that query, and does not send it on (see
// TestPoisonQueryTakesDownOneNodeMnameAtMost); its client's retry is
// answered.
func TestNoQueriesLostWhenNodeMnameIsKilled(t *testing.T) {
	m := newMnameBed(t)
	const clients = 16
	var sent, lost atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func(from netip.Addr) {
			defer wg.Done()
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(m.Addr))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			askOnce(c, stop, &sent, &lost)
		}(testbed.Loopback(200 + i))
	}
	be := m.B.Backends.Get(5301)
	testbed.Eventually(t, "load on both backends", func() bool {
		return be.Stats().Answered > 200 && m.B.Backends.Get(5302).Stats().Answered > 200
	})
	m.n1.Kill()
	testbed.Eventually(t, "n1 down", func() bool { return !be.OK() })
	// Load goes on for a while after the fault.
	after := sent.Load()
	testbed.Eventually(t, "load after the kill", func() bool { return sent.Load() > after+1000 })
	close(stop)
	wg.Wait()
	st := m.B.UDP.Stats()
	t.Logf("%d queries, %d unanswered; %d sent again after the kill, %d could not be, %d withheld",
		sent.Load(), lost.Load(), st.Resent, st.Unresent, st.Withheld)
	if st.Withheld > 1 {
		t.Fatalf("%d queries withheld, want at most the one suspect", st.Withheld)
	}
	// Besides the suspect, one query may come in as the backend dies,
	// before the balancer knows.
	if lost.Load() > 1+int64(st.Withheld) {
		t.Fatalf("%d of %d queries unanswered when a backend was killed", lost.Load(), sent.Load())
	}
}

// askOnce asks on c one query at a time until stop is closed, counting
// the queries sent and those not answered within 3 s. One try, as a
// resolver's first: no retry hides a loss.
func askOnce(c *net.UDPConn, stop <-chan struct{}, sent, lost *atomic.Int64) {
	buf := make([]byte, 1500)
	for id := uint16(1); ; id++ {
		select {
		case <-stop:
			return
		default:
		}
		q := new(dns.Msg)
		q.SetQuestion("who.example.", dns.TypeTXT)
		q.Id = id
		wire, _ := q.Pack()
		c.Write(wire)
		sent.Add(1)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				lost.Add(1)
				break
			}
			var r dns.Msg
			if r.Unpack(buf[:n]) == nil && r.Id == id {
				break
			}
		}
	}
}

func TestRepliesToNoQueryAndToUnknownStandins(t *testing.T) {
	f := newFaultBed(t)
	f.helloOK()
	// A client socket on an address that asked nothing.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	// An answer to no query on record for an address the remotes table
	// does not know is dropped, counted; one to a stand-in no client
	// has cannot be sent, and is counted too. Neither faults the
	// backend. (TestUnsolicitedRepliesAreNotReflected shows that
	// nothing is sent, and that a late answer to a known client is.)
	f.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, protocol.AddrToU32(to.Addr()), to.Port(), []byte("unsolicited answer")))
	f.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, protocol.AddrToU32(netip.MustParseAddr("240.9.9.9")), 53, []byte("to nobody")))
	testbed.Eventually(t, "both counted", func() bool {
		st := f.B.UDP.Stats()
		return st.Unsolicited == 1 && st.LostReplies == 1 && st.Unmatched == 0
	})
	if !f.B.Backends.Get(5302).OK() {
		t.Fatal("the backend was faulted")
	}
}
