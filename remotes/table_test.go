package remotes

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBackends is a Picker whose states the test sets; Pick is
// round-robin in ID order over the ok ones.
type fakeBackends struct {
	mu    sync.Mutex
	ok    map[backend.ID]bool // present: known; value: ok
	gone  map[backend.ID]bool
	last  backend.ID
	picks int

	weights map[backend.ID]int
	slow    []backend.ID
}

func newFake(ids ...backend.ID) *fakeBackends {
	f := &fakeBackends{ok: map[backend.ID]bool{}, gone: map[backend.ID]bool{}}
	for _, id := range ids {
		f.ok[id] = true
	}
	return f
}

func (f *fakeBackends) set(id backend.ID, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ok[id] = ok
}

func (f *fakeBackends) remove(id backend.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ok[id] = false
	f.gone[id] = true
}

func (f *fakeBackends) Status(id backend.ID) (ok, gone bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, known := f.ok[id]
	return v, !known || f.gone[id]
}

func (f *fakeBackends) ids() []backend.ID {
	var ids []backend.ID
	for id, ok := range f.ok {
		if ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (f *fakeBackends) Weight(id backend.ID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return cmp.Or(f.weights[id], 1)
}

func (f *fakeBackends) CheckSlow() []backend.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slow
}

func (f *fakeBackends) Pick(map[backend.ID]int) backend.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.picks++
	ids := f.ids()
	for _, id := range ids {
		if id > f.last {
			f.last = id
			return id
		}
	}
	if len(ids) == 0 {
		return 0
	}
	f.last = ids[0]
	return ids[0]
}

func (f *fakeBackends) HashID(h uint32) backend.ID {
	ids := f.EligibleIDs()
	if len(ids) == 0 {
		return 0
	}
	return ids[h%uint32(len(ids))]
}

func (f *fakeBackends) EligibleIDs() []backend.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ids()
}

func newTable(t testing.TB, b Picker) (*Table, *timeouts.Fake, *testbed.Logs) {
	t.Helper()
	return newTableConfig(t, Config{Picker: b})
}

func newTableConfig(t testing.TB, cfg Config) (*Table, *timeouts.Fake, *testbed.Logs) {
	t.Helper()
	if f, ok := cfg.Picker.(*fakeBackends); ok && cfg.Backends == nil {
		cfg.Backends = f // the fake is both
	}
	clock := timeouts.NewFake(testbed.Epoch)
	logs := testbed.NewLogs()
	cfg.Timeouts, cfg.Log = timeouts.New(clock), testbed.Logger(logs)
	return New(cfg), clock, logs
}

func ip(n int) netip.Addr { return testbed.Loopback(n) }

// a4 is the IPv4 address v.
func a4(v uint32) netip.Addr { return protocol.U32ToAddr(v) }

func TestAssignment(t *testing.T) {
	f := newFake(1, 2)
	tab, _, logs := newTable(t, f)
	route := func(n int) backend.ID { return tab.Route(ip(n)).Backend }

	// New remotes get primaries round-robin, and keep them.
	if a, b, c := route(1), route(2), route(1); a != 1 || b != 2 || c != 1 {
		t.Fatalf("routes %d %d %d", a, b, c)
	}
	if n := logs.Count("new remote peer", map[string]any{"remote_ip": "127.0.0.2"}); n != 1 {
		t.Fatalf("new remote logged %d times", n)
	}
	// Primary down: a backup is picked and kept; the primary count
	// does not move.
	f.set(1, false)
	if got := route(1); got != 2 {
		t.Fatalf("backup %d, want 2", got)
	}
	logs.Wait(t, "remote assigned to new backup backend", map[string]any{"remote_ip": "127.0.0.2", "be_id": 2})
	if c := tab.Counts(); c[1].Primary != 1 || c[2].Primary != 1 || c[2].Backup != 1 {
		t.Fatalf("counts %v", c)
	}
	// Backup down too, a third backend up: a new backup.
	f.set(3, true)
	f.set(2, false)
	if got := route(1); got != 3 {
		t.Fatalf("new backup %d, want 3", got)
	}
	// The primary returns: the remote goes home, the backup is cleared.
	f.set(1, true)
	if got := route(1); got != 1 {
		t.Fatalf("after primary returned: %d", got)
	}
	logs.Wait(t, "remote assigned to original primary backend", map[string]any{"remote_ip": "127.0.0.2", "be_id": 1})
	if info, _ := tab.Lookup(ip(1)); info.Backup != 0 || info.Primary != 1 {
		t.Fatalf("after return: %+v", info)
	}
	// Nothing ok: no backend; the remote keeps its primary.
	f.set(1, false)
	f.set(2, false)
	f.set(3, false)
	if got := route(1); got != 0 {
		t.Fatalf("routed to %d with nothing ok", got)
	}
	if info, _ := tab.Lookup(ip(1)); info.Primary != 1 {
		t.Fatalf("primary lost while nothing was ok: %+v", info)
	}
	f.set(1, true)
	f.set(2, true)
	f.set(3, true)
	// The primary's socket is removed: both cleared, a new primary
	// picked, and the counts follow.
	f.remove(1)
	if got := route(1); got == 1 || got == 0 {
		t.Fatalf("after removal routed to %d", got)
	}
	if c := tab.Counts(); c[1].Primary != 0 {
		t.Fatalf("removed backend still counted: %v", c)
	}
	total := 0
	for _, c := range tab.Counts() {
		total += c.Backup
	}
	if total != 0 {
		t.Fatalf("backup counts %v after every remote went home", tab.Counts())
	}
}

