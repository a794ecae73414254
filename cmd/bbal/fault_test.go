package main

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// faultBed is a balancer with a good Go backend (5301, "good") and a fake
// one (5302) whose first session has been accepted.
type faultBed struct {
	*harness
	fake *testbed.Fake
	conn *testbed.FakeConn
}

func newFaultBed(t *testing.T) *faultBed {
	t.Helper()
	return faultBedOn(newHarness(t, nil))
}

// faultBedOn is newFaultBed on a harness of the caller's.
func faultBedOn(h *harness) *faultBed {
	t := h.T
	t.Helper()
	testbed.StartGo(t, h.Sock("5301"), "good")
	fake := testbed.NewFake(t, h.Sock("5302"))
	h.B.Backends.Scan()
	h.Established(0, 5301)
	return &faultBed{harness: h, fake: fake, conn: fake.Accept(t)}
}

// helloOK completes the fake's handshake and waits for the balancer to
// see it.
func (f *faultBed) helloOK() {
	f.T.Helper()
	mark := f.Logs.Mark()
	f.conn.Hello(f.T)
	f.Established(mark, 5302)
}

// expectFault checks the fake is faulted for reason, its session closed,
// a reconnect scheduled after delay, and that the reconnect happens; and
// that a new client is meanwhile answered by the good backend.
func (f *faultBed) expectFault(reason backend.Reason, delay time.Duration) {
	f.T.Helper()
	f.Logs.Wait(f.T, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302, "reason": reason.String()})
	f.conn.ExpectClosed(f.T)
	if got := f.ReconnectDue(5302); got != delay {
		f.T.Fatalf("reconnect in %v, want %v", got, delay)
	}
	if got := f.Who(testbed.Loopback(100), false)["backend"]; got != "good" {
		f.T.Fatalf("new client answered by %q while 5302 is faulted", got)
	}
	if n := f.B.Backends.Get(5302).Stats().Faults[reason.String()]; n != 1 {
		f.T.Fatalf("faults[%s] = %d", reason, n)
	}
	f.Advance(delay)
	f.conn = f.fake.Accept(f.T)
	f.conn.Expect(f.T, protocol.FrameClientHello)
}

func TestBackendFaults(t *testing.T) {
	oversized := make([]byte, protocol.UDPHeaderLen)
	protocol.PutUDPHeader(oversized, protocol.FrameOutboundUDP, 0x7f000001, 53, protocol.MaxData+1)

	tests := []struct {
		name   string
		reason backend.Reason
		log    string // the cause's own log record
		act    func(f *faultBed)
		delay  time.Duration
	}{
		{"no SERVER_HELLO within the connect timeout", backend.ReasonConnectTimeout, "timed out connecting to backend",
			func(f *faultBed) {
				f.conn.Expect(f.T, protocol.FrameClientHello)
				f.Advance(backend.DefaultConnectTimeout - time.Millisecond)
				f.fake.NoAccept(f.T)
				if n := f.B.Backends.Get(5302).Stats().Faults; len(n) != 0 {
					f.T.Fatalf("faulted before the connect timeout: %v", n)
				}
				f.Advance(time.Millisecond)
			}, time.Second},
		{"frame before hello", backend.ReasonFrameBeforeHello, "frame before SERVER_HELLO",
			func(f *faultBed) {
				f.conn.Expect(f.T, protocol.FrameClientHello)
				f.conn.Send(f.T, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0x7f000001, 53, []byte("x")))
			}, time.Second},
		{"duplicate hello", backend.ReasonDuplicateHello, "duplicate SERVER_HELLO",
			func(f *faultBed) {
				f.helloOK()
				f.conn.SendType(f.T, protocol.FrameServerHello)
			}, time.Second},
		{"unknown frame type", backend.ReasonUnknownFrame, "invalid frame type",
			func(f *faultBed) {
				f.helloOK()
				f.conn.SendType(f.T, 77)
			}, time.Second},
		{"client frame type from a backend", backend.ReasonUnknownFrame, "invalid frame type",
			func(f *faultBed) {
				f.helloOK()
				f.conn.SendType(f.T, protocol.FrameClientHeartbeat)
			}, time.Second},
		{"INBOUND_TCP_OK on the standing session", backend.ReasonUnknownFrame, "invalid frame type",
			func(f *faultBed) {
				f.helloOK()
				f.conn.SendType(f.T, protocol.FrameInboundTCPOK)
			}, time.Second},
		{"OUTBOUND_UDP over 1500 bytes", backend.ReasonOversizedUDP, "backend sent oversized UDP packet",
			func(f *faultBed) {
				f.helloOK()
				f.conn.Send(f.T, oversized) // refused on the header alone
			}, time.Second},
		{"heartbeat never answered", backend.ReasonHeartbeatTimeout, "no heartbeat from backend (aborting connection)",
			func(f *faultBed) {
				f.helloOK()
				f.Heartbeat(5302)
				f.conn.Expect(f.T, protocol.FrameClientHeartbeat)
				f.Advance(backend.DefaultHeartbeatTimeout - time.Millisecond)
				if n := f.B.Backends.Get(5302).Stats().Faults; len(n) != 0 {
					f.T.Fatalf("faulted early: %v", n)
				}
				f.Advance(time.Millisecond)
			}, time.Second},
		{"unexpected heartbeat reply", backend.ReasonUnexpectedHeartbeat, "unexpected heartbeat reply",
			func(f *faultBed) {
				f.helloOK()
				f.conn.SendType(f.T, protocol.FrameServerHeartbeat)
			}, time.Second},
		{"EOF", backend.ReasonEOF, "backend socket EOF",
			func(f *faultBed) {
				f.helloOK()
				f.conn.CloseWrite()
			}, time.Second},
		{"EOF right behind a frame", backend.ReasonEOF, "backend socket EOF",
			func(f *faultBed) {
				f.helloOK()
				// The frame and the FIN reach the balancer together.
				f.conn.Send(f.T, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0x7f000001, 9, []byte("late reply")))
				f.conn.CloseWrite()
			}, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFaultBed(t)
			tt.act(f)
			f.Logs.Wait(t, tt.log, map[string]any{"be_id": 5302})
			f.expectFault(tt.reason, tt.delay)
			// After the reconnect the backend is usable again.
			mark := f.Logs.Mark()
			f.conn.SendType(t, protocol.FrameServerHello)
			f.Established(mark, 5302)
		})
	}
}

