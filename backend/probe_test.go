package backend

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// probeBed is a started Set on a fake clock whose timers run, with a
// fake backend 5301 that has said hello.
type probeBed struct {
	set   *Set
	clock *timeouts.Fake
	logs  *testbed.Logs
	batch *testbed.Replies
	conn  *testbed.FakeConn
	b     *Backend
}

func newProbeBed(t *testing.T, probe []byte) *probeBed {
	t.Helper()
	dir := testbed.SocketDir(t)
	pb := &probeBed{clock: timeouts.NewFake(testbed.Epoch), logs: testbed.NewLogs(), batch: &testbed.Replies{}}
	ts := testbed.RunTimeouts(t, timeouts.New(pb.clock))
	fake := testbed.NewFake(t, filepath.Join(dir, "5301"))
	pb.set = NewSet(Config{
		Dir: dir, Log: testbed.Logger(pb.logs), Timeouts: ts,
		Probe: probe, ProbeSource: netip.MustParseAddr("240.0.0.1"),
	})
	pb.set.Start(Links{Replies: func(*Backend) ReplyBatch { return pb.batch }})
	t.Cleanup(pb.set.Close)
	pb.conn = fake.Accept(t)
	pb.conn.Hello(t)
	pb.logs.Wait(t, "backend socket established", nil)
	pb.b = pb.set.Get(5301)
	return pb
}

func probeQuery(t *testing.T) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("probe.example.", dns.TypeA)
	m.Id = 0
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return wire
}

func TestProbeAnswersAreMatchedByIDAndKeptFromClients(t *testing.T) {
	query := probeQuery(t)
	pb := newProbeBed(t, query)
	pb.clock.Advance(DefaultProbeInterval) // a heartbeat and a probe are due
	var f protocol.Frame
	for f = pb.conn.Next(t); f.Type != protocol.FrameInboundUDP; f = pb.conn.Next(t) {
	}
	if f.IP != 0xf0000001 || f.Port == 0 {
		t.Fatalf("probe from %v:%d, want 240.0.0.1 and a port", protocol.U32ToAddr(f.IP), f.Port)
	}
	if string(f.Data[2:]) != string(query[2:]) {
		t.Fatalf("probe %x, want the query %x with an ID", f.Data, query)
	}
	pb.clock.Advance(time.Second) // the answer's round trip

	send := func(ip uint32, data []byte) {
		pb.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, ip, uint16(f.Port), data))
	}
	resp := append([]byte{}, f.Data...)
	resp[2] |= 0x80             // QR
	resp[3] = resp[3]&^0x0f | 5 // REFUSED still shows the handler works
	wrongID := append([]byte{}, resp...)
	wrongID[0] ^= 0xff
	send(0xf0000001, []byte{1, 2, 3}) // too short
	send(0xf0000001, f.Data)          // not a response
	send(0xf0000001, wrongID)
	send(0xf0000001, resp)
	send(0xf0000001, resp)              // answered already
	send(0x7f000001, []byte("a reply")) // for a client: the marker
	testbed.Eventually(t, "the reply to the client", func() bool { return pb.batch.Added() == 1 })
	testbed.Eventually(t, "the probe answered", func() bool { return pb.b.Stats().Probes.Answered == 1 })

	st := pb.b.Stats()
	want := ProbeStats{Enabled: true, Sent: 1, Answered: 1, RTT: time.Second}
	if st.Probes != want {
		t.Fatalf("probe stats %+v, want %+v", st.Probes, want)
	}
	if st.OutboundUDP != 1 || st.OutboundErrors != 0 || len(st.Faults) != 0 {
		t.Fatalf("outbound %d, errors %d, faults %v: probe answers were not kept apart",
			st.OutboundUDP, st.OutboundErrors, st.Faults)
	}
}

