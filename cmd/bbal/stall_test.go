package main

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// The stall tests run on the fake clock: the clock moves in steps of the
// stall check's interval, each waiting for the check it makes due
// (Harness.StallStep).

// stallBed is a harness with stall detection on; its tests start Go
// backends and held backends, whose answers the test gives.
type stallBed struct {
	*harness
}

func newStallBed(t *testing.T) *stallBed {
	t.Helper()
	h := servertest.NewConfig(t, func(c *server.Config) { c.StallFloor = placement.DefaultStallFloor }, nil)
	return &stallBed{harness: h}
}

// stepFor steps the clock by d.
func (s *stallBed) stepFor(d time.Duration) {
	s.T.Helper()
	for range d / placement.StallCheckInterval {
		s.StallStep()
	}
}

// held is a backend the test answers for: it answers heartbeats at once
// (unless deaf), and hands the test each UDP query.
type held struct {
	name    string
	conn    *testbed.FakeConn
	queries chan protocol.Frame
	answer  func(protocol.Frame) []byte
}

func (s *stallBed) startHeld(name string) *held {
	s.T.Helper()
	fake := testbed.NewFake(s.T, s.Sock(name))
	mark := s.Logs.Mark()
	s.B.Backends.Scan()
	b := &held{name: name, conn: fake.Accept(s.T), queries: make(chan protocol.Frame, 10000), answer: testbed.AnswerAs(name)}
	b.conn.Hello(s.T)
	id, _ := strconv.Atoi(name)
	s.Established(mark, id)
	go b.conn.Serve(func(f protocol.Frame) []byte {
		switch f.Type {
		case protocol.FrameClientHeartbeat:
			return protocol.AppendType(nil, protocol.FrameServerHeartbeat)
		case protocol.FrameInboundUDP:
			b.queries <- f
		}
		return nil
	})
	return b
}

// next returns the next query the held backend was given.
func (b *held) next(t testing.TB) protocol.Frame {
	t.Helper()
	select {
	case f := <-b.queries:
		return f
	case <-time.After(10 * time.Second):
		t.Fatalf("backend %s was given no query", b.name)
		return protocol.Frame{}
	}
}

// reply answers query f.
func (b *held) reply(t testing.TB, f protocol.Frame) {
	t.Helper()
	if _, err := b.conn.Write(b.answer(f)); err != nil {
		t.Fatal(err)
	}
}

// stallClient is a UDP client of the balancer at a pinned address.
type stallClient struct {
	t    testing.TB
	conn *net.UDPConn
	buf  []byte
}

func newStallClient(h *harness, from netip.Addr) *stallClient {
	h.T.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(h.Addr))
	if err != nil {
		h.T.Fatal(err)
	}
	h.T.Cleanup(func() { c.Close() })
	return &stallClient{t: h.T, conn: c, buf: make([]byte, 1500)}
}

func (c *stallClient) ask(id uint16) {
	q := new(dns.Msg)
	q.SetQuestion("who.example.", dns.TypeTXT)
	q.Id = id
	wire, _ := q.Pack()
	if _, err := c.conn.Write(wire); err != nil {
		c.t.Fatal(err)
	}
}

// answer reads the next answer and returns its ID and the backend that
// gave it, failing after 5 s.
func (c *stallClient) answer() (uint16, string) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.conn.Read(c.buf)
	if err != nil {
		c.t.Fatalf("no answer: %v", err)
	}
	var r dns.Msg
	if err := r.Unpack(c.buf[:n]); err != nil {
		c.t.Fatal(err)
	}
	fl, _ := dnsbackend.TXTFields(&r)
	return r.Id, fl["backend"]
}