func TestRebalance(t *testing.T) {
	f := newFake(1)
	tab, _, logs := newTable(t, f)
	for n := range 10 {
		tab.Route(ip(n))
	}
	f.set(2, true)
	if n := tab.Rebalance(); n != 8 {
		t.Fatalf("rebalance cleared %d, want 10-0-2 = 8", n)
	}
	if n := logs.Count("rebalancing to reduce spread", map[string]any{"be_id": 1}); n != 8 {
		t.Fatalf("%d rebalance records", n)
	}
	for n := range 10 {
		tab.Route(ip(n))
	}
	c := tab.Counts()
	if c[1].Primary != 6 || c[2].Primary != 4 {
		t.Fatalf("counts after rebalance %v, want 6 and 4", c)
	}
	// A spread no larger than the number of ok backends is left alone.
	if n := tab.Rebalance(); n != 0 {
		t.Fatalf("second rebalance cleared %d", n)
	}
	f.set(1, false)
	f.set(2, false)
	if n := tab.Rebalance(); n != 0 {
		t.Fatalf("rebalance with nothing ok cleared %d", n)
	}
}

func TestExpiryAndMaintenanceTimers(t *testing.T) {
	f := newFake(1)
	tab, clock, logs := newTable(t, f)
	ts := testbed.RunTimeouts(t, tab.cfg.Timeouts)
	tab.Start()
	defer tab.Close()

	tab.Route(ip(1))
	tab.Route(ip(2))
	clock.Advance(4 * time.Minute)
	tab.Route(ip(1))
	clock.Advance(90 * time.Second) // ip(2) idle 5m30s
	logs.Wait(t, "expiring remote entry", map[string]any{"remote_ip": "127.0.0.3"})
	testbed.Eventually(t, "expiry", func() bool { return tab.Len() == 1 })
	if c := tab.Counts(); c[1].Primary != 1 {
		t.Fatalf("counts %v after expiry", c)
	}
	info, ok := tab.Lookup(ip(1))
	if !ok || !info.FirstSeen.Equal(testbed.Epoch) || !info.LastSeen.Equal(testbed.Epoch.Add(4*time.Minute)) {
		t.Fatalf("survivor %+v", info)
	}
	// Each tick re-arms its timer once its work is done: the expiry
	// just seen may not have got that far yet.
	testbed.Eventually(t, "maintenance timers re-armed", func() bool {
		names := map[string]bool{}
		for _, e := range ts.List() {
			names[e.Name] = true
		}
		return names["remotes rebalance"] && names["remotes expiry"]
	})
}

