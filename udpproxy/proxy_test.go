package udpproxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

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

func newBed(t testing.TB, log zerolog.Logger) *bed {
	t.Helper()
	dir := testbed.SocketDir(t)
	fake := testbed.NewFake(t, filepath.Join(dir, "5301"))
	ts := timeouts.New(timeouts.System)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ts.Run(ctx); close(done) }()

	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	set := backend.NewSet(backend.Config{Dir: dir, Log: log, Timeouts: ts})
	picker := placement.New[backend.ID, *backend.Backend](set, placement.Config{Log: log, Clock: ts.Clock()})
	table := remotes.New(remotes.Config{Backends: set, Picker: picker, Timeouts: ts, Log: log})
	p, err := New([]*net.UDPConn{uc}, table, set, ts, log)
	if err != nil {
		t.Fatal(err)
	}
	set.Start(backend.Links{Replies: p.Replies})
	c := fake.Accept(t)
	c.Hello(t)
	testbed.Eventually(t, "backend ok", func() bool { return set.Get(5301).OK() })
	go io.Copy(io.Discard, c)
	p.Start()
	t.Cleanup(func() {
		p.Close()
		set.Close()
		cancel()
		<-done
	})
	return &bed{p: p, set: set, table: table, conn: c}
}

func TestPerPacketPathAllocatesNothing(t *testing.T) {
	// Info level, as in production: the per-packet trace records are
	// disabled and must cost nothing.
	b := newBed(t, zerolog.New(io.Discard).Level(zerolog.InfoLevel))
	buf := make([]byte, slotLen)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	be := b.set.Get(5301)
	b.p.handle(b.p.ls[0], buf, 64, ip, 5353, &o, 0) // creates the remote
	if a := testing.AllocsPerRun(2000, func() {
		b.p.handle(b.p.ls[0], buf, 64, ip, 5353, &o, 0)
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
	b.p.handle(b.p.ls[0], buf, 5, ip, 53, &o, 0)
	b.p.handle(b.p.ls[0], buf, protocol.MaxData+1, ip, 53, &o, 0)
	b.p.handle(b.p.ls[0], buf, 64, netip.Addr{}, 0, &o, 0)
	b.p.handle(b.p.ls[0], buf, 64, netip.MustParseAddr("240.1.2.3"), 53, &o, 0)
	b.p.handle(b.p.ls[0], buf, protocol.MaxData, ip, 53, &o, 0)
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
}