// TestStalledBackendIsPassedOver: a backend that answers heartbeats but
// no queries is stalled once its queries go unanswered past the
// threshold (800 ms for a backend that has answered nothing yet): its
// unanswered queries but the first (the suspect) are answered by the
// other backend, its client's new queries and TCP connections go there,
// and it shows as stalled. It answers nothing, and is tried again after
// the hold, then after twice, four and eight times the hold.
func TestStalledBackendIsPassedOver(t *testing.T) {
	s := newStallBed(t)
	s.StartGo("5301")
	deaf := s.startHeld("5302")
	be := s.B.Backends.Get(5302)
	c := newStallClient(s.harness, s.PinTo(5302))
	for id := uint16(1); id <= 3; id++ {
		c.ask(id)
		deaf.next(t)
	}
	// The first check sees the queries waiting; the silence counts
	// from there.
	s.stepFor(placement.MaxStallThreshold)
	if be.Stats().Stalled {
		t.Fatal("stalled before the threshold")
	}
	s.StallStep()
	s.StallStep()
	st := be.Stats()
	if !st.Stalled || !st.Avoided || st.Stalls != 1 || st.StallSince.IsZero() || st.StallSince.After(s.Clock.Now()) {
		t.Fatalf("stalled %v, avoided %v, stalls %d, since %v", st.Stalled, st.Avoided, st.Stalls, st.StallSince)
	}
	s.Logs.Wait(t, "backend stopped answering: stalled", map[string]any{"be_id": 5302, "resent": 2, "withheld": 1, "avoided": true})
	got := map[uint16]string{}
	for range 2 {
		id, by := c.answer()
		got[id] = by
	}
	if got[2] != "5301" || got[3] != "5301" {
		t.Fatalf("answers %v, want 2 and 3 from 5301", got)
	}
	c.ask(4)
	if id, by := c.answer(); id != 4 || by != "5301" {
		t.Fatalf("a new query answered %d by %q, want 4 by 5301", id, by)
	}
	if by := s.Who(c.conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr(), true)["backend"]; by != "5301" {
		t.Fatalf("a new TCP connection went to %q", by)
	}

	// Trials: each time the hold (doubled, up to 8 times) has passed,
	// the client's queries go home again, are not answered, and the
	// backend is stalled again.
	stallStart := s.Clock.Now()
	for i, hold := range []time.Duration{1, 2, 4, 8, 8} {
		hold *= placement.DefaultStallHold
		mark := s.Logs.Mark()
		for s.Clock.Now().Before(stallStart.Add(hold - placement.StallCheckInterval)) {
			s.StallStep()
		}
		if !be.Stats().Stalled {
			t.Fatalf("trial %d before the hold of %v", i+1, hold)
		}
		s.StallStep()
		if be.Stats().Stalled {
			t.Fatalf("no trial %d after %v", i+1, hold)
		}
		s.Logs.WaitAfter(t, mark, "stalled backend answered nothing: trying it again", map[string]any{"be_id": 5302, "trials": i + 1})
		// Two queries, both answered by 5301 once it is stalled
		// again: it answered nothing since the trial began, and the
		// trial's queries are no suspects.
		id := uint16(10 + 2*i)
		c.ask(id)
		c.ask(id + 1)
		deaf.next(t) // home again
		deaf.next(t)
		for !be.Stats().Stalled {
			s.StallStep()
		}
		s.Logs.WaitAfter(t, mark, "backend stopped answering: stalled", map[string]any{"be_id": 5302, "again": true, "resent": 2, "withheld": 0})
		stallStart = s.Clock.Now()
		for range 2 {
			if got, by := c.answer(); got != id && got != id+1 || by != "5301" {
				t.Fatalf("answer %d by %q, want %d or %d by 5301", got, by, id, id+1)
			}
		}
	}
}

// stallHeld starts a Go backend 5301 and a held 5302, has a client
// pinned to 5302 ask ids, each given to 5302 and left unanswered, and
// steps the clock until 5302 is stalled. It returns the queries 5302
// holds.
func (s *stallBed) stallHeld(ids ...uint16) (*held, *stallClient, []protocol.Frame) {
	s.T.Helper()
	s.StartGo("5301")
	b := s.startHeld("5302")
	c := newStallClient(s.harness, s.PinTo(5302))
	var fs []protocol.Frame
	for _, id := range ids {
		c.ask(id)
		fs = append(fs, b.next(s.T))
	}
	s.stallOf(5302)
	return b, c, fs
}

