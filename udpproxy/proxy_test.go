package udpproxy

import (
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bed is a proxy whose one backend (a fake) has said hello and then
// discards whatever it is sent.
type bed struct {
	p     *Proxy
	set   *backend.Set
	table *remotes.Table
	conn  *testbed.FakeConn
}

// newBed returns a started bed; each of tableOpts changes the remotes
// table's Config first.
func newBed(t testing.TB, log zerolog.Logger, tableOpts ...func(*remotes.Config)) *bed {
	t.Helper()
	return newBedWith(t, log, nil, tableOpts...)
}

// newBedWith is newBed with setup, when not nil, called on the proxy
// before it starts.
func newBedWith(t testing.TB, log zerolog.Logger, setup func(*Proxy), tableOpts ...func(*remotes.Config)) *bed {
	t.Helper()
	return newBedOf(t, log, 1, setup, tableOpts...)
}

// newBedSockets is newBed with n sockets on one address, as -r n binds
// them.
func newBedSockets(t testing.TB, log zerolog.Logger, n int) *bed {
	t.Helper()
	return newBedOf(t, log, n, nil)
}

func newBedOf(t testing.TB, log zerolog.Logger, n int, setup func(*Proxy), tableOpts ...func(*remotes.Config)) *bed {
	t.Helper()
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = uc
	}
	return newBedOn(t, log, conns, timeouts.System, setup, tableOpts...)
}

// newBedOn is a started bed on conns, its timers on clock.
func newBedOn(t testing.TB, log zerolog.Logger, conns []*net.UDPConn, clock timeouts.Clock, setup func(*Proxy), tableOpts ...func(*remotes.Config)) *bed {
	t.Helper()
	dir := testbed.SocketDir(t)
	fake := testbed.NewFake(t, filepath.Join(dir, "5301"))
	ts := testbed.RunTimeouts(t, timeouts.New(clock))
	set := backend.NewSet(backend.Config{Dir: dir, Log: log, Timeouts: ts})
	picker := placement.New[backend.ID, *backend.Backend](set, placement.Config{Log: log, Clock: ts.Clock()})
	tcfg := remotes.Config{Backends: set, Picker: picker, Timeouts: ts, Log: log}
	for _, f := range tableOpts {
		f(&tcfg)
	}
	table := remotes.New(tcfg)
	p, err := New(conns, table, set, ts, log)
	if err != nil {
		t.Fatal(err)
	}
	set.Start(backend.Links{Replies: p.Replies})
	c := fake.Accept(t)
	c.Hello(t)
	testbed.Eventually(t, "backend ok", func() bool { return set.Get(5301).OK() })
	go io.Copy(io.Discard, c)
	if setup != nil {
		setup(p)
	}
	p.Start()
	t.Cleanup(func() {
		p.Close()
		set.Close()
	})
	return &bed{p: p, set: set, table: table, conn: c}
}

func TestPerPacketPathAllocatesNothing(t *testing.T) {
	// Info level, as in production: the per-packet trace records are
	// disabled and must cost nothing.
	checkNoAllocs(t, newBed(t, zerolog.New(io.Discard).Level(zerolog.InfoLevel)))
}

// checkNoAllocs checks that a query in and replies out allocate nothing
// on b.
func checkNoAllocs(t *testing.T, b *bed) {
	t.Helper()
	buf := make([]byte, slotLen)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	be := b.set.Get(5301)
	b.handle(buf, 64, ip, 5353, &o, 0) // creates the remote
	if a := testing.AllocsPerRun(2000, func() {
		b.handle(buf, 64, ip, 5353, &o, 0)
		be.Flush(0)
	}); a != 0 {
		t.Fatalf("datagram in to frame written: %.1f allocations", a)
	}
	if st := be.Stats(); st.UDPFrames < 2000 {
		t.Fatalf("only %d frames queued", st.UDPFrames)
	}

	// The reply direction: a batch of replies from the DNS socket, to
	// the known client (UDP needs no listener to send); they match no
	// query, so the remotes table is asked too.
	to := netip.AddrPortFrom(ip, 9)
	data := make([]byte, 64)
	batch := b.p.Replies(be)
	if a := testing.AllocsPerRun(200, func() {
		for range batchLen + 3 {
			batch.Add(data, to)
		}
		batch.Flush()
	}); a != 0 {
		t.Fatalf("replies out: %.1f allocations per batch", a)
	}
	if st := b.p.Stats(); st.PacketsOut < 200*(batchLen+3) {
		t.Fatalf("%d replies sent", st.PacketsOut)
	}
}

