package tcpproxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
)

func TestPipesBytesBothWaysAndPassesHalfCloses(t *testing.T) {
	b := newBed(t, bedOptions{})
	client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
	back, hello := b.accept(t)

	t.Run("INBOUND_TCP gives the client's address and port", func(t *testing.T) {
		from := client.LocalAddr().(*net.TCPAddr).AddrPort()
		if hello.IP != protocol.AddrToU32(from.Addr()) || hello.Port != uint32(from.Port()) {
			t.Fatalf("INBOUND_TCP for %s:%d, want %s", protocol.U32ToAddr(hello.IP), hello.Port, from)
		}
	})

	q1, q2 := msg(12, 'a'), msg(300, 'b')
	t.Run("bytes sent before INBOUND_TCP_OK wait for it", func(t *testing.T) {
		write(t, client, q1)
		back.SendType(t, protocol.FrameInboundTCPOK)
		if got := readN(t, back, len(q1)); !bytes.Equal(got, q1) {
			t.Fatalf("backend got %q, want %q", got, q1)
		}
	})

	t.Run("the client's half-close reaches the backend after its bytes", func(t *testing.T) {
		write(t, client, q2)
		if err := client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := readToEOF(t, back); !bytes.Equal(got, q2) {
			t.Fatalf("backend got %d bytes before EOF, want the %d of the second query", len(got), len(q2))
		}
	})

	a1, a2 := msg(40, 'x'), msg(2000, 'y')
	t.Run("the backend's answers and half-close reach the client", func(t *testing.T) {
		write(t, back, a1)
		write(t, back, a2)
		if err := back.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got, want := readToEOF(t, client), append(bytes.Clone(a1), a2...); !bytes.Equal(got, want) {
			t.Fatalf("client got %d bytes before EOF, want %d", len(got), len(want))
		}
	})

	t.Run("the session ends and is counted", func(t *testing.T) {
		b.ended(t)
		expectClosed(t, back)
		if st := b.p.Stats(); st.Total != 1 {
			t.Fatalf("Total = %d, want 1", st.Total)
		}
		b.wantCounts(t, nil)
		info, ok := b.table.Lookup(netip.MustParseAddr("127.0.0.1"))
		if !ok || info.TCP != 1 || info.Drops != 0 || info.Primary != backendID {
			t.Fatalf("remote %+v (found %v), want one TCP connection on %d", info, ok, backendID)
		}
	})
}

func TestIPv6ClientsAreIntroducedByTheirStandin(t *testing.T) {
	b := newBed(t, bedOptions{listen: "[::1]:0"})
	client := b.dial(t, netip.Addr{})
	back, hello := b.accept(t)
	if !b.table.InStandins(hello.IP) {
		t.Fatalf("INBOUND_TCP for %s, not a stand-in", protocol.U32ToAddr(hello.IP))
	}
	if got, ok := b.table.Client(hello.IP); !ok || got != netip.IPv6Loopback() {
		t.Fatalf("stand-in %s is for %s", protocol.U32ToAddr(hello.IP), got)
	}
	back.SendType(t, protocol.FrameInboundTCPOK)
	q := msg(20, 'q')
	write(t, client, q)
	if got := readN(t, back, len(q)); !bytes.Equal(got, q) {
		t.Fatalf("backend got %q", got)
	}
	back.Close()
	expectClosed(t, client) // the backend's half-close
	client.Close()
	b.ended(t)
}

func TestAnErrorOnEitherSideClosesBoth(t *testing.T) {
	t.Run("backend", func(t *testing.T) {
		b := newBed(t, bedOptions{})
		client, back := b.session(t)
		// Closing with a query unread resets the connection: an
		// error, not a half-close, which would leave the client's
		// direction open.
		write(t, client, msg(10, 'q'))
		testbed.Eventually(t, "the query at the backend", func() bool { return inQueue(back) > 0 })
		back.Close()
		expectClosed(t, client)
		b.ended(t)
	})
	t.Run("client", func(t *testing.T) {
		b := newBed(t, bedOptions{})
		client, back := b.session(t)
		client.SetLinger(0)
		client.Close() // a reset
		b.ended(t)     // with the backend's side still open
		expectClosed(t, back)
	})
}

