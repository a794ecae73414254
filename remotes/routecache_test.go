package remotes

import (
	"net/netip"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
)

// RouteCached routes as RouteAt does, through every change a client's
// route can see, and a known client's route takes no lock.
func TestRouteCachedFollowsTheTable(t *testing.T) {
	f := newFake(1, 2)
	tab, clock, _ := newTableConfig(t, Config{Picker: f, PrefixBits: 24})
	var c RouteCache
	now := func() int64 { return clock.Now().UnixNano() }
	route := func(ip netip.Addr) Routing {
		t.Helper()
		got := tab.RouteCached(&c, ip, now())
		want := tab.RouteAt(ip, now())
		if got != want {
			t.Fatalf("%v: cached %+v, table %+v", ip, got, want)
		}
		return got
	}
	a := a4(0x0a000001)
	first := route(a)
	if first.Backend == 0 || first.Wire != protocol.AddrToU32(a) {
		t.Fatalf("first route %+v", first)
	}
	// Known and served by its primary: no lock taken.
	s := tab.shard(keyOf(a4(0x0a000000)))
	s.mu.Lock()
	done := make(chan Routing)
	go func() { done <- tab.RouteCached(&c, a, now()) }()
	select {
	case rt := <-done:
		if rt != first {
			t.Fatalf("cached route %+v, want %+v", rt, first)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a known client's route waited for its shard's lock")
	}
	s.mu.Unlock()
	// Another address of its /24: the same remote, its own wire address.
	if rt := route(a4(0x0a000077)); rt.Remote != first.Remote || rt.Wire != 0x0a000077 {
		t.Fatalf("same /24: %+v", rt)
	}
	// Its primary down: the backup; back up: home again.
	other := backend.ID(3 - first.Backend)
	f.set(first.Backend, false)
	if rt := route(a); rt.Backend != other || rt.Primary != first.Backend {
		t.Fatalf("primary down: %+v", rt)
	}
	f.set(first.Backend, true)
	if rt := route(a); rt.Backend != first.Backend {
		t.Fatalf("primary back: %+v", rt)
	}
	// Rebalancing clears it: picked again, as the table says (route
	// compares).
	tab.cmu.Lock()
	s.mu.Lock()
	tab.reset(first.Remote)
	s.mu.Unlock()
	tab.cmu.Unlock()
	route(a)
	// Expired: a new remote.
	clock.Advance(DefaultExpireAfter + time.Minute)
	tab.Expire()
	if rt := route(a); rt.Remote == first.Remote {
		t.Fatal("an expired remote's route was cached past its expiry")
	}
	// IPv6: its stand-in.
	six := netip.MustParseAddr("2001:db8::1")
	if rt := route(six); rt.Wire == 0 || !tab.InStandins(rt.Wire) {
		t.Fatalf("IPv6 route %+v", rt)
	}
	if rt := route(six); rt.Wire == 0 {
		t.Fatalf("IPv6 route from the cache %+v", rt)
	}
}

func TestRouteCachedAllocatesNothing(t *testing.T) {
	tab, _, _ := newTable(t, newFake(1))
	var c RouteCache
	ip := a4(0x0a000001)
	tab.RouteCached(&c, ip, 0)
	if a := testing.AllocsPerRun(1000, func() { tab.RouteCached(&c, ip, 0) }); a != 0 {
		t.Fatalf("%.1f allocations", a)
	}
}
