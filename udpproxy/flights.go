package udpproxy

import (
	"sync"
	"time"

	"github.com/bbal/bbal/backend"
)

// Queries in flight: every query sent on to a backend is remembered,
// keyed by what its answer carries back (the client address as the
// backend knows it, the client port and the DNS ID), until the answer
// comes or FlightAge passes. The record says where the query came in
// (listener, destination address, interface), so that the answer leaves
// from there; when it was sent, for the backend's answer latency; and the
// query itself, so that it can be sent again to another backend if its
// backend dies first.
//
// The table is bounded: flightSlots records in buckets of flightWays,
// each bucket under one of flightLocks mutexes. A query whose bucket is
// full displaces the oldest record there (counted as evicted).

const (
	// FlightAge is how long an answer is waited for: a query older than
	// that is counted unanswered and forgotten.
	FlightAge = time.Second

	flightSlots = 1 << 14
	flightWays  = 4
	flightLocks = 256
	// keepLen is the longest query kept for sending again: longer ones
	// (rare: DNS queries are mostly under 100 bytes) are still tracked,
	// but not re-sent.
	keepLen = 255
)

// flight is one query in flight. sent is 0 when the slot is free.
type flight struct {
	key     uint64 // wire address << 32 | port << 16 | DNS ID
	sent    int64  // unix nanoseconds
	be      backend.ID
	lis     uint8 // the listener it came in on
	resent  bool  // sent again after its first backend died
	qlen    uint8 // bytes of query kept; 0 if it was too long
	ifindex uint32
	local   [16]byte // the query's destination address (IPv4-mapped for IPv4)
	query   [keepLen]byte
}

// origin is where a query came in: what its answer needs to leave the
// same way.
type origin struct {
	lis     uint8
	ifindex uint32
	local   [16]byte
}

func flightKey(wire uint32, port uint16, id uint16) uint64 {
	return uint64(wire)<<32 | uint64(port)<<16 | uint64(id)
}

type flights struct {
	slots [flightSlots]flight
	locks [flightLocks]struct {
		sync.Mutex
		_ [56]byte // a cache line each
	}
}

func newFlights() *flights { return new(flights) }

// bucket returns the index of key's first slot and its lock.
func (t *flights) bucket(key uint64) (int, *sync.Mutex) {
	h := (key * 0x9e3779b97f4a7c15) >> 32
	b := int(h % (flightSlots / flightWays))
	return b * flightWays, &t.locks[b%flightLocks].Mutex
}

// put records a query sent to be at now. It returns the backend of a
// record it displaced that was still counted as waiting for an answer,
// or 0, and whether it was the oldest of a full bucket (evicted) rather
// than the same query again or one past FlightAge.
func (t *flights) put(key uint64, be backend.ID, o *origin, query []byte, now int64) (displaced backend.ID, evicted bool) {
	i, mu := t.bucket(key)
	mu.Lock()
	s := t.slots[i : i+flightWays]
	victim := -1
	for j := range s {
		if s[j].sent != 0 && s[j].key == key { // the client asked again
			victim = j
			break
		}
	}
	if victim < 0 {
		oldest := 0
		for j := range s {
			if s[j].sent == 0 || now-s[j].sent > int64(FlightAge) {
				victim = j
				break
			}
			if s[j].sent < s[oldest].sent {
				oldest = j
			}
		}
		if victim < 0 {
			victim, evicted = oldest, true
		}
	}
	f := &s[victim]
	if f.sent != 0 {
		displaced = f.be
	}
	f.key, f.sent, f.be, f.lis, f.resent = key, now, be, o.lis, false
	f.ifindex, f.local = o.ifindex, o.local
	f.qlen = 0
	if len(query) <= keepLen {
		f.qlen = uint8(len(query))
		copy(f.query[:], query)
	}
	mu.Unlock()
	return displaced, evicted
}

// answered is what take found of a query.
type answered struct {
	origin
	be     backend.ID
	sent   int64
	resent bool
}

// take finds and forgets the query key answers. A late answer (after
// FlightAge, before sweep forgot the query) is found too: it still
// measures its backend's latency.
func (t *flights) take(key uint64, out *answered) bool {
	i, mu := t.bucket(key)
	mu.Lock()
	for j := i; j < i+flightWays; j++ {
		f := &t.slots[j]
		if f.sent != 0 && f.key == key {
			out.lis, out.ifindex, out.local = f.lis, f.ifindex, f.local
			out.be, out.sent, out.resent = f.be, f.sent, f.resent
			f.sent = 0
			mu.Unlock()
			return true
		}
	}
	mu.Unlock()
	return false
}

// sweep forgets the queries older than FlightAge at now, calling gone
// with each one's backend.
func (t *flights) sweep(now int64, gone func(backend.ID)) {
	for l := range flightLocks {
		mu := &t.locks[l].Mutex
		mu.Lock()
		for b := l; b < flightSlots/flightWays; b += flightLocks {
			for j := b * flightWays; j < (b+1)*flightWays; j++ {
				f := &t.slots[j]
				if f.sent != 0 && now-f.sent > int64(FlightAge) {
					f.sent = 0
					gone(f.be)
				}
			}
		}
		mu.Unlock()
	}
}

// each calls fn, under the record's lock, for each query of backend be
// still waited for at now. fn may change the record's backend.
func (t *flights) each(be backend.ID, now int64, fn func(f *flight)) {
	for l := range flightLocks {
		mu := &t.locks[l].Mutex
		mu.Lock()
		for b := l; b < flightSlots/flightWays; b += flightLocks {
			for j := b * flightWays; j < (b+1)*flightWays; j++ {
				f := &t.slots[j]
				if f.sent != 0 && f.be == be && now-f.sent <= int64(FlightAge) {
					fn(f)
				}
			}
		}
		mu.Unlock()
	}
}
