package remotes

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBackends is a Backends whose states the test sets; PickID is
// round-robin in ID order over the ok ones.
type fakeBackends struct {
	mu    sync.Mutex
	ok    map[backend.ID]bool // present: known; value: ok
	gone  map[backend.ID]bool
	last  backend.ID
	picks int
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

func (f *fakeBackends) PickID() backend.ID {
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

func (f *fakeBackends) EligibleIDs() []backend.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ids()
}

func newTable(t testing.TB, b Backends) (*Table, *timeouts.Fake, *testbed.Logs) {
	t.Helper()
	clock := timeouts.NewFake(testbed.Epoch)
	logs := testbed.NewLogs()
	tab := New(Config{Backends: b, Timeouts: timeouts.New(clock), Log: testbed.Logger(logs)})
	return tab, clock, logs
}

func ip(n int) uint32 { return protocol.AddrToU32(testbed.Loopback(n)) }

func TestAssignment(t *testing.T) {
	f := newFake(1, 2)
	tab, _, logs := newTable(t, f)
	route := func(n int) backend.ID { _, id := tab.Route(ip(n)); return id }

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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ts := tab.cfg.Timeouts
	go ts.Run(ctx)
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
	names := map[string]bool{}
	for _, e := range ts.List() {
		names[e.Name] = true
	}
	if !names["remotes rebalance"] || !names["remotes expiry"] {
		t.Fatalf("maintenance timers not armed: %v", names)
	}
}

func TestWalkInAddressOrderInChunks(t *testing.T) {
	f := newFake(1)
	tab, _, _ := newTable(t, f)
	// Addresses that sort differently as strings and as numbers.
	for _, n := range []int{3000, 9, 10, 100, 2, 255, 256} {
		tab.Route(ip(n))
	}
	for n := range 3000 {
		tab.Route(0x0a000000 + uint32(n))
	}
	var got []uint32
	tab.Walk(context.Background(), 0, func(in Info) bool {
		got = append(got, in.Addr)
		return true
	})
	if len(got) != 3007 || !slices.IsSorted(got) {
		t.Fatalf("walked %d remotes, sorted %v", len(got), slices.IsSorted(got))
	}
	n := 0
	tab.Walk(context.Background(), 0x0a000000+2500, func(Info) bool { n++; return n < 100 })
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

func TestResetCounters(t *testing.T) {
	tab, _, _ := newTable(t, newFake(1))
	for n := range 5000 {
		r, _ := tab.Route(uint32(n))
		r.CountUDP()
		r.CountTCP()
		r.CountDrop()
	}
	tab.ResetCounters()
	tab.Walk(context.Background(), 0, func(in Info) bool {
		if in.UDP+in.TCP+in.Drops != 0 {
			t.Fatalf("remote %d not reset: %+v", in.Addr, in)
		}
		return true
	})
}