func TestWalkInAddressOrderInChunks(t *testing.T) {
	f := newFake(1)
	tab, _, _ := newTable(t, f)
	// Addresses that sort differently as strings and as numbers.
	for _, n := range []int{3000, 9, 10, 100, 2, 255, 256} {
		tab.Route(ip(n))
	}
	// Enough that every shard's part is copied in several chunks.
	for n := range 10000 {
		tab.Route(a4(0x0a000000 + uint32(n)))
	}
	// IPv6 remotes after every IPv4 one.
	for _, s := range []string{"::1", "2001:db8::1", "fe80::1"} {
		tab.Route(netip.MustParseAddr(s))
	}
	var got []netip.Addr
	tab.Walk(context.Background(), netip.Addr{}, func(in Info) bool {
		got = append(got, in.Addr)
		return true
	})
	// In the order of the addresses' IPv6 forms: ::1, then IPv4, then
	// the others.
	by16 := func(a, b netip.Addr) int { x, y := a.As16(), b.As16(); return bytes.Compare(x[:], y[:]) }
	if len(got) != 10010 || !slices.IsSortedFunc(got, by16) || got[0].String() != "::1" || !got[1].Is4() {
		t.Fatalf("walked %d remotes, sorted %v, first %v", len(got), slices.IsSortedFunc(got, by16), got[:2])
	}
	// From an address on: the next ones in order, until fn says stop.
	n := 0
	tab.Walk(context.Background(), a4(0x0a000000+2500), func(in Info) bool {
		if want := a4(0x0a000000 + 2500 + uint32(n)); in.Addr != want {
			t.Fatalf("walk from 10.0.9.196: remote %d is %v, want %v", n, in.Addr, want)
		}
		n++
		return n < 100
	})
	if n != 100 {
		t.Fatalf("walk did not stop: %d", n)
	}
}

func TestRouteAllocatesNothingForKnownRemotes(t *testing.T) {
	f := newFake(1)
	tab, _, _ := newTable(t, f)
	tab.Route(ip(1))
	if a := testing.AllocsPerRun(1000, func() { tab.Route(ip(1)) }); a != 0 {
		t.Fatalf("Route allocates %.1f for a known remote", a)
	}
}

func TestKnown(t *testing.T) {
	for _, c := range []struct {
		name   string
		bits   int
		asked  netip.Addr
		known  []netip.Addr
		others []netip.Addr
	}{
		{"address", 0, a4(0x0a000001), []netip.Addr{a4(0x0a000001), netip.MustParseAddr("::ffff:10.0.0.1")},
			[]netip.Addr{a4(0x0a000002), a4(0x0a000000)}},
		// With PrefixBits the table knows networks: any address of one
		// that asked.
		{"prefix", 24, a4(0x0a000001), []netip.Addr{a4(0x0a000001), a4(0x0a0000fe)}, []netip.Addr{a4(0x0a000101)}},
		{"IPv6", 0, netip.MustParseAddr("2001:db8::1"), []netip.Addr{netip.MustParseAddr("2001:db8::1")},
			[]netip.Addr{netip.MustParseAddr("2001:db8::2")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tab, clock, _ := newTableConfig(t, Config{Picker: newFake(1), PrefixBits: c.bits})
			tab.Route(c.asked)
			for _, a := range c.known {
				if !tab.Known(a) {
					t.Errorf("%v not known", a)
				}
			}
			for _, a := range c.others {
				if tab.Known(a) {
					t.Errorf("%v known", a)
				}
			}
			if a := testing.AllocsPerRun(1000, func() { tab.Known(c.known[0]); tab.Known(c.others[0]) }); a != 0 {
				t.Fatalf("Known allocates %.1f", a)
			}
			// A forgotten client is not known.
			clock.Advance(DefaultExpireAfter + time.Minute)
			tab.Expire()
			if tab.Known(c.asked) {
				t.Errorf("%v known after expiry", c.asked)
			}
		})
	}
}

func TestResetCounters(t *testing.T) {
	tab, _, _ := newTable(t, newFake(1))
	for n := range 5000 {
		r := tab.Route(a4(uint32(n))).Remote
		r.CountUDP()
		r.CountTCP()
		r.CountDrop()
	}
	tab.ResetCounters()
	tab.Walk(context.Background(), netip.Addr{}, func(in Info) bool {
		if in.UDP+in.TCP+in.Drops != 0 {
			t.Fatalf("remote %v not reset: %+v", in.Addr, in)
		}
		return true
	})
}

