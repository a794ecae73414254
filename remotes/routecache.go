package remotes

import (
	"net/netip"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
)

// A reader routes each client's queries many times over, and almost
// always the same way: the client is known, its primary is ok, it has no
// backup. A RouteCache, one reader's own, remembers such routes, so that
// the reader routes a known client without taking any lock: it writes
// nothing the other readers read, but the client's last-seen second
// when it changes, and its counters. An entry holds for the generation
// of the assignments it was made in: any change to an assignment once
// made (a primary moved or cleared by rebalancing, expiry or a removed
// backend; a backup set or cleared) moves the generation on, which ends
// every entry; and it is used only while its backend is ok, as the
// backends say for every packet. A client new to the table is routed
// under its shard's lock, and its route cached.

// routeCacheSize is the entries of a RouteCache, direct-mapped by a hash
// of the address: 48 KiB, which a reader's core keeps in its cache.
const (
	routeCacheBits = 10
	routeCacheSize = 1 << routeCacheBits
)

// RouteCache is one reader's cache of routes. Its zero value is empty
// and ready; it must not be shared by goroutines.
type RouteCache struct {
	e [routeCacheSize]cachedRoute
}

type cachedRoute struct {
	key  addrKey
	r    *Remote
	gen  uint64
	be   backend.ID
	wire uint32 // an IPv6 client's stand-in; 0 for IPv4 (its own address)
}

// RouteCached is RouteAt for a reader with a cache of its own, c: the
// same Routing, without a lock for a client c has routed to its ok
// primary since the last change to any assignment.
func (t *Table) RouteCached(c *RouteCache, ip netip.Addr, now int64) Routing {
	ip = ip.Unmap()
	var k addrKey
	wire := uint32(0)
	if ip.Is4() {
		wire = protocol.AddrToU32(ip)
		k = keyOf(t.network(ip))
	} else {
		k = keyOf(ip)
	}
	e := &c.e[(k.hi^k.lo)*0x9e3779b97f4a7c15>>(64-routeCacheBits)]
	gen := t.gen.Load()
	if e.r != nil && e.key == k && e.gen == gen && (wire == 0 || !t.standins.contains(wire)) {
		if ok, _ := t.cfg.Backends.Status(e.be); ok {
			e.r.touch(uint32(max(now-t.epoch.UnixNano(), 0) / int64(time.Second)))
			if wire == 0 {
				wire = e.wire
			}
			return Routing{Remote: e.r, Wire: wire, Backend: e.be, Primary: e.be}
		}
	}
	rt := t.RouteAt(ip, now)
	if rt.Drop == NotDropped && rt.Backend != 0 && rt.Backend == rt.Primary && !rt.Remote.shared {
		// Served by its primary, which leaves it no backup. gen is
		// from before the route: a change since ends the entry.
		*e = cachedRoute{key: k, r: rt.Remote, gen: gen, be: rt.Backend}
		if ip.Is6() {
			e.wire = rt.Wire
		}
	} else {
		e.r = nil
	}
	return rt
}
