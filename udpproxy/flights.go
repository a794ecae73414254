package udpproxy

import (
	"sync"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/udpproxy/cache"
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
// A client that asks again with the same ID from the same port (a stub
// resolver's retransmit) while its query is in flight, of the same
// backend, adds a copy to the query's record rather than displacing it:
// the record counts the copies sent on, each answer takes one, and
// every answer leaves from where the first copy came in. (Were the
// record replaced, only the first answer would find it, and the others
// would leave from the socket's primary address, which the resolver
// discards.) The time is that of the latest copy, and a record that
// had copies measures no latency: which copy an answer is for is not
// known.
//
// The table is bounded: flightSlots records in buckets of flightWays,
// each bucket under its own mutex. A query whose bucket is
// full displaces the oldest record there (counted as evicted).

const (
	// FlightAge is how long an answer is waited for: a query older than
	// that is counted unanswered and forgotten.
	FlightAge = time.Second

	flightSlots = 1 << 14
	flightWays  = 4
	// keepLen is the longest query kept for sending again: longer ones
	// (rare: DNS queries are mostly under 100 bytes) are still tracked,
	// but not re-sent.
	keepLen = 255
	// maxCopies bounds the copies of one query a record counts: a
	// client that sends more at once starts the record over, and the
	// copies before are counted unanswered.
	maxCopies = 255
)

// flightInfo is what is kept of a query in flight besides its key and
// time.
type flightInfo struct {
	be      backend.ID
	from    backend.ID // with resent: the backend it was sent to first
	lis     uint8      // the listener it came in on
	resent  bool       // sent again after its first backend died
	dup     bool       // more than one copy was sent on
	copies  uint8      // copies sent on and not answered, at least 1
	qlen    uint8      // bytes of query kept; 0 if it was too long
	ifindex uint32
	// seq orders the queries as they were sent on: which of a dead
	// backend's was sent to it first (see Proxy.resend). Each reader
	// gives its own, in its time order (listener.nextSeq): no count is
	// shared by the readers.
	seq   int64
	local [16]byte // the query's destination address (IPv4-mapped for IPv4)
	// ck is the query's answer cache key; its Hash is 0 when there is
	// no cache, or the query cannot use it.
	ck cache.Key
}

// bucket is flightWays queries in flight, under its own lock. The lock,
// the keys and the times, which every search uses, are at its start; the
// rest is read only for the query found or replaced. sent is 0 for a
// free way.
type bucket struct {
	mu    sync.Mutex
	keys  [flightWays]uint64 // wire address << 32 | port << 16 | DNS ID
	sent  [flightWays]int64  // unix nanoseconds
	info  [flightWays]flightInfo
	query [flightWays][keepLen]byte
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

const (
	flightBuckets    = flightSlots / flightWays
	flightBucketBits = 12 // log2(flightBuckets)
)

// Regions is the number of regions of the queries, by their client port
// and DNS ID (Region), that the readers own between them: the steering gives
// each region's queries to one reader, and the in-flight table keeps
// each region's in buckets of its own.
const (
	Regions    = 1 << regionBits
	regionBits = 6
)

type flights struct {
	buckets [flightBuckets]bucket
}

func newFlights() *flights { return new(flights) }

// bucket returns key's bucket and its lock. The buckets are in
// Regions regions by the client port and DNS ID (Region), which the
// steering of the readers follows (SteerByID): a reader's queries fall in regions of
// its own, so that readers write no bucket in common. Within its region
// a key's bucket is the top bits of its Fibonacci hash, which every bit
// of the key moves (the low bits of the product would not see a client
// address's high bits).
func (t *flights) bucket(key uint64) (*bucket, *sync.Mutex) {
	region := uint64(Region(uint16(key>>16), uint16(key))) // the key's port and ID
	h := (key * 0x9e3779b97f4a7c15) >> (64 - flightBucketBits + regionBits)
	b := &t.buckets[region<<(flightBucketBits-regionBits)|h]
	return b, &b.mu
}

// placed is what put did.
type placed struct {
	// dup: the query was a copy of one in flight to the same backend,
	// counted on its record.
	dup bool
	// The backend of the copies of a record it wrote over that were
	// still counted as waiting for an answer, or 0; how many; and
	// whether the record was the oldest of a full bucket (evicted)
	// rather than the same query again or one past FlightAge.
	displaced backend.ID
	copies    int
	evicted   bool
}

// put records a query sent to be at now, with its answer cache key ck,
// as the seq-th sent on.
func (t *flights) put(key uint64, be backend.ID, o *origin, query []byte, ck cache.Key, now, seq int64) (p placed) {
	b, mu := t.bucket(key)
	mu.Lock()
	way := -1
	for j := range flightWays {
		if b.sent[j] != 0 && b.keys[j] == key { // the client asked again
			in := &b.info[j]
			if in.be == be && in.copies < maxCopies && now-b.sent[j] <= int64(FlightAge) {
				b.sent[j] = now
				in.copies++
				in.dup = true
				mu.Unlock()
				return placed{dup: true}
			}
			way = j
			break
		}
	}
	if way < 0 {
		oldest := 0
		for j := range flightWays {
			if b.sent[j] == 0 || now-b.sent[j] > int64(FlightAge) {
				way = j
				break
			}
			if b.sent[j] < b.sent[oldest] {
				oldest = j
			}
		}
		if way < 0 {
			way, p.evicted = oldest, true
		}
	}
	in := &b.info[way]
	if b.sent[way] != 0 {
		p.displaced, p.copies = in.be, int(in.copies)
	}
	b.keys[way], b.sent[way] = key, now
	in.be, in.lis, in.resent, in.ifindex, in.local = be, o.lis, false, o.ifindex, o.local
	in.dup, in.copies = false, 1
	in.ck = ck
	in.seq = seq
	in.qlen = 0
	if len(query) <= keepLen {
		in.qlen = uint8(len(query))
		copy(b.query[way][:], query)
	}
	mu.Unlock()
	return p
}

// answered is what take found of a query.
type answered struct {
	origin
	be   backend.ID
	sent int64
	// measure: the answer measures its backend's latency (the query
	// was neither sent again nor sent more than once).
	measure bool
	// other, for a query sent again: the backend besides be that was
	// sent it, whose answer would come second (0 for none).
	other backend.ID
	ck    cache.Key // the query's answer cache key
}

// take finds the query key answers and takes one copy of it, forgetting
// it with its last. A late answer (after FlightAge, before sweep forgot
// the query) is found too: it still measures its backend's latency.
func (t *flights) take(key uint64, out *answered) bool {
	b, mu := t.bucket(key)
	mu.Lock()
	for j := range flightWays {
		if b.sent[j] != 0 && b.keys[j] == key {
			in := &b.info[j]
			out.lis, out.ifindex, out.local = in.lis, in.ifindex, in.local
			out.be, out.sent, out.measure = in.be, b.sent[j], !in.resent && !in.dup
			out.other, out.ck = 0, in.ck
			if in.resent {
				out.other = in.from
			}
			if in.copies > 1 {
				in.copies--
			} else {
				b.sent[j] = 0
			}
			mu.Unlock()
			return true
		}
	}
	mu.Unlock()
	return false
}

// sweep forgets the queries older than FlightAge at now, calling gone
// with each one's backend and the copies of it not answered.
func (t *flights) sweep(now int64, gone func(be backend.ID, copies int)) {
	t.visit(func(b *bucket, j int) {
		if b.sent[j] != 0 && now-b.sent[j] > int64(FlightAge) {
			b.sent[j] = 0
			gone(b.info[j].be, int(b.info[j].copies))
		}
	})
}

// each calls fn, under the record's lock, for each query of backend be
// still waited for at now, with its key, when it was sent, what is kept
// of it and the query (empty if it was too long to keep). fn may change
// info's backend, resent and copies.
func (t *flights) each(be backend.ID, now int64, fn func(key uint64, sent int64, info *flightInfo, query []byte)) {
	t.visit(func(b *bucket, j int) {
		if b.sent[j] != 0 && b.info[j].be == be && now-b.sent[j] <= int64(FlightAge) {
			fn(b.keys[j], b.sent[j], &b.info[j], b.query[j][:b.info[j].qlen])
		}
	})
}

// visit calls fn for every way of every bucket, each under its lock.
func (t *flights) visit(fn func(b *bucket, way int)) {
	for i := range t.buckets {
		b := &t.buckets[i]
		b.mu.Lock()
		for j := range flightWays {
			fn(b, j)
		}
		b.mu.Unlock()
	}
}