func TestConnectionLimits(t *testing.T) {
	t.Run("MaxConns", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{MaxConns: 2}})
		b.dial(t, netip.MustParseAddr("127.0.0.1"))
		back1, _ := b.accept(t)
		b.dial(t, netip.MustParseAddr("127.0.0.2"))
		b.accept(t)

		over := b.dial(t, netip.MustParseAddr("127.0.0.3"))
		expectClosed(t, over)
		b.fake.NoAccept(t)
		b.wantCounts(t, map[string]uint64{"max_conns": 1})

		// A place freed is a place to take.
		back1.Close()
		testbed.Eventually(t, "the first session gone", func() bool { return b.p.Stats().Active == 1 })
		b.dial(t, netip.MustParseAddr("127.0.0.3"))
		if _, f := b.accept(t); protocol.U32ToAddr(f.IP) != netip.MustParseAddr("127.0.0.3") {
			t.Fatalf("INBOUND_TCP for %s", protocol.U32ToAddr(f.IP))
		}
		if st := b.p.Stats(); st.Total != 3 || st.Active != 2 {
			t.Fatalf("Total %d, Active %d; want 3 and 2", st.Total, st.Active)
		}
	})
	t.Run("MaxConnsPerIP", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{MaxConnsPerIP: 1}})
		one := netip.MustParseAddr("127.0.0.1")
		b.dial(t, one)
		back1, _ := b.accept(t)

		expectClosed(t, b.dial(t, one))
		b.wantCounts(t, map[string]uint64{"max_conns_per_ip": 1})

		// Another address is not held back.
		b.dial(t, netip.MustParseAddr("127.0.0.2"))
		if _, f := b.accept(t); protocol.U32ToAddr(f.IP) != netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("INBOUND_TCP for %s", protocol.U32ToAddr(f.IP))
		}
		// Nor is the first, once its session is over.
		back1.Close()
		testbed.Eventually(t, "the first session gone", func() bool { return b.p.Stats().Active == 1 })
		b.dial(t, one)
		b.accept(t)
		b.wantCounts(t, map[string]uint64{"max_conns_per_ip": 1, "bad_ok": 1})
	})
}

func TestHandshakeFailures(t *testing.T) {
	t.Run("no INBOUND_TCP_OK in time faults the backend", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{OKTimeout: 3 * time.Second}})
		client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
		back, _ := b.accept(t) // the wait is armed by now
		b.clock.Advance(3 * time.Second)
		expectClosed(t, client)
		expectClosed(t, back)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"ok_timeout": 1})
		testbed.Eventually(t, "the backend faulted", func() bool { return !b.set.Get(backendID).OK() })
		if info, _ := b.table.Lookup(netip.MustParseAddr("127.0.0.1")); info.Drops != 1 || info.TCP != 0 {
			t.Fatalf("remote %+v, want one drop", info)
		}
	})
	t.Run("a wrong first frame closes the session only", func(t *testing.T) {
		b := newBed(t, bedOptions{})
		client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
		back, _ := b.accept(t)
		back.SendType(t, protocol.FrameServerHello)
		expectClosed(t, client)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"bad_ok": 1})
		b.logs.Wait(t, "backend invalid TCP OK", map[string]any{"frame_type": float64(protocol.FrameServerHello)})
		if !b.set.Get(backendID).OK() {
			t.Fatal("backend faulted")
		}
	})
	t.Run("a backend closing before INBOUND_TCP_OK", func(t *testing.T) {
		b := newBed(t, bedOptions{})
		client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
		back, _ := b.accept(t)
		back.Close()
		expectClosed(t, client)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"bad_ok": 1})
		if !b.set.Get(backendID).OK() {
			t.Fatal("backend faulted")
		}
	})
	t.Run("a backend socket refusing connections", func(t *testing.T) {
		b := newBed(t, bedOptions{})
		b.fake.CloseKeepSocket() // the standing session stays
		client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
		expectClosed(t, client)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"dial_error": 1})
		if info, _ := b.table.Lookup(netip.MustParseAddr("127.0.0.1")); info.Drops != 1 {
			t.Fatalf("remote %+v, want one drop", info)
		}
	})
}