// stallOf steps the clock until backend id is stalled, failing after the
// longest threshold and a check more.
func (s *stallBed) stallOf(id int) {
	s.T.Helper()
	be := s.B.Backends.Get(backend.ID(id))
	for range placement.MaxStallThreshold/placement.StallCheckInterval + 3 {
		s.StallStep()
		if be.Stats().Stalled {
			return
		}
	}
	st := be.Stats()
	lines := s.Logs.Lines()
	s.T.Fatalf("backend %d not stalled: outstanding %d, queued %d bytes, ok %v\n%s", id, st.Outstanding, st.QueuedBytes, st.OK,
		strings.Join(lines[max(0, len(lines)-15):], "\n"))
}

// TestAnswersAfterAStallReachTheClientOnce: the queries of a stalled
// backend are answered by the other; when it answers them after all,
// those answers are dropped, counted redundant, except the one to the
// query withheld as the suspect, which the client has had no answer
// to. After the hold, answering again, it gets its client back.
func TestAnswersAfterAStallReachTheClientOnce(t *testing.T) {
	s := newStallBed(t)
	b, c, fs := s.stallHeld(1, 2, 3)
	stallAt := s.Clock.Now()
	for range 2 {
		if _, by := c.answer(); by != "5301" {
			t.Fatalf("answer by %q while 5302 is stalled", by)
		}
	}
	for _, f := range fs {
		b.reply(t, f) // late: the backend wakes
	}
	testbed.Eventually(t, "late answers dropped", func() bool { return s.B.UDP.Stats().Redundant == 2 })
	if id, by := c.answer(); id != 1 || by != "5302" {
		t.Fatalf("answer %d by %q, want the withheld 1 by 5302", id, by)
	}
	c.ask(4) // still stalled: the hold has not passed
	if id, by := c.answer(); id != 4 || by != "5301" {
		t.Fatalf("answer %d by %q, want 4 by 5301 (and no second answer to 2 or 3)", id, by)
	}
	be := s.B.Backends.Get(5302)
	mark := s.Logs.Mark()
	for s.Clock.Now().Before(stallAt.Add(placement.DefaultStallHold)) {
		if !be.Stats().Stalled {
			t.Fatalf("stall ended after %v, before the hold", s.Clock.Now().Sub(stallAt))
		}
		s.StallStep()
	}
	s.StallStep()
	if be.Stats().Stalled {
		t.Fatal("still stalled after the hold, answering again")
	}
	s.Logs.WaitAfter(t, mark, "backend answering again: no longer stalled", map[string]any{"be_id": 5302})
	c.ask(5)
	b.reply(t, b.next(t)) // home
	if id, by := c.answer(); id != 5 || by != "5302" {
		t.Fatalf("answer %d by %q, want 5 by 5302", id, by)
	}
	if st := be.Stats(); st.Stalls != 1 || st.StalledTime < placement.DefaultStallHold {
		t.Fatalf("stalls %d, stalled for %v", st.Stalls, st.StalledTime)
	}
}

// TestTheFirstAnswerWinsWhicheverComesFirst: the stalled backend answers
// a query sent on before the backend it went to does: the client has
// that answer, and the other's is dropped.
func TestTheFirstAnswerWinsWhicheverComesFirst(t *testing.T) {
	s := newStallBed(t)
	late := s.startHeld("5302")
	backup := s.startHeld("5303")
	c := newStallClient(s.harness, s.PinTo(5302))
	c.ask(1)
	c.ask(2)
	fs := []protocol.Frame{late.next(t), late.next(t)}
	s.stallOf(5302)
	moved := backup.next(t) // 2; 1 is withheld
	late.reply(t, fs[1])
	if id, by := c.answer(); id != 2 || by != "5302" {
		t.Fatalf("answer %d by %q, want 2 by 5302", id, by)
	}
	backup.reply(t, moved)
	testbed.Eventually(t, "the second answer dropped", func() bool { return s.B.UDP.Stats().Redundant == 1 })
	c.ask(3)
	backup.reply(t, backup.next(t))
	if id, by := c.answer(); id != 3 || by != "5303" {
		t.Fatalf("answer %d by %q, want 3 by 5303 (and no second answer to 2)", id, by)
	}
}

