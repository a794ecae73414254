package udpproxy

import (
	"github.com/bbal/bbal/udpproxy/cache"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
)

func TestFlightsMatchAnswersToQueries(t *testing.T) {
	ft := newFlights()
	o := &origin{lis: 1, ifindex: 7, local: [16]byte{15: 9}}
	now := int64(time.Hour)
	key := flightKey(0x7f000001, 5353, 42)
	if pl := ft.put(key, 5301, o, []byte("query"), cache.Key{}, now, now); pl != (placed{}) {
		t.Fatalf("put in an empty table: %+v", pl)
	}
	var a answered
	if ft.take(flightKey(0x7f000001, 5353, 43), &a) {
		t.Fatal("an answer with another ID matched")
	}
	if !ft.take(key, &a) || a.be != 5301 || a.sent != now || a.origin != *o || !a.measure {
		t.Fatalf("take: %+v", a)
	}
	if ft.take(key, &a) {
		t.Fatal("a second answer matched the same query")
	}
}

func TestFlightsBounded(t *testing.T) {
	ft := newFlights()
	o := &origin{}
	now := int64(time.Hour)
	// The same query again, for another backend, displaces itself; it
	// is not an eviction.
	key := flightKey(1, 2, 3)
	ft.put(key, 5301, o, nil, cache.Key{}, now, now)
	if pl := ft.put(key, 5302, o, nil, cache.Key{}, now+1, now+1); pl != (placed{displaced: 5301, copies: 1}) {
		t.Fatalf("repeat: %+v", pl)
	}
	// Fill every way of key's bucket: the next query there evicts the
	// oldest.
	b, _ := ft.bucket(key)
	var same []uint64
	for k := uint64(1); len(same) < flightWays; k++ {
		// Other clients, with key's port and ID: its region.
		if c, _ := ft.bucket(k<<32 | key&0xffffffff); c == b && k<<32|key&0xffffffff != key {
			same = append(same, k<<32|key&0xffffffff)
		}
	}
	for i, k := range same[:flightWays-1] {
		ft.put(k, backend.ID(6000+i), o, nil, cache.Key{}, now+2+int64(i), now+2+int64(i))
	}
	if pl := ft.put(same[flightWays-1], 7000, o, nil, cache.Key{}, now+10, now+10); pl != (placed{displaced: 5302, copies: 1, evicted: true}) {
		t.Fatalf("full bucket: %+v; want the oldest, 5302, evicted", pl)
	}
	// A query past FlightAge makes room without an eviction, and sweep
	// forgets the rest.
	later := now + int64(FlightAge) + 100
	if pl := ft.put(key, 5303, o, nil, cache.Key{}, later, later); pl.displaced == 0 || pl.evicted || pl.dup {
		t.Fatalf("stale way: %+v", pl)
	}
	var gone []backend.ID
	ft.sweep(later+int64(FlightAge)/2, func(id backend.ID, _ int) { gone = append(gone, id) })
	if len(gone) != flightWays-1 {
		t.Fatalf("swept %v", gone)
	}
	var a answered
	if !ft.take(key, &a) || a.be != 5303 {
		t.Fatalf("the fresh query was swept: %+v", a)
	}
}