func TestHeartbeatsKeepAnsweringBackendUp(t *testing.T) {
	f := newFaultBed(t)
	f.helloOK()
	for i := range 3 {
		f.Heartbeat(5302)
		f.conn.Expect(t, protocol.FrameClientHeartbeat)
		f.Advance(time.Duration(i+1) * time.Second) // the reply's round trip
		f.conn.SendType(t, protocol.FrameServerHeartbeat)
		testbed.Eventually(t, "heartbeat RTT recorded", func() bool {
			return f.B.Backends.Get(5302).Stats().HeartbeatRTT == time.Duration(i+1)*time.Second
		})
	}
	if !f.B.Backends.Get(5302).OK() {
		t.Fatal("backend not ok after answered heartbeats")
	}
}

func TestReconnectBackOff(t *testing.T) {
	h := newHarness(t, nil)
	path := h.Sock("5305")
	fake := testbed.NewFake(t, path)
	fake.CloseKeepSocket() // connections are refused: the socket file stays
	h.B.Backends.Scan()
	h.Logs.Wait(t, "failed to connect", map[string]any{"be_id": 5305})

	want := []time.Duration{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 32, 32}
	for i, w := range want {
		w *= time.Second
		got := h.ReconnectDue(5305)
		if got != w {
			t.Fatalf("attempt %d: reconnect in %v, want %v", i+2, got, w)
		}
		mark := h.Logs.Mark()
		h.Advance(got)
		h.Logs.WaitAfter(t, mark, "failed to connect", map[string]any{"be_id": 5305})
	}
	attempts := h.B.Backends.Get(5305).Stats().ConnectAttempts
	if attempts != uint64(len(want)+1) {
		t.Fatalf("%d connect attempts, want %d", attempts, len(want)+1)
	}

	// The backend comes back: the next attempt succeeds, and a hello
	// resets the back-off to 1 s for the failure after.
	fake2 := newFakeReplacing(t, path)
	mark := h.Logs.Mark()
	h.Advance(h.ReconnectDue(5305))
	c := fake2.Accept(t)
	c.Hello(t)
	h.Established(mark, 5305)
	c.Close()
	h.Logs.WaitAfter(t, mark, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5305})
	if got := h.ReconnectDue(5305); got != time.Second {
		t.Fatalf("after a hello, reconnect in %v, want 1s", got)
	}
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// answerAs answers an INBOUND_UDP frame's query as a dnsbackend named
// name would.
func answerAs(name string, q protocol.Frame) []byte {
	from, _ := q.AddrPort()
	a := dnsbackend.Answerer{Name: name}
	return a.Answer(q.Data, from, false, nil)
}

// newFakeReplacing starts a fake on path after removing a stale socket.
func newFakeReplacing(t *testing.T, path string) *testbed.Fake {
	t.Helper()
	if err := removeIfExists(path); err != nil {
		t.Fatal(err)
	}
	return testbed.NewFake(t, path)
}

