package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy"
)

// One client datagram must take down at most one backend: a query in
// flight on a backend that died is not sent on to the next if it is
// suspected of the death, and one seen at two deaths is quarantined.

// poisonQuery is a TXT query for name with ID id whose EDNS OPT record
// advertises a UDP payload size of 0: node-mname 1.5.1 throws on it
// ("Truncated answer message too large") and dies.
func poisonQuery(name string, id uint16) []byte {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.Id = id
	q.SetEdns0(0, false)
	wire, err := q.Pack()
	if err != nil {
		panic(err)
	}
	return wire
}

func txtQuery(name string, id uint16) []byte {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.Id = id
	wire, _ := q.Pack()
	return wire
}

// udpClient is a client socket on address from, talking to the
// balancer.
func udpClient(t *testing.T, from netip.Addr, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// answers reads DNS answers on c until it has one for each of ids,
// failing after 5 s, and returns who answered each.
func answers(t *testing.T, c *net.UDPConn, ids ...uint16) map[uint16]string {
	t.Helper()
	got := map[uint16]string{}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	for len(got) < len(ids) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("answers %v of %v: %v", got, ids, err)
		}
		var r dns.Msg
		if r.Unpack(buf[:n]) != nil {
			continue
		}
		fl, _ := dnsbackend.TXTFields(&r)
		got[r.Id] = fl["backend"]
	}
	for _, id := range ids {
		if _, ok := got[id]; !ok {
			t.Fatalf("answers %v, want %v", got, ids)
		}
	}
	return got
}

// faulted returns the backends faulted at least once.
func faulted(h *harness) []backend.ID {
	var out []backend.ID
	for _, b := range h.B.Backends.All() {
		if len(b.Stats().Faults) > 0 {
			out = append(out, b.ID())
		}
	}
	return out
}

// TestPoisonQueryTakesDownOneNodeMnameAtMost sends one poison datagram
// to one of four node-mname processes under load from clients of all
// four: it kills that one, and no other.
func TestPoisonQueryTakesDownOneNodeMnameAtMost(t *testing.T) {
	h := newHarness(t, nil)
	ids := []backend.ID{5301, 5302, 5303, 5304}
	for _, id := range ids {
		testbed.StartMname(t, h.Sock(strconv.Itoa(int(id))), "n"+strconv.Itoa(int(id)))
	}
	h.B.Backends.Scan()
	for _, id := range ids {
		h.Established(0, int(id))
	}
	// Two clients on each backend, each with one query at a time and no
	// retry (a retry would hide a loss).
	var lost [4]atomic.Int64
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	home := make([]netip.Addr, len(ids))
	for i, id := range ids {
		home[i] = h.PinTo(id)
		for range 2 {
			c := udpClient(t, home[i], h.Addr)
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				askOnce(c, stop, &sent, &lost[i])
			}(i)
		}
	}
	testbed.Eventually(t, "load on every backend", func() bool {
		for _, id := range ids {
			if h.B.Backends.Get(id).Stats().Answered < 100 {
				return false
			}
		}
		return true
	})
	// The poison, from a client of 5302.
	victim := h.B.Backends.Get(5302)
	sentAt := time.Now()
	udpClient(t, home[1], h.Addr).Write(poisonQuery("who.example.", 4242))
	testbed.Eventually(t, "5302 down", func() bool { return !victim.OK() })
	t.Logf("5302 down %v after the poison: %v", time.Since(sentAt), victim.Stats().Faults)
	// Load goes on, long enough for any cascade to run its course (or
	// until it has stalled: every client waiting for its lost query).
	after := sent.Load()
	for deadline := time.Now().Add(10 * time.Second); sent.Load() < after+1000 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // polling the real clients' progress
	}
	close(stop)
	wg.Wait()
	st := h.B.UDP.Stats()
	t.Logf("%d queries; lost by backend %v, %v, %v, %v; resent %d, unresent %d, withheld %d, quarantined %d",
		sent.Load(), lost[0].Load(), lost[1].Load(), lost[2].Load(), lost[3].Load(), st.Resent, st.Unresent, st.Withheld, st.Quarantined)
	if got := faulted(h); len(got) != 1 || got[0] != 5302 {
		t.Fatalf("backends faulted: %v, want only 5302", got)
	}
	for i, id := range ids {
		// The victim's clients may lose the one query that came in as
		// it died, before the balancer knew.
		if n := lost[i].Load(); n > 0 && id != 5302 || n > 1 {
			t.Errorf("clients of %d lost %d queries", id, n)
		}
	}
	if st.Withheld != 1 {
		t.Errorf("%d queries withheld, want the poison", st.Withheld)
	}
	h.Logs.Wait(t, "query suspected of a backend's death: not sent again",
		map[string]any{"be_id": 5302, "remote_ip": home[1].String(), "dns_id": 4242, "question": "who.example. TXT"})
}

