package remotes

import (
	"net/netip"

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

// A RouteCache is routeSets sets of routeWays entries, a set chosen by a
// hash of the address, the least recently filled way of a full set
// replaced: 2048 routes in 100 KiB, which a reader's core keeps in its
// cache, and which hold a few hundred busy clients per reader without
// two of them taking turns at one entry.
const (
	routeSetBits = 9
	routeSets    = 1 << routeSetBits
	routeWays    = 4
)

// RouteCache is one reader's cache of routes. Its zero value is empty
// and ready; it must not be shared by goroutines.
type RouteCache struct {
	sets [routeSets]routeSet
}

// routeSet is routeWays routes, their keys together on one cache line.
type routeSet struct {
	keys [routeWays]addrKey
	e    [routeWays]cachedRoute
	next uint8 // the way to fill next when the set is full
}

type cachedRoute struct {
	r    *Remote // nil: the way is empty
	gen  uint64
	be   backend.ID
	wire uint32 // an IPv6 client's stand-in; 0 for IPv4 (its own address)
	seen uint32 // the second this reader last marked the remote seen
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
	set := &c.sets[(k.hi^k.lo)*0x9e3779b97f4a7c15>>(64-routeSetBits)]
	gen := t.gen.Load()
	way := -1
	for j := range routeWays {
		if set.keys[j] == k && set.e[j].r != nil {
			way = j
			break
		}
	}
	if way >= 0 && set.e[way].gen == gen && (wire == 0 || !t.standins.contains(wire)) {
		e := &set.e[way]
		if ok, _ := t.cfg.Backends.Status(e.be); ok {
			// Marked seen once a second per reader: the remote's
			// own line is not read for every query.
			if sec := t.second(now); sec != e.seen {
				e.r.touch(sec)
				e.seen = sec
			}
			if wire == 0 {
				wire = e.wire
			}
			return Routing{Remote: e.r, Wire: wire, Backend: e.be, Primary: e.be}
		}
	}
	rt := t.RouteAt(ip, now)
	if rt.Drop != NotDropped || rt.Backend == 0 || rt.Backend != rt.Primary || rt.Remote.shared {
		if way >= 0 {
			set.e[way].r = nil
		}
		return rt
	}
	// Served by its primary, which leaves it no backup. gen is from
	// before the route: a change since ends the entry.
	if way < 0 {
		for j := range routeWays {
			if set.e[j].r == nil {
				way = j
				break
			}
		}
	}
	if way < 0 {
		way = int(set.next % routeWays)
		set.next++
	}
	set.keys[way] = k
	set.e[way] = cachedRoute{r: rt.Remote, gen: gen, be: rt.Backend, seen: t.second(now)}
	if ip.Is6() {
		set.e[way].wire = rt.Wire
	}
	return rt
}
