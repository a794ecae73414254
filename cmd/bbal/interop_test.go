package main

import (
	"encoding/binary"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/tools/testbed"
)

// mnameBed is a balancer in front of two node-mname processes, n1 on
// socket 5301 and n2 on 5302.
type mnameBed struct {
	*harness
	n1, n2 *testbed.Mname
}

func newMnameBed(t *testing.T) *mnameBed {
	t.Helper()
	h := newHarness(t, nil)
	n1 := testbed.StartMname(t, h.Sock("5301"), "n1")
	n2 := testbed.StartMname(t, h.Sock("5302"), "n2")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	h.Established(0, 5302)
	return &mnameBed{harness: h, n1: n1, n2: n2}
}

// answeredWithin asks from `from`, as a resolver would, retrying every
// 100 ms, until a backend other than not answers, failing if that takes
// longer than limit. It returns the answering backend's name. (A query
// sent before the balancer has seen the backend's EOF is lost with the
// backend; its retry must be answered.)
func (m *mnameBed) answeredWithin(from netip.Addr, not string, limit time.Duration) string {
	m.T.Helper()
	start := time.Now()
	for {
		got, err := testbed.WhoTimeout(m.Addr, from, false, 100*time.Millisecond)
		if err == nil && got["backend"] != not {
			if el := time.Since(start); el > limit {
				m.T.Fatalf("answered after %v, want within %v", el, limit)
			}
			return got["backend"]
		}
		if time.Since(start) > limit {
			m.T.Fatalf("no answer from a backend other than %s within %v (last: %v, %v)", not, limit, got, err)
		}
	}
}

func TestMnameAnswersUDPAndTCPWithTrueClientAddress(t *testing.T) {
	m := newMnameBed(t)
	for i := range 6 {
		for _, tcp := range []bool{false, true} {
			got := m.Who(testbed.Loopback(i), tcp) // checks the address and port the backend saw
			if want := map[bool]string{false: "udp", true: "tcp"}[tcp]; got["proto"] != want {
				t.Fatalf("answered over %q, want %q", got["proto"], want)
			}
		}
	}
}

func TestMnamePipelinedTCPQueries(t *testing.T) {
	m := newMnameBed(t)
	c := m.DialTCP(testbed.Loopback(3))
	const n = 20
	var batch []byte
	for i := range n {
		q := new(dns.Msg)
		q.SetQuestion("pipelined.example.", dns.TypeTXT)
		q.Id = uint16(1000 + i)
		wire, _ := q.Pack()
		batch = binary.BigEndian.AppendUint16(batch, uint16(len(wire)))
		batch = append(batch, wire...)
	}
	// All queries in one write, then a half-close: every answer must
	// still come back, then EOF.
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	seen := map[uint16]bool{}
	for range n {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		wire := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, wire); err != nil {
			t.Fatal(err)
		}
		var r dns.Msg
		if err := r.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		seen[r.Id] = true
	}
	for i := range n {
		if !seen[uint16(1000+i)] {
			t.Fatalf("no answer to query %d", 1000+i)
		}
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the answers: %v, want EOF", err)
	}
}

func TestMnameStickinessAndSpread(t *testing.T) {
	m := newMnameBed(t)
	perBackend := map[string]int{}
	for i := range 40 {
		from := testbed.Loopback(i)
		first := m.Who(from, false)["backend"]
		for _, tcp := range []bool{true, false, true} {
			if got := m.Who(from, tcp)["backend"]; got != first {
				t.Fatalf("client %v moved from %s to %s", from, first, got)
			}
		}
		perBackend[first]++
	}
	if d := perBackend["n1"] - perBackend["n2"]; d < -1 || d > 1 {
		t.Fatalf("40 clients spread %v, want within one of even", perBackend)
	}
	counts := m.B.Table.Counts()
	if counts[5301].Primary+counts[5302].Primary != 40 {
		t.Fatalf("primary counts %v, want 40 in all", counts)
	}
}

// clientsOf returns n client addresses pinned to backend name.
func (m *mnameBed) clientsOf(name string, n int) []netip.Addr {
	m.T.Helper()
	var out []netip.Addr
	for i := 200; len(out) < n; i++ {
		if i > 400 {
			m.T.Fatalf("fewer than %d clients on %s", n, name)
		}
		if m.Who(testbed.Loopback(i), false)["backend"] == name {
			out = append(out, testbed.Loopback(i))
		}
	}
	return out
}

