package udpproxy

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Poison queries: one client datagram must take down at most one
// backend. A query in flight on a backend that died is a suspect, and
// the queries most likely to have killed it are not sent on (see
// Proxy.resend). A query seen in flight at two deaths (sent again after
// the first, or asked again by its client after being held back) is
// quarantined: dropped on arrival for QuarantineTime.
//
// The table is small and fixed (suspectSlots entries under one mutex),
// and only deaths write it. The packet path reads a 1024-bit filter of
// the quarantined keys with one atomic load, and takes the lock only
// when its key's bit is set.

const (
	// QuarantineTime is how long a query seen at two backend deaths is
	// dropped (and how long a suspect is remembered): longer than a
	// stub resolver goes on retransmitting one query.
	QuarantineTime = 30 * time.Second

	suspectSlots = 64
	filterWords  = 16 // 1024 bits
)

// suspect is a query seen at a backend's death.
type suspect struct {
	key    uint64 // the flight key: client (wire) address, port, DNS ID
	sum    uint64 // querySum of the query; 0 when not kept: any matches
	deaths uint8
	until  int64 // unix nanoseconds; forgotten after
}

type quarantine struct {
	filter [filterWords]atomic.Uint64 // a bit per quarantined key
	mu     sync.Mutex
	s      [suspectSlots]suspect
}

func filterBit(key uint64) (word int, bit uint64) {
	h := (key * 0x9e3779b97f4a7c15) >> 54 // 10 bits
	return int(h >> 6), 1 << (h & 63)
}

// querySum hashes a query but for its DNS ID (FNV-1a): a client's
// retransmit has the same sum; another query with the same ID does
// not.
func querySum(query []byte) uint64 {
	if len(query) < 2 {
		return 0
	}
	h := uint64(14695981039346656037)
	for _, c := range query[2:] {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h | 1 // never 0, which matches any
}

func (e *suspect) matches(key, sum uint64, now int64) bool {
	return e.deaths > 0 && e.key == key && now < e.until && (e.sum == 0 || sum == 0 || e.sum == sum)
}

// holds reports whether query, of flight key key, is quarantined at
// now. Unless the key's bit is set, it costs one atomic load.
func (q *quarantine) holds(key uint64, query []byte, now int64) bool {
	w, bit := filterBit(key)
	if q.filter[w].Load()&bit == 0 {
		return false
	}
	sum := querySum(query)
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range q.s {
		if e := &q.s[i]; e.deaths >= 2 && e.matches(key, sum, now) {
			return true
		}
	}
	// The bit was an expired entry's, or another key's: clean up.
	q.refilter(now)
	return false
}

// seen records that the query of key and sum was in flight when a
// backend died at now, and returns at how many deaths it has been seen
// (this one included): at least prior. A query not known to the table
// is recorded only if it is a suspect or prior is not 0; otherwise seen
// returns 0.
func (q *quarantine) seen(key, sum uint64, now int64, suspected bool, prior uint8) uint8 {
	q.mu.Lock()
	defer q.mu.Unlock()
	var e *suspect
	for i := range q.s {
		if q.s[i].matches(key, sum, now) {
			e = &q.s[i]
			break
		}
	}
	if e == nil {
		if !suspected && prior == 0 {
			return 0
		}
		// A free or expired slot, else the one closest to expiry.
		e = &q.s[0]
		for i := range q.s {
			if c := &q.s[i]; c.deaths == 0 || c.until <= now {
				e = c
				break
			} else if c.until < e.until {
				e = c
			}
		}
		*e = suspect{key: key, sum: sum}
	}
	e.deaths = max(min(e.deaths, 254)+1, prior)
	e.until = now + int64(QuarantineTime)
	if e.deaths >= 2 {
		q.refilter(now)
	}
	return e.deaths
}

// refilter sets the filter to the quarantined entries' bits at now.
// The caller holds q.mu.
func (q *quarantine) refilter(now int64) {
	var f [filterWords]uint64
	for i := range q.s {
		if e := &q.s[i]; e.deaths >= 2 && now < e.until {
			w, bit := filterBit(e.key)
			f[w] |= bit
		}
	}
	for i := range f {
		q.filter[i].Store(f[i])
	}
}

// question is query's question for a log line ("name TYPE"), or "-".
func question(query []byte) string {
	var m dns.Msg
	if m.Unpack(query) != nil || len(m.Question) == 0 {
		return "-"
	}
	qq := m.Question[0]
	return strings.ToValidUTF8(qq.Name, "?") + " " + dns.TypeToString[qq.Qtype]
}
