package udpproxy

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/udpproxy/cache"
)

// cachedBed is a bed with an answer cache, and a query (in a reader's
// slot) whose answer the backend has given: handle answers it from the
// cache.
func cachedBed(t testing.TB) (*bed, []byte, int) {
	t.Helper()
	b := newBedWith(t, zerolog.Nop(), func(p *Proxy) { p.SetCache(cache.New(cache.Config{Entries: 1000, Stale: 60})) })
	q := new(dns.Msg)
	q.SetQuestion("svc.cache.test.", dns.TypeA)
	q.Id = 7
	query, _ := q.Pack()
	a := new(dns.Msg)
	a.SetReply(q)
	a.Answer = append(a.Answer, &dns.A{Hdr: dns.RR_Header{Name: "svc.cache.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{10, 0, 0, 1}})
	answer, _ := a.Pack()

	buf := make([]byte, slotLen)
	copy(buf[protocol.UDPHeaderLen:], query)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	be := b.set.Get(5301)
	// Now by the proxy's clock: a query at 0 would be swept as past
	// FlightAge before its answer came.
	if b.handle(buf, len(query), ip, 5353, &o, b.p.clock.Now().UnixNano()) != be {
		t.Fatal("the first query was not sent to the backend")
	}
	be.Flush(0)
	batch := b.p.Replies(be)
	batch.Add(answer, netip.AddrPortFrom(ip, 5353))
	batch.Flush()
	if st := b.p.Cache().Stats(); st.Entries != 1 {
		t.Fatalf("cache %+v: the answer was not kept", st)
	}
	copy(buf[protocol.UDPHeaderLen:], query)
	return b, buf, len(query)
}

// TestCacheHitPathAllocatesNothing: a query answered from the cache, in
// the reader's buffer, and sent with the batch's sendmmsg.
func TestCacheHitPathAllocatesNothing(t *testing.T) {
	b, buf, n := cachedBed(t)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	l := b.p.ls[0]
	query := append([]byte(nil), buf[protocol.UDPHeaderLen:protocol.UDPHeaderLen+n]...)
	if a := testing.AllocsPerRun(2000, func() {
		copy(buf[protocol.UDPHeaderLen:], query)
		if b.p.handle(l, buf, n, ip, 5353, &o, b.p.clock.Now().UnixNano()) != nil {
			t.Fatal("a cached query was sent to the backend")
		}
		l.cached.flush()
	}); a != 0 {
		t.Fatalf("a cache hit: %.1f allocations", a)
	}
	if st := b.p.Cache().Stats(); st.Hits < 2000 {
		t.Fatalf("%d hits", st.Hits)
	}
	if st := b.p.Stats(); st.PacketsOut < 2000 {
		t.Fatalf("%d answers sent", st.PacketsOut)
	}
}

// TestCacheMissPathAllocatesNothing: with a cache, a query it cannot
// answer and the answer it keeps.
func TestCacheMissPathAllocatesNothing(t *testing.T) {
	b, buf, n := cachedBed(t)
	b.p.Cache().Flush()
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	be := b.set.Get(5301)
	query := append([]byte(nil), buf[protocol.UDPHeaderLen:protocol.UDPHeaderLen+n]...)
	batch := b.p.Replies(be)
	answer := make([]byte, 0, 512)
	id := uint16(0)
	if a := testing.AllocsPerRun(2000, func() {
		id++
		copy(buf[protocol.UDPHeaderLen:], query)
		binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], id)
		if b.handle(buf, n, ip, 5353, &o, b.p.clock.Now().UnixNano()) != be {
			t.Fatal("not sent to the backend")
		}
		be.Flush(0)
		// Its answer: the query with QR set and no records, which is
		// not kept (a negative answer with no SOA).
		answer = append(answer[:0], buf[protocol.UDPHeaderLen:protocol.UDPHeaderLen+n]...)
		answer[2] |= 0x80
		batch.Add(answer, netip.AddrPortFrom(ip, 5353))
		batch.Flush()
	}); a != 0 {
		t.Fatalf("a cache miss and its answer: %.1f allocations", a)
	}
	if st := b.p.Cache().Stats(); st.Misses < 2000 || st.Rejected < 2000 {
		t.Fatalf("cache %+v: want every query a miss, every answer not kept", st)
	}
}

// BenchmarkDatagramCacheHit is BenchmarkDatagramToBackend's path for a
// query answered from the cache: the route, the key, the lookup, the
// answer written over the query and sent 64 at a time with sendmmsg.
func BenchmarkDatagramCacheHit(b *testing.B) {
	bed, buf, n := cachedBed(b)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	l := bed.p.ls[0]
	query := append([]byte(nil), buf[protocol.UDPHeaderLen:protocol.UDPHeaderLen+n]...)
	now := bed.p.clock.Now().UnixNano()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		copy(buf[protocol.UDPHeaderLen:], query)
		binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], uint16(i))
		bed.p.handle(l, buf, n, ip, 5353, &o, now)
		if i++; i%batchLen == 0 {
			l.cached.flush()
		}
	}
}

// BenchmarkDatagramCacheMiss is BenchmarkDatagramToBackend's path with a
// cache that holds nothing for the query: the key and a lookup more.
func BenchmarkDatagramCacheMiss(b *testing.B) {
	bed, buf, n := cachedBed(b)
	bed.p.Cache().Flush()
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	now := bed.p.clock.Now().UnixNano()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], uint16(i))
		bed.p.handle(bed.p.ls[0], buf, n, ip, 5353, &o, now)
		if i++; i%batchLen == 0 {
			bed.p.endBatch(bed.p.ls[0], 0)
		}
	}
}