func TestClientsNotServedAreDroppedByReason(t *testing.T) {
	t.Run("no backend", func(t *testing.T) {
		b := newBed(t, bedOptions{noBackend: true})
		expectClosed(t, b.dial(t, netip.MustParseAddr("127.0.0.1")))
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"no_backend": 1})
		if info, _ := b.table.Lookup(netip.MustParseAddr("127.0.0.1")); info.Drops != 1 {
			t.Fatalf("remote %+v, want one drop", info)
		}
	})
	t.Run("an IPv4 client within the stand-in range", func(t *testing.T) {
		b := newBed(t, bedOptions{standins: netip.MustParsePrefix("127.0.0.0/8")})
		expectClosed(t, b.dial(t, netip.MustParseAddr("127.0.0.1")))
		b.fake.NoAccept(t)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"standin_range": 1})
	})
	t.Run("an IPv6 client given no stand-in", func(t *testing.T) {
		// A /30 has two stand-ins to give; two other clients take them.
		b := newBed(t, bedOptions{listen: "[::1]:0", standins: netip.MustParsePrefix("240.0.0.0/30")})
		for _, a := range []string{"2001:db8::1", "2001:db8::2"} {
			if ip := b.table.Route(netip.MustParseAddr(a)).Wire; ip == 0 {
				t.Fatalf("%s given no stand-in", a)
			}
		}
		expectClosed(t, b.dial(t, netip.Addr{}))
		b.fake.NoAccept(t)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"no_standin": 1})
	})
}

func TestSweepLimits(t *testing.T) {
	const long = 1000 * time.Hour // a limit the test never reaches
	t.Run("idle", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{IdleTimeout: 5 * time.Second}})
		client, back := b.session(t)
		q, a := msg(10, 'q'), msg(10, 'a')
		write(t, client, q)
		readN(t, back, len(q))
		write(t, back, a)
		readN(t, client, len(a)) // nothing owed, nothing pending
		b.advanceUntil(t, "idle_timeout", time.Second, func() bool { return b.p.Stats().Limits["idle_timeout"] == 1 })
		expectClosed(t, client)
		expectClosed(t, back)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"idle_timeout": 1})
		b.logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "idle_timeout", "value": "5s"})
	})
	t.Run("answer", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{IdleTimeout: 2 * time.Second, AnswerTimeout: 7 * time.Second}})
		client, back := b.session(t)
		q := msg(10, 'q')
		write(t, client, q)
		readN(t, back, len(q)) // and no answer: a query is owed
		b.advanceUntil(t, "answer_timeout", time.Second, func() bool { return b.p.Stats().Limits["answer_timeout"] == 1 })
		expectClosed(t, client)
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"answer_timeout": 1})
		b.logs.Wait(t, "TCP connection closed by a limit", map[string]any{"limit": "answer_timeout", "value": "7s"})
	})
	t.Run("lifetime, before INBOUND_TCP_OK too", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{MaxLifetime: 3 * time.Second, OKTimeout: long}})
		client := b.dial(t, netip.MustParseAddr("127.0.0.1"))
		b.accept(t) // and no INBOUND_TCP_OK
		b.advanceUntil(t, "max_lifetime", time.Second, func() bool { return b.p.Stats().Limits["max_lifetime"] == 1 })
		expectClosed(t, client)
		b.ended(t)
		if st := b.p.Stats(); st.Limits["max_lifetime"] != 1 || st.Drops["ok_timeout"] != 0 {
			t.Fatalf("limits %v, drops %v", st.Limits, st.Drops)
		}
		if !b.set.Get(backendID).OK() {
			t.Fatal("backend faulted")
		}
	})
	t.Run("unread", func(t *testing.T) {
		b := newBed(t, bedOptions{cfg: Config{IdleTimeout: 5 * time.Second, AnswerTimeout: long, MaxLifetime: long}})
		client, back := b.session(t)
		client.SetReadBuffer(4096)
		// Many more queries than the answers that will fit in the
		// sockets' buffers, so an answer is always owed and the session
		// is never idle: only the unread limit can end it.
		write(t, client, make([]byte, 2*20000))
		readN(t, back, 2*20000)
		pour := pour(back, msg(0xffff, 'a'))
		b.advanceUntil(t, "unread_timeout", time.Second, func() bool { return b.p.Stats().Limits["unread_timeout"] == 1 })
		if err := <-pour; err == nil {
			t.Fatal("the client took every answer without reading")
		}
		b.ended(t)
		b.wantCounts(t, map[string]uint64{"unread_timeout": 1})
	})
}

