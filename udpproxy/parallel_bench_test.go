package udpproxy

import (
	"encoding/binary"
	"io"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/udpproxy/cache"
)

// BenchmarkFlightsParallel records a query in flight and takes its
// answer, from several readers at once (run it with -cpu 1,2,...), each
// with clients of its own.
func BenchmarkFlightsParallel(b *testing.B) {
	t := newFlights()
	var seed atomic.Uint32
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := seed.Add(1)
		var o origin
		var a answered
		query := make([]byte, 40)
		i := uint32(0)
		now := int64(1)
		for pb.Next() {
			key := flightKey(0x0a000000|g<<16|i&0xff, 5353, uint16(i>>8))
			t.put(key, 1, &o, query, cache.Key{}, now, now)
			if !t.take(key, &a) {
				b.Error("not found")
				return
			}
			i++
			now++
		}
	})
}

// BenchmarkDatagramToBackendParallel is BenchmarkDatagramToBackend from
// several readers at once (run it with -cpu 1,2,...): each goroutine is
// the reader of a socket of its own, with 256 clients of its own, all of
// them queued to the one backend, written once per 64 datagrams.
func BenchmarkDatagramToBackendParallel(b *testing.B) {
	bed := newBedSockets(b, zerolog.New(io.Discard).Level(zerolog.InfoLevel), 8)
	be := bed.set.Get(5301)
	var next atomic.Uint32
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := next.Add(1) - 1
		l := bed.p.ls[g%uint32(len(bed.p.ls))]
		buf := make([]byte, slotLen)
		var o origin
		o.lis = l.idx
		i := uint32(0)
		for pb.Next() {
			ip := protocol.U32ToAddr(0x0a000000 | g<<8 | i&0xff)
			binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], uint16(i>>8))
			bed.p.handle(l, buf, 64, ip, 5353, &o, 0)
			if i++; i%batchLen == 0 {
				be.Flush(0)
			}
		}
	})
}