// fakeBackends starts fakes on the given sockets, completes their
// handshakes, and serves each with serve(name) on its own goroutine.
func fakeBackends(h *harness, serve func(name string, c *testbed.FakeConn) func(protocol.Frame) []byte, names ...string) {
	h.T.Helper()
	var fakes []*testbed.Fake
	for _, n := range names {
		fakes = append(fakes, testbed.NewFake(h.T, h.Sock(n)))
	}
	mark := h.Logs.Mark()
	h.B.Backends.Scan()
	for i, n := range names {
		c := fakes[i].Accept(h.T)
		c.Expect(h.T, protocol.FrameClientHello)
		c.SendType(h.T, protocol.FrameServerHello)
		id, _ := strconv.Atoi(n)
		h.Established(mark, id)
		go c.Serve(serve(n, c))
	}
}

// qname is the question name of a query frame's data, or "".
func qname(f protocol.Frame) string {
	var m dns.Msg
	if f.Type != protocol.FrameInboundUDP || m.Unpack(f.Data) != nil || len(m.Question) != 1 {
		return ""
	}
	return m.Question[0].Name
}

// TestOversizedAnswerIsNotSentToTheNextBackend: a backend that answers a
// query with an OUTBOUND_UDP over 1500 bytes is faulted; its other
// queries are sent to the backup, and that one is not.
func TestOversizedAnswerIsNotSentToTheNextBackend(t *testing.T) {
	h := newHarness(t, nil)
	// Both answer big.example. oversized; 5302 holds hold.example.
	fakeBackends(h, func(name string, _ *testbed.FakeConn) func(protocol.Frame) []byte {
		answer := testbed.AnswerAs(name)
		return func(f protocol.Frame) []byte {
			switch qname(f) {
			case "big.example.":
				big := append(f.Data[:len(f.Data):len(f.Data)], make([]byte, 1600)...)
				return protocol.AppendUDP(nil, protocol.FrameOutboundUDP, f.IP, uint16(f.Port), big)
			case "hold.example.":
				if name == "5302" {
					return nil
				}
			}
			return answer(f)
		}
	}, "5301", "5302")
	c := udpClient(t, h.PinTo(5302), h.Addr)
	const held = 5
	for i := range held {
		c.Write(txtQuery("hold.example.", uint16(10+i)))
	}
	testbed.Eventually(t, "queries held", func() bool { return h.B.Backends.Get(5302).Stats().UDPFrames == held })
	c.Write(txtQuery("big.example.", 99))
	h.Logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302, "reason": "oversized_udp"})
	// The held queries are answered by 5301, which the big one did not
	// reach: 5301 answers in order, and answers a query sent after.
	for id, who := range answers(t, c, 10, 11, 12, 13, 14) {
		if who != "5301" {
			t.Fatalf("query %d answered by %q", id, who)
		}
	}
	if got := h.Who(h.PinTo(5301), false)["backend"]; got != "5301" {
		t.Fatalf("answered by %q", got)
	}
	if got := faulted(h); len(got) != 1 || got[0] != 5302 {
		t.Fatalf("backends faulted: %v, want only 5302", got)
	}
	if st := h.B.UDP.Stats(); st.Resent != held || st.Withheld != 1 {
		t.Fatalf("resent %d, withheld %d; want %d and 1", st.Resent, st.Withheld, held)
	}
	h.Logs.Wait(t, "query suspected of a backend's death: not sent again",
		map[string]any{"be_id": 5302, "dns_id": 99, "question": "big.example. TXT"})
}

