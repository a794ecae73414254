package udpproxy

import (
	"testing"
	"time"
)

func TestQuarantine(t *testing.T) {
	var q quarantine
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	key := flightKey(0x7f000001, 5353, 7)
	query, other := []byte("\x00\x07query of death"), []byte("\x00\x07another query")
	sum := querySum(query)

	if d := q.seen(key, sum, now, false, 0); d != 0 {
		t.Fatalf("an innocent query at a death: %d deaths recorded", d)
	}
	if d := q.seen(key, sum, now, true, 0); d != 1 || q.holds(key, query, now) {
		t.Fatalf("a suspect: %d deaths, held %v; want 1, not held", d, q.holds(key, query, now))
	}
	// Its retransmit at a second death, as an innocent-looking query.
	if d := q.seen(key, sum, now+1, false, 0); d != 2 {
		t.Fatalf("seen again: %d deaths, want 2", d)
	}
	switch {
	case !q.holds(key, query, now+2):
		t.Fatal("not quarantined")
	case q.holds(key, other, now+2):
		t.Fatal("another query with the same client, port and ID is quarantined")
	case q.holds(key+1, query, now+2):
		t.Fatal("another ID is quarantined")
	}
	// For QuarantineTime after the last death, then forgotten, and the
	// filter cleared.
	if !q.holds(key, query, now+1+int64(QuarantineTime)-1) || q.holds(key, query, now+1+int64(QuarantineTime)) {
		t.Fatal("quarantine does not last QuarantineTime")
	}
	for i := range q.filter {
		if q.filter[i].Load() != 0 {
			t.Fatal("filter not cleared after the quarantine")
		}
	}
	// A query sent again once, at a death: quarantined at once.
	later := now + 2*int64(QuarantineTime)
	if d := q.seen(key, sum, later, false, 2); d != 2 || !q.holds(key, query, later) {
		t.Fatalf("a query sent again, at a death: %d deaths", d)
	}
}

// The table stays at suspectSlots entries: the one closest to expiry
// makes room.
func TestQuarantineIsBounded(t *testing.T) {
	var q quarantine
	now := int64(1)
	for i := range 3 * suspectSlots {
		k := flightKey(1, 1, uint16(i))
		q.seen(k, 1, now+int64(i), false, 2)
	}
	held := 0
	for i := range 3 * suspectSlots {
		if q.holds(flightKey(1, 1, uint16(i)), nil, now+int64(3*suspectSlots)) {
			held++
			if i < 2*suspectSlots {
				t.Fatalf("old entry %d kept", i)
			}
		}
	}
	if held != suspectSlots {
		t.Fatalf("%d quarantined, want the last %d", held, suspectSlots)
	}
}

func TestQuarantineCheckAllocatesNothing(t *testing.T) {
	var q quarantine
	query := []byte("\x00\x07query of death")
	key := flightKey(1, 1, 7)
	q.seen(key, querySum(query), 1, false, 2)
	for _, k := range []uint64{key, flightKey(2, 2, 2)} {
		if n := testing.AllocsPerRun(100, func() { q.holds(k, query, 2) }); n != 0 {
			t.Fatalf("holds allocates %v", n)
		}
	}
}