func TestMnameKilledBackendFailsOverAndBack(t *testing.T) {
	m := newMnameBed(t)
	clients := m.clientsOf("n1", 3)
	m.n1.Kill() // the socket file stays, as after a crash
	for _, c := range clients {
		if got := m.answeredWithin(c, "n1", time.Second); got != "n2" {
			t.Fatalf("client %v answered by %s", c, got)
		}
	}
	m.Logs.Wait(t, "remote assigned to new backup backend", map[string]any{"be_id": 5302})

	// n1 restarts; at the next reconnect its clients go home.
	mark := m.Logs.Mark()
	m.n1 = testbed.StartMname(t, m.Sock("5301"), "n1")
	m.Advance(m.ReconnectDue(5301))
	m.Established(mark, 5301)
	for _, c := range clients {
		if got := m.Who(c, false)["backend"]; got != "n1" {
			t.Fatalf("client %v answered by %s after n1 returned", c, got)
		}
		if got := m.Who(c, true)["backend"]; got != "n1" {
			t.Fatalf("client %v answered over TCP by %s after n1 returned", c, got)
		}
	}
	m.Logs.Wait(t, "remote assigned to original primary backend", map[string]any{"be_id": 5301})
}

func TestMnameTerminatedBackendIsRemovedAndReturns(t *testing.T) {
	m := newMnameBed(t)
	clients := m.clientsOf("n1", 3)
	m.n1.Term() // node-mname unlinks its socket
	for _, c := range clients {
		if got := m.answeredWithin(c, "n1", time.Second); got != "n2" {
			t.Fatalf("client %v answered by %s", c, got)
		}
	}
	// The backend is removed, and its remotes are reassigned to a new
	// primary. Which notices first depends on whether the session's end
	// or the unlink was seen first: the scan that the directory watch
	// triggers (the backend already faulted), or the reconnect, which
	// finds no socket.
	be := m.B.Backends.Get(5301)
	testbed.Eventually(t, "removal or a reconnect", func() bool {
		if be.Removed() {
			return true
		}
		for _, e := range m.B.Timeouts.List() {
			if e.Name == "backend 5301 reconnect" {
				m.Advance(e.Due.Sub(m.Clock.Now()))
				return true
			}
		}
		return false
	})
	m.Logs.Wait(t, "backend socket removed", map[string]any{"be_id": 5301})
	if st, _ := m.B.Backends.Get(5301).State(); st != backend.StateRemoved {
		t.Fatalf("state %v, want removed", st)
	}
	for _, c := range clients {
		m.Who(c, false)
	}
	if n := m.B.Table.Counts()[5301].Primary; n != 0 {
		t.Fatalf("removed backend still primary for %d remotes", n)
	}
	for _, e := range m.B.Timeouts.List() {
		if e.Name == "backend 5301 reconnect" {
			t.Fatal("a removed backend is still being reconnected")
		}
	}

	// The socket reappears: the directory watch has it reconnected, no
	// scan being due, and new clients are given to it again.
	mark := m.Logs.Mark()
	m.n1 = testbed.StartMname(t, m.Sock("5301"), "n1")
	m.Logs.WaitAfter(t, mark, "backend socket returned", map[string]any{"be_id": 5301})
	m.Established(mark, 5301)
	if len(m.clientsOf("n1", 2)) != 2 {
		t.Fatal("returned backend gets no new clients")
	}
}

func TestNewSocketGetsNewClientsAtOnce(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartMname(t, h.Sock("5301"), "n1")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	for i := range 4 {
		if got := h.Who(testbed.Loopback(i), false)["backend"]; got != "n1" {
			t.Fatalf("answered by %s", got)
		}
	}

	// The directory watch finds it: the fake clock stands still, so no
	// periodic scan runs.
	mark := h.Logs.Mark()
	testbed.StartMname(t, h.Sock("5302"), "n2")
	h.Logs.WaitAfter(t, mark, "new backend", map[string]any{"be_id": 5302})
	h.Established(mark, 5302)
	got := map[string]int{}
	for i := 10; i < 14; i++ {
		got[h.Who(testbed.Loopback(i), false)["backend"]]++
	}
	if got["n2"] != 2 || got["n1"] != 2 {
		t.Fatalf("new clients spread %v over n1 and the new n2, want 2 each", got)
	}
}