// TestTheOnlyBackendStalledIsStillSentTo: with nowhere better, a stalled
// backend goes on being given its clients' queries, counted, and logged.
func TestTheOnlyBackendStalledIsStillSentTo(t *testing.T) {
	s := newStallBed(t)
	b := s.startHeld("5302")
	c := newStallClient(s.harness, s.PinTo(5302))
	c.ask(1)
	b.next(t)
	s.stallOf(5302)
	s.Logs.Wait(t, "every available backend is stalled: sending to the stalled ones", nil)
	s.Logs.Wait(t, "backend stopped answering: stalled", map[string]any{"be_id": 5302, "avoided": false, "resent": 0})
	c.ask(2)
	b.reply(t, b.next(t))
	if id, by := c.answer(); id != 2 || by != "5302" {
		t.Fatalf("answer %d by %q, want 2 by 5302", id, by)
	}
	if st := s.B.Backends.Get(5302).Stats(); st.Avoided || st.StalledSent != 1 {
		t.Fatalf("avoided %v, sent while stalled %d", st.Avoided, st.StalledSent)
	}
}

// TestSlowSteadyBackendsAreNeverStalled: backends that take 50 ms or
// 300 ms to answer each query, under steady load for a minute, and one
// that drains a burst beyond its capacity over a second, answering all
// the while, are never stalled.
func TestSlowSteadyBackendsAreNeverStalled(t *testing.T) {
	for _, lat := range []time.Duration{50 * time.Millisecond, 300 * time.Millisecond} {
		t.Run(lat.String(), func(t *testing.T) {
			s := newStallBed(t)
			s.StartGo("5301")
			b := s.startHeld("5302")
			c := newStallClient(s.harness, s.PinTo(5302))
			type pending struct {
				f   protocol.Frame
				due time.Time
			}
			var waiting []pending
			answered := 0
			for i := range int(time.Minute / placement.StallCheckInterval) {
				c.ask(uint16(i))
				waiting = append(waiting, pending{b.next(t), s.Clock.Now().Add(lat)})
				s.StallStep()
				for len(waiting) > 0 && !waiting[0].due.After(s.Clock.Now()) {
					b.reply(t, waiting[0].f)
					waiting = waiting[1:]
					if _, by := c.answer(); by != "5302" {
						t.Fatalf("answered by %q", by)
					}
					answered++
				}
			}
			st := s.B.Backends.Get(5302).Stats()
			if st.Stalls != 0 || st.Latency != lat {
				t.Fatalf("%d stalls; latency %v, want %v", st.Stalls, st.Latency, lat)
			}
			t.Logf("%d queries answered in %v each, no stall", answered, lat)
		})
	}
	t.Run("burst", func(t *testing.T) {
		s := newStallBed(t)
		s.StartGo("5301")
		b := s.startHeld("5302")
		c := newStallClient(s.harness, s.PinTo(5302))
		// Answered at once first, for a measured latency.
		c.ask(0)
		b.reply(t, b.next(t))
		c.answer()
		const burst = 400
		var fs []protocol.Frame
		for i := range burst {
			c.ask(uint16(i + 1))
			fs = append(fs, b.next(t))
		}
		// 20 answers a check interval: 400 in a second.
		for len(fs) > 0 {
			s.StallStep()
			for _, f := range fs[:20] {
				b.reply(t, f)
				c.answer()
			}
			fs = fs[20:]
		}
		if st := s.B.Backends.Get(5302).Stats(); st.Stalls != 0 {
			t.Fatalf("%d stalls draining a burst", st.Stalls)
		}
	})
}