func TestFramesOneByteAtATime(t *testing.T) {
	f := newFaultBed(t)
	f.conn.Expect(t, protocol.FrameClientHello)
	mark := f.Logs.Mark()
	for _, b := range protocol.AppendType(nil, protocol.FrameServerHello) {
		f.conn.Send(t, []byte{b})
	}
	f.Established(mark, 5302)

	// A client pinned to the fake: its query arrives as INBOUND_UDP and
	// the answer goes back one byte at a time.
	from := f.PinTo(5302)
	done := make(chan map[string]string, 1)
	go func() {
		got, err := testbed.Who(f.Addr, from, false)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	q := f.conn.Expect(t, protocol.FrameInboundUDP)
	qfrom, _ := q.AddrPort()
	if qfrom.Addr() != from {
		t.Fatalf("INBOUND_UDP from %v, want %v", qfrom, from)
	}
	resp := answerAs("fake", q)
	for _, b := range protocol.AppendUDP(nil, protocol.FrameOutboundUDP, q.IP, qfrom.Port(), resp) {
		f.conn.Send(t, []byte{b})
	}
	if got := <-done; got["backend"] != "fake" {
		t.Fatalf("answer %v", got)
	}
}

func TestStuckBackendDropsAndCounts(t *testing.T) {
	const queueBytes = 16 << 10
	h := newHarness(t, func(o *server.Options) { o.Backends.QueueBytes = queueBytes })
	testbed.StartGo(t, h.Sock("5301"), "good")
	fake := testbed.NewFake(t, h.Sock("5302"))
	h.B.Backends.Scan()
	h.Established(0, 5301)
	c := fake.Accept(t)
	mark := h.Logs.Mark()
	c.Hello(t)
	h.Established(mark, 5302)
	// The fake never reads again.

	stuckFrom := h.PinTo(5302)
	goodFrom := h.PinTo(5301)
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: stuckFrom.AsSlice()}, net.UDPAddrFromAddrPort(h.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	query := make([]byte, 100)
	be := h.B.Backends.Get(5302)
	for round := 0; be.Stats().StuckDrops < 1000; round++ {
		if round > 1000 {
			t.Fatalf("no stuck drops after %d rounds: %+v", round, be.Stats())
		}
		// Bursts small enough for the kernel's socket buffer, each
		// read by the proxy before the next.
		in := h.B.UDP.Stats().PacketsIn
		for range 100 {
			conn.Write(query)
		}
		testbed.Eventually(t, "burst read", func() bool { return h.B.UDP.Stats().PacketsIn >= in+100 })
		// Other clients are served all the while.
		if got := h.Who(goodFrom, false)["backend"]; got != "good" {
			t.Fatalf("client of the good backend answered by %q", got)
		}
		st := be.Stats()
		if st.QueuedBytes > queueBytes {
			t.Fatalf("queue holds %d bytes, cap %d", st.QueuedBytes, queueBytes)
		}
	}
	st := h.B.UDP.Stats()
	if st.Drops["stuck"] == 0 {
		t.Fatalf("proxy stuck drops not counted: %v", st.Drops)
	}
	info, _ := h.B.Table.Lookup(stuckFrom)
	if info.Drops == 0 {
		t.Fatal("remote's drops not counted")
	}

	// Still wedged at the next heartbeat: faulted 15 s later (counted
	// from when the backend has sent it and armed the wait).
	h.Heartbeat(5302)
	testbed.Eventually(t, "heartbeat reply awaited", func() bool {
		return slices.ContainsFunc(h.B.Timeouts.List(), func(e timeouts.Entry) bool { return e.Name == "backend 5302 heartbeat reply" })
	})
	h.Advance(backend.DefaultHeartbeatTimeout)
	h.Logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302, "reason": "heartbeat_timeout"})
	if got := h.Who(stuckFrom, false)["backend"]; got != "good" {
		t.Fatalf("client of the wedged backend answered by %q after its fault", got)
	}
}

