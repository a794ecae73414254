package udpproxy

import (
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
)

func TestFlightsMatchAnswersToQueries(t *testing.T) {
	ft := newFlights()
	o := &origin{lis: 1, ifindex: 7, local: [16]byte{15: 9}}
	now := int64(time.Hour)
	key := flightKey(0x7f000001, 5353, 42)
	if d, _ := ft.put(key, 5301, o, []byte("query"), now); d != 0 {
		t.Fatalf("displaced %d from an empty table", d)
	}
	var a answered
	if ft.take(flightKey(0x7f000001, 5353, 43), &a) {
		t.Fatal("an answer with another ID matched")
	}
	if !ft.take(key, &a) || a.be != 5301 || a.sent != now || a.origin != *o {
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
	// The same query again displaces itself; it is not an eviction.
	key := flightKey(1, 2, 3)
	ft.put(key, 5301, o, nil, now)
	if d, ev := ft.put(key, 5302, o, nil, now+1); d != 5301 || ev {
		t.Fatalf("repeat: displaced %d, evicted %v", d, ev)
	}
	// Fill every way of key's bucket: the next query there evicts the
	// oldest.
	b, _ := ft.bucket(key)
	var same []uint64
	for k := uint64(1); len(same) < flightWays; k++ {
		if c, _ := ft.bucket(k << 16); c == b && k<<16 != key {
			same = append(same, k<<16)
		}
	}
	for i, k := range same[:flightWays-1] {
		ft.put(k, backend.ID(6000+i), o, nil, now+2+int64(i))
	}
	if d, ev := ft.put(same[flightWays-1], 7000, o, nil, now+10); d != 5302 || !ev {
		t.Fatalf("full bucket: displaced %d, evicted %v; want the oldest, 5302", d, ev)
	}
	// A query past FlightAge makes room without an eviction, and sweep
	// forgets the rest.
	later := now + int64(FlightAge) + 100
	if d, ev := ft.put(key, 5303, o, nil, later); d == 0 || ev {
		t.Fatalf("stale way: displaced %d, evicted %v", d, ev)
	}
	var gone []backend.ID
	ft.sweep(later+int64(FlightAge)/2, func(id backend.ID) { gone = append(gone, id) })
	if len(gone) != flightWays-1 {
		t.Fatalf("swept %v", gone)
	}
	var a answered
	if !ft.take(key, &a) || a.be != 5303 {
		t.Fatalf("the fresh query was swept: %+v", a)
	}
}

func TestFlightsKeepQueriesForResending(t *testing.T) {
	ft := newFlights()
	o := &origin{}
	now := int64(time.Hour)
	long := make([]byte, keepLen+1)
	ft.put(flightKey(1, 1, 1), 5301, o, []byte("short"), now)
	ft.put(flightKey(1, 1, 2), 5301, o, long, now)
	ft.put(flightKey(1, 1, 3), 5302, o, []byte("other"), now)
	got := map[uint64]string{}
	ft.each(5301, now, func(key uint64, f *flightInfo, query []byte) {
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
	ft.each(5302, now+int64(FlightAge)+1, func(uint64, *flightInfo, []byte) { n++ })
	if n != 0 {
		t.Fatalf("%d stale queries offered for resending", n)
	}
}