// TestAStallingBackendFlapsNoFasterThanTheHold: a backend that falls
// silent for 1 s in every 1.5 (longer than the threshold's cap, as its
// answer times measured include its silences) is stalled again and
// again, but each stall lasts the hold at least.
func TestAStallingBackendFlapsNoFasterThanTheHold(t *testing.T) {
	s := newStallBed(t)
	s.StartGo("5301")
	b := s.startHeld("5302")
	from := s.PinTo(5302)
	c := newStallClient(s.harness, from)
	be := s.B.Backends.Get(5302)
	start := s.Clock.Now()
	var held []protocol.Frame
	var stalls []time.Time
	wasStalled := false
	for i := 0; s.Clock.Now().Sub(start) < 20*time.Second; i++ {
		silent := s.Clock.Now().Sub(start)%(1500*time.Millisecond) >= 500*time.Millisecond
		c.ask(uint16(i))
		testbed.Eventually(t, "query routed", func() bool {
			in, _ := s.B.Table.Lookup(from)
			return in.UDP == uint64(i+1)
		})
		// What 5302 was given (one routed just now may come later).
		for drained := false; !drained; {
			select {
			case f := <-b.queries:
				held = append(held, f)
			default:
				drained = true
			}
		}
		if !silent {
			for _, f := range held {
				b.reply(t, f)
			}
			held = held[:0]
		}
		s.StallStep()
		if st := be.Stats().Stalled; st != wasStalled {
			wasStalled = st
			if st {
				stalls = append(stalls, s.Clock.Now())
			} else if d := s.Clock.Now().Sub(stalls[len(stalls)-1]); d < placement.DefaultStallHold {
				t.Fatalf("a stall ended after %v, within the hold", d)
			}
		}
		for {
			c.conn.SetReadDeadline(time.Now()) // drain what came
			if _, err := c.conn.Read(c.buf); err != nil {
				break
			}
		}
	}
	if len(stalls) < 2 {
		t.Fatalf("%d stalls in 20 s of a backend silent 1 s in 1.5", len(stalls))
	}
	for i := 1; i < len(stalls); i++ {
		if d := stalls[i].Sub(stalls[i-1]); d < placement.DefaultStallHold {
			t.Fatalf("stalls %v apart", d)
		}
	}
	t.Logf("%d stalls in 20 s", len(stalls))
}

// TestABackendThatNeverReadsIsStalled: a backend that sends its hello
// and never reads again is stalled: its queries, in its socket's buffer,
// are answered by the other backend; flooded until its session takes
// nothing more, the stall names how long the queue has waited.
func TestABackendThatNeverReadsIsStalled(t *testing.T) {
	for _, flood := range []bool{false, true} {
		t.Run(map[bool]string{false: "queries", true: "flood"}[flood], func(t *testing.T) {
			s := newStallBed(t)
			s.StartGo("5301")
			fake := testbed.NewFake(t, s.Sock("5302"))
			mark := s.Logs.Mark()
			s.B.Backends.Scan()
			fake.Accept(t).Hello(t) // and never reads again
			s.Established(mark, 5302)
			be := s.B.Backends.Get(5302)
			c := newStallClient(s.harness, s.PinTo(5302))
			n := 3
			if flood {
				// 1400-byte queries until the session's socket and
				// then its queue are full: the next is dropped, stuck.
				big := make([]byte, 1400)
				for n = 0; be.Stats().StuckDrops == 0; n++ {
					if n > 10000 {
						t.Fatal("the session's queue never filled")
					}
					big[0], big[1] = byte(n>>8), byte(n)
					c.conn.Write(big)
					testbed.Eventually(t, "queued or dropped", func() bool {
						st := be.Stats()
						return st.UDPFrames+st.StuckDrops == uint64(n+1)
					})
				}
				n-- // the one dropped is not outstanding
			} else {
				for id := range uint16(n) {
					c.ask(id + 1)
				}
			}
			testbed.Eventually(t, "queries outstanding", func() bool { return be.Outstanding() == int64(n) })
			s.stallOf(5302)
			rec := s.Logs.Wait(t, "backend stopped answering: stalled", map[string]any{"be_id": 5302, "avoided": true, "withheld": 1})
			if _, ok := rec["queue_wait_ms"]; ok != flood {
				t.Fatalf("queue_wait_ms in %v; want it with the flood only", rec)
			}
			if !flood {
				for range 2 {
					if _, by := c.answer(); by != "5301" {
						t.Fatalf("answered by %q", by)
					}
				}
			}
			c.ask(1000)
			for {
				// With the flood, 5301's answers to the junk come first.
				if id, by := c.answer(); id == 1000 {
					if by != "5301" {
						t.Fatalf("a new query answered by %q", by)
					}
					break
				}
			}
		})
	}
}