func TestTCPSessionFaults(t *testing.T) {
	t.Run("INBOUND_TCP_OK never sent", func(t *testing.T) {
		f := newFaultBed(t)
		f.helloOK()
		from := f.PinTo(5302)
		client := f.DialTCP(from)
		s := f.fake.Accept(t)
		tcpf := s.Expect(t, protocol.FrameInboundTCP)
		if ap, _ := tcpf.AddrPort(); ap.String() != client.LocalAddr().String() {
			t.Fatalf("INBOUND_TCP for %v, client is %v", ap, client.LocalAddr())
		}
		f.Advance(10*time.Second - time.Millisecond)
		f.Advance(time.Millisecond)
		expectEOF(t, client)
		s.ExpectClosed(t)
		f.Logs.Wait(t, "timed out connecting to backend", map[string]any{"backend": 5302})
		f.expectFault(backend.ReasonTCPOKTimeout, time.Second)
	})
	t.Run("wrong first frame", func(t *testing.T) {
		f := newFaultBed(t)
		f.helloOK()
		from := f.PinTo(5302)
		client := f.DialTCP(from)
		s := f.fake.Accept(t)
		s.Expect(t, protocol.FrameInboundTCP)
		s.SendType(t, protocol.FrameServerHeartbeat)
		expectEOF(t, client)
		f.Logs.Wait(t, "backend invalid TCP OK", map[string]any{"backend": 5302, "frame_type": 1004})
		if !f.B.Backends.Get(5302).OK() {
			t.Fatal("a bad TCP session faulted the backend")
		}
	})
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); err == nil || n != 0 {
		t.Fatalf("connection still open: read %d, %v", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection not closed within 10 s")
	}
}

func TestTCPClientBytesBeforeOKAreHeld(t *testing.T) {
	f := newFaultBed(t)
	f.helloOK()
	from := f.PinTo(5302)
	client := f.DialTCP(from)
	s := f.fake.Accept(t)
	s.Expect(t, protocol.FrameInboundTCP)

	// The client sends its query and half-closes before the backend has
	// said INBOUND_TCP_OK; nothing of it may reach the backend early or
	// be lost.
	query := []byte("\x00\x05hello")
	if _, err := client.Write(query); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := s.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("backend got client bytes before its OK: %d %v", n, err)
	}
	s.SendType(t, protocol.FrameInboundTCPOK)
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != string(query) {
		t.Fatalf("backend read %q, %v; want %q then EOF", got, err, query)
	}
	// And the reply, then the backend's EOF, reach the client.
	s.Write([]byte("\x00\x03bye"))
	s.CloseWrite()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := io.ReadAll(client)
	if err != nil || string(reply) != "\x00\x03bye" {
		t.Fatalf("client read %q, %v", reply, err)
	}
}

// slowReadDuration is how long TestSlowBackendKeepsMemoryFlat floods;
// make chaos runs it for minutes.
func slowReadDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BBAL_SLOW_READER")); err == nil {
		return d
	}
	return 3 * time.Second
}

func TestSlowBackendKeepsMemoryFlat(t *testing.T) {
	// A real clock: queued frames must grow old.
	h := newHarness(t, func(o *server.Options) { o.Clock = timeouts.System })
	testbed.StartGo(t, h.Sock("5301"), "good")
	fake := testbed.NewFake(t, h.Sock("5302"))
	h.B.Backends.Scan()
	h.Established(0, 5301)
	c := fake.Accept(t)
	c.Hello(t)
	h.Established(0, 5302)
	// The backend reads about 100 KB/s, some 1,000 queries a second:
	// a full queue (256 KiB) would wait more than the 1 s a query may.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		buf := make([]byte, 1024)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}
	}()

	slow, good := h.PinTo(5302), h.PinTo(5301)
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: slow.AsSlice()}, net.UDPAddrFromAddrPort(h.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	query := make([]byte, 100)
	be := h.B.Backends.Get(5302)
	var ms runtime.MemStats
	var base uint64
	var sent int
	start := time.Now()
	for d := slowReadDuration(); time.Since(start) < d; {
		// Ten times what the backend reads.
		for range 100 {
			conn.Write(query)
			sent++
		}
		time.Sleep(10 * time.Millisecond) // the offered rate, not synchronisation
		if base == 0 && time.Since(start) > time.Second {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			base = ms.HeapInuse
			h.Who(good, false) // the other backend's clients are served meanwhile
		}
		if st := be.Stats(); st.QueuedBytes > backend.DefaultQueueBytes || st.QueuedFrames > backend.DefaultQueueFrames {
			t.Fatalf("queue past its bounds: %d bytes, %d frames", st.QueuedBytes, st.QueuedFrames)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapInuse) - int64(base); grew > 4<<20 {
		t.Fatalf("heap grew %d bytes while the backend lagged", grew)
	}
	st := be.Stats()
	if st.StuckDrops+st.Expired == 0 {
		t.Fatalf("no drops counted for a backend reading a tenth of the load: %+v", st)
	}
	if st.Expired == 0 {
		t.Fatalf("no query expired in the queue: %+v", st)
	}
	t.Logf("%d sent in %v: %d queued, %d stuck, %d expired", sent, time.Since(start), st.UDPFrames, st.StuckDrops, st.Expired)
	h.Who(good, false)
}