func TestFullTableServesByHash(t *testing.T) {
	f := newFake(1, 2, 3)
	tab, clock, logs := newTableConfig(t, Config{Picker: f, MaxRemotes: 100})
	for n := range 100 {
		tab.Route(ip(n))
	}
	got := map[backend.ID]int{}
	for n := 100; n < 400; n++ {
		rt := tab.Route(ip(n))
		r, id := rt.Remote, rt.Backend
		if id == 0 {
			t.Fatal("unpinned client not served")
		}
		r.CountUDP()
		got[id]++
		// The same client gets the same backend again.
		if again := tab.Route(ip(n)).Backend; again != id {
			t.Fatalf("client %d moved from %d to %d", n, id, again)
		}
	}
	if tab.Len() != 100 {
		t.Fatalf("table holds %d, bound 100", tab.Len())
	}
	if len(got) != 3 || got[1] < 50 || got[2] < 50 || got[3] < 50 {
		t.Fatalf("unpinned clients spread %v over 3 backends", got)
	}
	if tab.Unpinned() != 600 || tab.overflow.udp.Load() != 300 {
		t.Fatalf("unpinned %d, overflow udp %d", tab.Unpinned(), tab.overflow.udp.Load())
	}
	if n := logs.Count("remotes table full: new clients served by address hash", map[string]any{"max_remotes": 100}); n != 1 {
		t.Fatalf("table-full warning logged %d times in 5 s", n)
	}
	// Known clients are still pinned, and expiry makes room again.
	if _, ok := tab.Lookup(ip(5)); !ok {
		t.Fatal("pinned client lost")
	}
	clock.Advance(6 * time.Minute)
	tab.Expire()
	if _ = tab.Route(ip(500)); tab.Len() != 1 {
		t.Fatalf("after expiry a new client was not recorded: %d", tab.Len())
	}
}

func TestPrefixPinning(t *testing.T) {
	f := newFake(1, 2)
	tab, _, _ := newTableConfig(t, Config{Picker: f, PrefixBits: 24})
	a := tab.Route(a4(0x0a000001)).Backend // 10.0.0.1
	b := tab.Route(a4(0x0a0000fe)).Backend // 10.0.0.254: same /24
	c := tab.Route(a4(0x0a000101)).Backend // 10.0.1.1: the next /24
	if a != b || a == c {
		t.Fatalf("backends %d %d %d: a /24 should share one and the next differ", a, b, c)
	}
	if tab.Len() != 2 {
		t.Fatalf("%d remotes, want one per /24", tab.Len())
	}
	if in, ok := tab.Lookup(a4(0x0a000077)); !ok || in.Addr != a4(0x0a000000) || in.Primary != a {
		t.Fatalf("Lookup in the /24: %+v %v", in, ok)
	}
}

func TestScansHoldTheLockAChunkAtATime(t *testing.T) {
	f := newFake(1)
	tab, clock, _ := newTable(t, f)
	const n = 128 * scanChunk
	for i := range n {
		tab.Route(a4(uint32(i)))
	}
	holds := 0
	tab.scan(func(*Remote) bool { return false }, func(*shard) { holds++ })
	if holds < n/scanChunk {
		t.Fatalf("%d holds of the lock for %d remotes", holds, n)
	}

	// While a scan of the whole table runs, the packet path gets the
	// lock between chunks: a Lookup from another goroutine returns
	// while the scan is part-way through the table, and no hold of the
	// lock comes near the whole scan's time (a scan holding it
	// throughout would make its one hold the whole time). Either can
	// miss on a busy machine (the other goroutine may get no CPU during
	// a scan; the lock is not fair until a waiter has waited 1 ms; the
	// scan can be descheduled within a chunk), so scans are repeated
	// until both are seen, for up to 5 s; a whole-table hold fails
	// every one. With one P the other goroutine cannot run during a
	// scan this short.
	//
	// progress is the scan's number in its high 32 bits and the remotes
	// it has visited in the low: a Lookup that starts once scan g has
	// visited one and returns before it has visited all took the lock
	// in between.
	var progress atomic.Uint64
	midScan, shortHolds := runtime.GOMAXPROCS(0) < 2, false
	var seen atomic.Bool
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			before := progress.Load()
			tab.Lookup(a4(0))
			after := progress.Load()
			if before>>32 == after>>32 && uint32(before) > 0 && uint32(after) < n {
				seen.Store(true)
			}
		}
	}()
	var report []string
	for g, deadline := uint64(1), time.Now().Add(5*time.Second); !(midScan && shortHolds) && time.Now().Before(deadline); g++ {
		tab.maxPause.Store(0)
		progress.Store(g << 32)
		start := time.Now()
		tab.scan(func(*Remote) bool {
			progress.Add(1)
			return false
		}, nil)
		whole := time.Since(start)
		midScan = midScan || seen.Load()
		shortHolds = shortHolds || tab.MaxPause() < whole/8
		if len(report) < 10 {
			report = append(report, fmt.Sprintf("longest hold %v of a %v scan", tab.MaxPause(), whole))
		}
	}
	close(stop)
	<-stopped
	if !midScan || !shortHolds {
		t.Fatalf("the scan held the lock too long (a Lookup part-way: %v):\n%s", midScan, strings.Join(report, "\n"))
	}

	clock.Advance(10 * time.Minute)
	if got := tab.Expire(); got != n || tab.Len() != 0 {
		t.Fatalf("expired %d of %d, %d left", got, n, tab.Len())
	}
	if tab.MaxPause() <= 0 {
		t.Fatal("no pause measured")
	}
}