func TestDrainTimeoutEndsABackendThatNeverFinishes(t *testing.T) {
	b := newBed(t, bedOptions{cfg: Config{DrainTimeout: 4 * time.Second, IdleTimeout: 1000 * time.Hour}})
	client, back := b.session(t)
	client.CloseWrite()
	readToEOF(t, back) // and the backend never closes its side
	b.advanceUntil(t, "the session ended", time.Second, func() bool { return b.p.Stats().Active == 0 })
	expectClosed(t, client)
	b.ended(t)
	b.wantCounts(t, nil)
}

func TestCloseEndsSessionsBlockedOnABackendThatReadsNothing(t *testing.T) {
	b := newBed(t, bedOptions{})
	client, back := b.session(t)
	// The backend reads nothing: the proxy's write to it blocks, and
	// with it the read of the client's socket.
	pour := pour(client, msg(0xffff, 'q'))
	testbed.Eventually(t, "the copier blocked writing to the backend", func() bool {
		g := sessionGoroutines()
		return strings.Contains(g, "(*copier).read") && strings.Contains(g, "waitWrite")
	})
	closed := make(chan struct{})
	go func() { b.p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("Close blocked:\n%s", sessionGoroutines())
	}
	if err := <-pour; err == nil {
		t.Fatal("every query went through a backend that reads none")
	}
	// The backend sees the end after the queries the proxy had
	// written to it.
	back.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, back); err != nil {
		t.Fatalf("backend's connection not closed: %v", err)
	}
	b.ended(t)
	// Closed, it accepts no more.
	if c, err := net.DialTimeout("tcp", b.addrPort().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("a closed proxy still accepts")
	}
}

func TestStopAcceptingLeavesSessionsToWaitFor(t *testing.T) {
	b := newBed(t, bedOptions{})
	client, back := b.session(t)
	b.p.StopAccepting()
	if c, err := net.DialTimeout("tcp", b.addrPort().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("still accepting")
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if b.p.Wait(done) {
		t.Fatal("Wait reports no session while one is open")
	}
	// The session goes on.
	q := msg(5, 'q')
	write(t, client, q)
	if got := readN(t, back, len(q)); !bytes.Equal(got, q) {
		t.Fatalf("backend got %q", got)
	}
	waited := make(chan bool, 1)
	go func() { waited <- b.p.Wait(context.Background()) }()
	back.Close()
	expectClosed(t, client) // the backend's half-close
	client.Close()
	select {
	case ok := <-waited:
		if !ok {
			t.Fatal("Wait gave up")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait not woken by the last session's end")
	}
	b.ended(t)
	if len(b.p.Listeners()) != 1 {
		t.Fatalf("%d listeners", len(b.p.Listeners()))
	}
}

func TestResetCountersKeepsTheActiveGauge(t *testing.T) {
	b := newBed(t, bedOptions{cfg: Config{MaxConnsPerIP: 1}})
	b.session(t)
	expectClosed(t, b.dial(t, netip.MustParseAddr("127.0.0.1")))
	if st := b.p.Stats(); st.Total != 1 || st.Limits["max_conns_per_ip"] != 1 {
		t.Fatalf("%+v", st)
	}
	b.p.ResetCounters()
	st := b.p.Stats()
	if st.Total != 0 || st.Active != 1 {
		t.Fatalf("Total %d, Active %d after reset; want 0 and 1", st.Total, st.Active)
	}
	b.wantCounts(t, nil)
}

func TestNamesOfLimitsAndDrops(t *testing.T) {
	for l := range numLimits {
		if l.String() == "unknown" || l.String() == "" {
			t.Errorf("limit %d has no name", l)
		}
	}
	for r := range numDrops {
		if r.String() == "unknown" || r.String() == "" {
			t.Errorf("drop %d has no name", r)
		}
	}
	if numLimits.String() != "unknown" || numDrops.String() != "unknown" {
		t.Error("out-of-range values are named")
	}
}