func TestDropsAreCountedByReason(t *testing.T) {
	b := newBed(t, zerolog.Nop())
	buf := make([]byte, slotLen)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	b.handle(buf, 5, ip, 53, &o, 0)
	b.handle(buf, protocol.MaxData+1, ip, 53, &o, 0)
	b.handle(buf, 64, netip.Addr{}, 0, &o, 0)
	b.handle(buf, 64, netip.MustParseAddr("240.1.2.3"), 53, &o, 0)
	b.handle(buf, protocol.MaxData, ip, 53, &o, 0)
	st := b.p.Stats()
	want := map[string]uint64{"runt": 1, "oversized": 1, "bad_source": 1, "standin_range": 1, "no_backend": 0, "stuck": 0, "down": 0}
	for k, v := range want {
		if st.Drops[k] != v {
			t.Errorf("drops[%s] = %d, want %d", k, st.Drops[k], v)
		}
	}
	if st.PacketsIn != 5 {
		t.Errorf("PacketsIn %d", st.PacketsIn)
	}
	// Only the good datagram made a remote.
	if n := b.table.Len(); n != 1 {
		t.Errorf("%d remotes, want 1", n)
	}
	seen := map[string]bool{}
	for k, v := range st.Drops {
		seen[k] = v > 0
	}

	t.Run("stuck: the backend's queue full", func(t *testing.T) {
		// A batch of one frame more than the queue takes (each short
		// enough that the bound in frames comes first): the last is
		// refused.
		for range backend.DefaultQueueFrames + 1 {
			b.p.handle(b.p.ls[0], buf, protocol.DNSHeaderLen, ip, 53, &o, 0)
		}
		b.p.endBatch(b.p.ls[0], 0)
		wantDrops(t, b.p, map[string]uint64{"stuck": 1, "no_backend": 0, "down": 0})
		if info, _ := b.table.Lookup(ip); info.Drops != 1 {
			t.Fatalf("remote %+v, want its one drop counted", info)
		}
		seen["stuck"] = true
	})

	t.Run("no_backend: none ok", func(t *testing.T) {
		b.conn.Close()
		testbed.Eventually(t, "backend down", func() bool { return !b.set.Get(5301).OK() })
		b.handle(buf, 64, ip, 53, &o, 0)
		b.handle(buf, 64, netip.MustParseAddr("127.0.0.10"), 53, &o, 0)
		wantDrops(t, b.p, map[string]uint64{"no_backend": 2, "down": 0})
		seen["no_backend"] = true
	})

	t.Run("down: the backend went down after it was chosen", func(t *testing.T) {
		// The table's view of the backends lags, as it does for a
		// datagram routed just before a fault.
		b := newBed(t, zerolog.Nop(), func(c *remotes.Config) { c.Backends = laggingBackends{c.Backends} })
		b.handle(buf, 64, ip, 53, &o, 0)
		b.conn.Close()
		testbed.Eventually(t, "backend down", func() bool { return !b.set.Get(5301).OK() })
		b.handle(buf, 64, ip, 53, &o, 0)
		wantDrops(t, b.p, map[string]uint64{"down": 1, "no_backend": 0, "stuck": 0})
		seen["down"] = true
	})

	t.Run("no_standin: an IPv6 client given none", func(t *testing.T) {
		// A /30 has two stand-ins to give.
		b := newBed(t, zerolog.Nop(), func(c *remotes.Config) { c.Standins = netip.MustParsePrefix("240.0.0.0/30") })
		for i := range 3 {
			b.handle(buf, 64, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}), 53, &o, 0)
		}
		wantDrops(t, b.p, map[string]uint64{"no_standin": 1, "standin_range": 0, "no_backend": 0})
		if n := b.table.Len(); n != 2 {
			t.Fatalf("%d remotes, want the 2 with a stand-in", n)
		}
		seen["no_standin"] = true
	})

	t.Run("quarantined: a query seen at two backend deaths", func(t *testing.T) {
		b := newBed(t, zerolog.Nop())
		query := buf[protocol.UDPHeaderLen : protocol.UDPHeaderLen+64]
		key := flightKey(protocol.AddrToU32(ip), 53, uint16(query[0])<<8|uint16(query[1]))
		if deaths := b.p.quar.seen(key, querySum(query), time.Now().UnixNano(), false, 2); deaths < 2 {
			t.Fatalf("seen at %d deaths, want 2", deaths)
		}
		b.handle(buf, 64, ip, 53, &o, 0)
		wantDrops(t, b.p, map[string]uint64{"quarantined": 1, "no_backend": 0})
		// Another query of the client's is not.
		buf[protocol.UDPHeaderLen] ^= 0xff
		b.handle(buf, 64, ip, 53, &o, 0)
		buf[protocol.UDPHeaderLen] ^= 0xff
		wantDrops(t, b.p, map[string]uint64{"quarantined": 1})
		seen["quarantined"] = true
	})

	t.Run("ratelimited: a client over its limit", func(t *testing.T) {
		b := newBed(t, zerolog.Nop())
		b.p.LimitRate(remotes.NewRate(1, 2, 0)) // two at once, no slip
		for range 3 {
			b.handle(buf, 64, ip, 53, &o, 0)
		}
		wantDrops(t, b.p, map[string]uint64{"ratelimited": 1, "stuck": 0})
		if info, _ := b.table.Lookup(ip); info.UDP != 2 || info.Drops != 1 || info.RateLimited != 1 {
			t.Fatalf("remote %+v, want 2 sent on and 1 over the limit", info)
		}
		seen["ratelimited"] = true
	})

	for r := range numDrops {
		if !seen[r.String()] {
			t.Errorf("drop reason %s not exercised", r)
		}
	}
}

// wantDrops checks the named drop counters of p.
func wantDrops(t *testing.T, p *Proxy, want map[string]uint64) {
	t.Helper()
	st := p.Stats()
	for k, v := range want {
		if st.Drops[k] != v {
			t.Errorf("drops[%s] = %d, want %d", k, st.Drops[k], v)
		}
	}
}

// laggingBackends reports every backend ok to the remotes table, as a
// view taken just before a backend failed would.
type laggingBackends struct{ remotes.Backends }

func (laggingBackends) Status(backend.ID) (ok, gone bool) { return true, false }

// handle is the proxy's handle on the bed's first socket, with the end
// of a batch of that one datagram: its frame queued and written.
func (b *bed) handle(buf []byte, n int, ip netip.Addr, port uint16, o *origin, now int64) *backend.Backend {
	be := b.p.handle(b.p.ls[0], buf, n, ip, port, o, now)
	b.p.endBatch(b.p.ls[0], now)
	return be
}