// TestQueryOfDeathIsQuarantined: three fakes that die on one query (a
// poison EDNS normalising would not catch). It takes down the backend
// it was sent to; the query sent after it is sent on to the backup, and
// it is not. The client's retransmit takes down the backup, and is seen
// at its second death: the next copy is dropped, and reaches no
// backend.
func TestQueryOfDeathIsQuarantined(t *testing.T) {
	h := newHarness(t, nil)
	reading := make(chan string, 3) // a fake has read the poison
	gate := make(chan struct{})     // the first to read it dies once this is closed
	var first atomic.Bool
	fakeBackends(h, func(name string, c *testbed.FakeConn) func(protocol.Frame) []byte {
		answer := testbed.AnswerAs(name)
		return func(f protocol.Frame) []byte {
			if qname(f) == "die.example." {
				reading <- name
				if first.CompareAndSwap(false, true) {
					<-gate
				}
				c.Close()
				return nil
			}
			return answer(f)
		}
	}, "5301", "5302", "5303")
	x := h.PinTo(5302)
	poison, other := udpClient(t, x, h.Addr), udpClient(t, x, h.Addr)
	other.Write(txtQuery("who.example.", 1))
	answers(t, other, 1)
	poison.Write(txtQuery("die.example.", 7))
	<-reading
	// A query comes in while 5302 is dying.
	other.Write(txtQuery("who.example.", 2))
	testbed.Eventually(t, "query queued", func() bool { return h.B.Backends.Get(5302).Stats().UDPFrames == 3 })
	close(gate)
	backup := answers(t, other, 2)[2]
	if backup == "" || backup == "5302" {
		t.Fatalf("query 2 answered by %q", backup)
	}
	id, _ := strconv.Atoi(backup)
	// The backup answers in order: the poison did not come before this.
	if got := h.Who(h.PinTo(backend.ID(id)), false)["backend"]; got != backup {
		t.Fatalf("answered by %q, want %s", got, backup)
	}
	if got := faulted(h); len(got) != 1 {
		t.Fatalf("backends faulted: %v, want only 5302", got)
	}
	h.Logs.Wait(t, "query suspected of a backend's death: not sent again",
		map[string]any{"be_id": 5302, "remote_ip": x.String(), "dns_id": 7, "question": "die.example. TXT"})

	// The client asks again: a second datagram, a second death.
	poison.Write(txtQuery("die.example.", 7))
	if got := <-reading; got != backup {
		t.Fatalf("the retransmit reached %s, not the backup %s", got, backup)
	}
	h.Logs.Wait(t, "query seen at two backend deaths: quarantined",
		map[string]any{"be_id": id, "remote_ip": x.String(), "dns_id": 7, "question": "die.example. TXT"})
	// And again: dropped, counted, and the last backend lives.
	poison.Write(txtQuery("die.example.", 7))
	testbed.Eventually(t, "dropped", func() bool { return h.B.UDP.Stats().Drops["quarantined"] == 1 })
	other.Write(txtQuery("who.example.", 3))
	last := answers(t, other, 3)[3]
	if got := faulted(h); len(got) != 2 || slices.Contains(got, backend.ID(must(strconv.Atoi(last)))) {
		t.Fatalf("backends faulted: %v; the client's last answer from %s", got, last)
	}
	if st := h.B.UDP.Stats(); st.Withheld != 1 || st.Quarantined != 1 || st.Resent != 1 {
		t.Fatalf("resent %d, withheld %d, quarantined %d; want 1, 1 and 1", st.Resent, st.Withheld, st.Quarantined)
	}
	// The JSON API and the metrics say the same.
	c := debugapi.NewClient(h.DebugSocket)
	defer c.Close()
	if js, err := c.Stats(t.Context()); err != nil || js.UDP.Withheld != 1 || js.UDP.Quarantined != 1 || js.Drops["udp"]["quarantined"] != 1 {
		t.Fatalf("/v1/stats: %+v %v %v", js.UDP, js.Drops, err)
	}
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return new(net.Dialer).DialContext(ctx, "unix", h.DebugSocket)
	}}}
	resp, err := hc.Get("http://bbal/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{"bbal_udp_withheld_total 1", "bbal_udp_quarantined_total 1", `bbal_drops_total{proto="udp",reason="quarantined"} 1`} {
		if !strings.Contains(string(body), "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestWedgedBackendsQueriesAreNotSentOn: a backend faulted for a late
// heartbeat may not have read its last queries, and the poison that
// wedged it may be any of them: none is sent to the backup.
func TestWedgedBackendsQueriesAreNotSentOn(t *testing.T) {
	f := newFaultBed(t) // 5301 a Go backend ("good"), 5302 the fake
	f.helloOK()
	f.Heartbeat(5302)
	f.conn.Expect(t, protocol.FrameClientHeartbeat) // and never answered
	testbed.Eventually(t, "heartbeat reply awaited", func() bool {
		return slices.ContainsFunc(f.B.Timeouts.List(), func(e timeouts.Entry) bool { return e.Name == "backend 5302 heartbeat reply" })
	})
	f.Advance(backend.DefaultHeartbeatTimeout - udpproxy.FlightAge/2)
	c := udpClient(t, f.PinTo(5302), f.Addr)
	const n = 5
	for i := range n {
		c.Write(txtQuery("who.example.", uint16(20+i)))
	}
	testbed.Eventually(t, "queries queued", func() bool { return f.B.Backends.Get(5302).Stats().UDPFrames == n })
	f.Advance(udpproxy.FlightAge / 2)
	f.Logs.Wait(t, "unanswered queries sent to other backends", map[string]any{"be_id": 5302, "resent": 0, "withheld": n})
	if st := f.B.UDP.Stats(); st.Resent != 0 || st.Withheld != n || st.Quarantined != 0 {
		t.Fatalf("resent %d, withheld %d, quarantined %d; want 0, %d, 0", st.Resent, st.Withheld, st.Quarantined, n)
	}
	if st := f.B.Backends.Get(5302).Stats(); st.Unanswered != n || st.Outstanding != 0 {
		t.Fatalf("wedged backend: unanswered %d, outstanding %d", st.Unanswered, st.Outstanding)
	}
	// The client's next query is the backup's.
	c.Write(txtQuery("who.example.", 30))
	if got := answers(t, c, 30)[30]; got != "good" {
		t.Fatalf("answered by %q", got)
	}
}