func TestFlightsCountCopiesOfAQuery(t *testing.T) {
	ft := newFlights()
	first := &origin{lis: 1, ifindex: 3, local: [16]byte{15: 2}}
	now := int64(time.Hour)
	key := flightKey(0x7f000001, 5353, 42)
	ft.put(key, 5301, first, nil, cache.Key{}, now, now)
	// A retransmit, from the same port with the same ID, to the same
	// backend: a copy on the record, not a new query.
	for i := range 4 {
		if pl := ft.put(key, 5301, &origin{}, nil, cache.Key{}, now+int64(i+1), now+int64(i+1)); pl != (placed{dup: true}) {
			t.Fatalf("copy %d: %+v", i+2, pl)
		}
	}
	// Each answer takes a copy and leaves the way the first came in;
	// none measures latency.
	var a answered
	for i := range 5 {
		if !ft.take(key, &a) || a.origin != *first || a.measure || a.be != 5301 {
			t.Fatalf("answer %d: %+v", i+1, a)
		}
	}
	if ft.take(key, &a) {
		t.Fatal("a sixth answer matched five copies")
	}
	// Copies not answered are swept, counted.
	ft.put(key, 5301, first, nil, cache.Key{}, now, now)
	ft.put(key, 5301, first, nil, cache.Key{}, now+1, now+1)
	ft.put(key, 5301, first, nil, cache.Key{}, now+2, now+2)
	ft.take(key, &a)
	swept := 0
	ft.sweep(now+2+int64(FlightAge)+1, func(id backend.ID, copies int) { swept += copies })
	if swept != 2 {
		t.Fatalf("swept %d copies, want 2", swept)
	}
	// A copy past FlightAge of the latest is a new query; one beyond
	// maxCopies starts the record over.
	ft.put(key, 5301, first, nil, cache.Key{}, now, now)
	if pl := ft.put(key, 5301, first, nil, cache.Key{}, now+int64(FlightAge)+1, now+int64(FlightAge)+1); pl != (placed{displaced: 5301, copies: 1}) {
		t.Fatalf("stale copy: %+v", pl)
	}
	for range maxCopies - 1 {
		ft.put(key, 5301, first, nil, cache.Key{}, now+int64(FlightAge)+1, now+int64(FlightAge)+1)
	}
	if pl := ft.put(key, 5301, first, nil, cache.Key{}, now+int64(FlightAge)+1, now+int64(FlightAge)+1); pl != (placed{displaced: 5301, copies: maxCopies}) {
		t.Fatalf("copy beyond maxCopies: %+v", pl)
	}
}

func TestFlightsKeepQueriesForResending(t *testing.T) {
	ft := newFlights()
	o := &origin{}
	now := int64(time.Hour)
	long := make([]byte, keepLen+1)
	ft.put(flightKey(1, 1, 1), 5301, o, []byte("short"), cache.Key{}, now, now)
	ft.put(flightKey(1, 1, 2), 5301, o, long, cache.Key{}, now, now)
	ft.put(flightKey(1, 1, 3), 5302, o, []byte("other"), cache.Key{}, now, now)
	got := map[uint64]string{}
	ft.each(5301, now, func(key uint64, _ int64, f *flightInfo, query []byte) {
		got[key] = string(query)
		f.be = 5399
	})
	if len(got) != 2 || got[flightKey(1, 1, 1)] != "short" || got[flightKey(1, 1, 2)] != "" {
		t.Fatalf("each: %v", got)
	}
	var a answered
	if !ft.take(flightKey(1, 1, 1), &a) || a.be != 5399 {
		t.Fatalf("moved query: %+v", a)
	}
	// Past FlightAge, nothing is sent again.
	n := 0
	ft.each(5302, now+int64(FlightAge)+1, func(uint64, int64, *flightInfo, []byte) { n++ })
	if n != 0 {
		t.Fatalf("%d stale queries offered for resending", n)
	}
}

// Clients that differ only in their address's high bits, asking from
// one port with one ID (as many stubs behind NATs do), spread over the
// buckets of the ID's region rather than all sharing one.
func TestFlightBucketsSpreadHighAddressBits(t *testing.T) {
	if 1<<flightBucketBits != flightBuckets {
		t.Fatalf("flightBucketBits %d for %d buckets", flightBucketBits, flightBuckets)
	}
	ft := newFlights()
	seen := map[*bucket]bool{}
	for hi := range uint32(256) {
		b, _ := ft.bucket(flightKey(hi<<24|0x000005, 5353, 1))
		seen[b] = true
	}
	if len(seen) < flightBuckets/Regions*3/4 {
		t.Fatalf("256 clients in %d buckets of the region's %d", len(seen), flightBuckets/Regions)
	}
}