func TestRemoteLogsAreLimited(t *testing.T) {
	f := newFake(1)
	tab, clock, logs := newTable(t, f)
	for i := range 3 * remoteLogBurst {
		tab.Route(a4(uint32(i)))
	}
	if n := len(logs.Records()); n != remoteLogBurst {
		t.Fatalf("%d records for %d new remotes, limit %d per interval", n, 3*remoteLogBurst, remoteLogBurst)
	}
	clock.Advance(remoteLogInterval)
	tab.Route(a4(0xdfff0000))
	r := logs.Records()[remoteLogBurst]
	if r.Msg() != "new remote peer" || r["suppressed"] != float64(2*3*remoteLogBurst-remoteLogBurst) {
		t.Fatalf("next record %v, want the count of those not written (two records per new remote)", r)
	}
}

func TestIPv6RemotesGetStandins(t *testing.T) {
	f := newFake(1, 2)
	// A /29: six usable stand-ins after the two reserved addresses.
	tab, clock, logs := newTableConfig(t, Config{Picker: f, Standins: netip.MustParsePrefix("198.18.0.9/29")})
	if got := tab.Standins(); got.String() != "198.18.0.8/29" {
		t.Fatalf("range %v, want it masked", got)
	}
	if got := ProbeSource(tab.Standins()); got != netip.MustParseAddr("198.18.0.9") {
		t.Fatalf("probe source %v", got)
	}
	seen := map[uint32]netip.Addr{}
	var first uint32
	for i := range 6 {
		c := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)})
		rt := tab.Route(c)
		r, id, wire := rt.Remote, rt.Backend, rt.Wire
		if id == 0 || r == nil {
			t.Fatalf("client %v not routed", c)
		}
		if !tab.InStandins(wire) || wire < protocol.AddrToU32(netip.MustParseAddr("198.18.0.10")) {
			t.Fatalf("client %v given %v, outside the usable range", c, protocol.U32ToAddr(wire))
		}
		if _, dup := seen[wire]; dup {
			t.Fatalf("stand-in %v given twice", protocol.U32ToAddr(wire))
		}
		seen[wire] = c
		if i == 0 {
			first = wire
		}
		if again := tab.Route(c).Wire; again != wire {
			t.Fatalf("client %v: stand-in changed from %v to %v", c, protocol.U32ToAddr(wire), protocol.U32ToAddr(again))
		}
		if back, ok := tab.Client(wire); !ok || back != c {
			t.Fatalf("Client(%v) = %v %v, want %v", protocol.U32ToAddr(wire), back, ok, c)
		}
		if in, ok := tab.Lookup(c); !ok || in.Standin != protocol.U32ToAddr(wire) {
			t.Fatalf("Lookup(%v) = %+v", c, in)
		}
	}
	// The range is full: a seventh IPv6 client is not served, and counted.
	if rt := tab.Route(netip.MustParseAddr("2001:db8::99")); rt.Backend != 0 || rt.Wire != 0 || tab.NoStandin() != 1 {
		t.Fatalf("seventh client: backend %d, stand-in %v, counted %d", rt.Backend, rt.Wire, tab.NoStandin())
	}
	if tab.Len() != 6 {
		t.Fatalf("%d remotes: the refused client must not be kept", tab.Len())
	}
	// IPv4 clients are not affected, and have no stand-in.
	if rt := tab.Route(ip(1)); rt.Backend == 0 || rt.Wire != protocol.AddrToU32(ip(1)) {
		t.Fatalf("IPv4 client: backend %d, wire %v", rt.Backend, protocol.U32ToAddr(rt.Wire))
	}
	if !tab.InStandins(protocol.AddrToU32(netip.MustParseAddr("198.18.0.8"))) || tab.InStandins(protocol.AddrToU32(ip(1))) {
		t.Fatal("InStandins is wrong at the edges")
	}
	if logs.Count("new remote peer", map[string]any{"remote_ip": "2001:db8::1", "standin": protocol.U32ToAddr(first).String()}) != 1 {
		t.Fatalf("no new remote record with the IPv6 address and its stand-in:\n%s", strings.Join(logs.Lines(), "\n"))
	}
	// Expiry frees the stand-ins.
	clock.Advance(10 * time.Minute)
	tab.Expire()
	for wire := range seen {
		if _, ok := tab.Client(wire); ok {
			t.Fatalf("stand-in %v still mapped after expiry", protocol.U32ToAddr(wire))
		}
	}
	if rt := tab.Route(netip.MustParseAddr("2001:db8::99")); rt.Backend == 0 || rt.Wire == 0 {
		t.Fatal("no stand-in after the others expired")
	}
}