func TestUnansweredProbesFaultTheBackend(t *testing.T) {
	pb := newProbeBed(t, probeQuery(t))
	// Heartbeats are answered, probes not.
	served := make(chan struct{})
	go func() {
		defer close(served)
		pb.conn.Serve(func(f protocol.Frame) []byte {
			if f.Type == protocol.FrameClientHeartbeat {
				return protocol.AppendType(nil, protocol.FrameServerHeartbeat)
			}
			return nil
		})
	}()
	for i := range 2 {
		pb.clock.Advance(DefaultProbeInterval)
		testbed.Eventually(t, "heartbeat answered", func() bool { return pb.b.Stats().Heartbeats == uint64(i+1) })
		testbed.Eventually(t, "probe sent", func() bool { return pb.b.Stats().Probes.Sent == uint64(i+1) })
	}
	pb.clock.Advance(DefaultProbeTimeout - 2*DefaultProbeInterval - time.Millisecond)
	if !pb.b.OK() {
		t.Fatal("faulted before the probe timeout")
	}
	pb.clock.Advance(time.Millisecond)
	pb.logs.Wait(t, "no answer to DNS probes from backend (aborting connection)", map[string]any{"be_id": 5301})
	pb.logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"reason": "probe_timeout"})
	select {
	case <-served: // the balancer closed the session
	case <-time.After(10 * time.Second):
		t.Fatal("session not closed")
	}
	// The probes still waiting are given up once the session is closed.
	testbed.Eventually(t, "the probes failed", func() bool { return pb.b.Stats().Probes.Failed == 2 })
	st := pb.b.Stats()
	if st.Faults["probe_timeout"] != 1 || st.Probes.Answered != 0 || st.Probes.Sent != 2 {
		t.Fatalf("faults %v, probes %+v", st.Faults, st.Probes)
	}
	if _, armed := pb.b.probe.sendT.Armed(); armed {
		t.Fatal("probes still scheduled for a faulted backend")
	}
}

func TestRepliesToTheProbeSourceGoToClientsWhenProbesAreOff(t *testing.T) {
	pb := newProbeBed(t, nil)
	pb.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0xf0000001, 53, make([]byte, 20)))
	testbed.Eventually(t, "the reply", func() bool { return pb.batch.Added() == 1 })
	if st := pb.b.Stats(); st.Probes != (ProbeStats{}) || st.OutboundUDP != 1 {
		t.Fatalf("outbound %d, probes %+v", st.OutboundUDP, st.Probes)
	}
	if pb.b.probe.sendT != nil {
		t.Fatal("probe timers made with probes off")
	}
}

func TestProbeOffReplyPathAllocatesNothing(t *testing.T) {
	s, _ := newTestSet(t, testbed.SocketDir(t), Config{})
	b := newBackend(s, 1, "x")
	b.log = zerolog.Nop() // the trace records are the only allocations
	sess := &session{b: b, gen: 1, closing: make(chan struct{}),
		dec: protocol.NewDecoder(protocol.FromBackend, 0), replies: &testbed.Replies{}, hello: true}
	frame := protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0x7f000001, 5353, make([]byte, 60))
	if a := testing.AllocsPerRun(1000, func() {
		sess.dec.Write(frame)
		sess.frames(sess.dec, sess.replies, &sess.hello)
		sess.replies.Flush()
	}); a != 0 {
		t.Fatalf("the reply path allocates %.1f per packet", a)
	}
}

// An answer that comes with the frame that ends its session counts once:
// answered when run takes it before the fault, failed with the session
// otherwise (run drops an answer from a session already ended).
func TestProbeAnsweredAsTheSessionEndsCountsOnce(t *testing.T) {
	pb := newProbeBed(t, probeQuery(t))
	pb.clock.Advance(DefaultProbeInterval)
	var f protocol.Frame
	for f = pb.conn.Next(t); f.Type != protocol.FrameInboundUDP; f = pb.conn.Next(t) {
	}
	resp := append([]byte{}, f.Data...)
	resp[2] |= 0x80
	// One write: the answer, then a duplicate SERVER_HELLO, which
	// faults the session.
	out := protocol.AppendUDP(nil, protocol.FrameOutboundUDP, f.IP, uint16(f.Port), resp)
	pb.conn.Send(t, protocol.AppendType(out, protocol.FrameServerHello))
	testbed.Eventually(t, "the fault, and the answer taken", func() bool {
		st := pb.b.Stats()
		return st.Faults["duplicate_hello"] == 1 && len(pb.b.probe.answers) == 0 &&
			st.Probes.Answered+st.Probes.Failed == 1
	})
	if st := pb.b.Stats().Probes; st.Sent != 1 || st.Answered+st.Failed != 1 {
		t.Fatalf("probe stats %+v: want the one probe answered or failed, once", st)
	}
}