func TestRestoreKeepsStandins(t *testing.T) {
	f := newFake(1)
	tab, _, _ := newTable(t, f)
	c := netip.MustParseAddr("2001:db8::7")
	wire := tab.Route(c).Wire
	in, _ := tab.Lookup(c)

	next, _, _ := newTable(t, f)
	next.Restore(in)
	got, ok := next.Lookup(c)
	if !ok || got.Standin != protocol.U32ToAddr(wire) || got.Primary != in.Primary {
		t.Fatalf("restored %+v, want %+v", got, in)
	}
	if back, ok := next.Client(wire); !ok || back != c {
		t.Fatalf("restored stand-in maps to %v %v", back, ok)
	}
	// A stand-in outside the range is replaced by a new one.
	in.Addr, in.Standin = netip.MustParseAddr("2001:db8::8"), netip.MustParseAddr("10.0.0.1")
	next.Restore(in)
	if got, ok := next.Lookup(in.Addr); !ok || !next.InStandins(protocol.AddrToU32(got.Standin)) {
		t.Fatalf("restored %+v with a stand-in out of range", got)
	}
}

// Readers of several sockets route at once: a client whose queries
// arrive on different readers gets one primary from all of them, every
// new client is recorded once, and the per-backend counts add up to the
// table, while a listing, and then rebalancing, run beside them.
func TestRouteFromManyReadersAtOnce(t *testing.T) {
	f := newFake(1, 2, 3)
	tab, _, _ := newTable(t, f)
	const readers, clients = 4, 5000
	route := func(side func()) [][]backend.ID {
		got := make([][]backend.ID, readers)
		var wg sync.WaitGroup
		for g := range readers {
			got[g] = make([]backend.ID, clients)
			wg.Go(func() {
				for i := range clients {
					// Each reader starts at a different client.
					n := (i + g*clients/readers) % clients
					got[g][n] = tab.Route(a4(0x0a000000 + uint32(n))).Backend
				}
			})
		}
		wg.Go(side)
		wg.Wait()
		return got
	}
	got := route(func() {
		for range 20 {
			tab.Walk(context.Background(), netip.Addr{}, func(Info) bool { return true })
		}
	})
	for n := range clients {
		for g := range readers {
			if got[g][n] == 0 || got[g][n] != got[0][n] {
				t.Fatalf("client %d: reader %d routed it to %d, reader 0 to %d", n, g, got[g][n], got[0][n])
			}
		}
	}
	route(func() {
		for range 20 {
			f.set(3, false)
			tab.Rebalance()
			f.set(3, true)
			tab.Rebalance()
		}
	})
	if tab.Len() != clients {
		t.Fatalf("%d remotes, want %d", tab.Len(), clients)
	}
	primaries, backups := 0, 0
	for _, c := range tab.Counts() {
		primaries += c.Primary
		backups += c.Backup
	}
	n := 0
	tab.Walk(context.Background(), netip.Addr{}, func(in Info) bool {
		if in.Primary != 0 {
			n++
		}
		return true
	})
	if primaries != n || backups > n {
		t.Fatalf("counts say %d primaries and %d backups; %d remotes have a primary", primaries, backups, n)
	}
}
