package udpproxy

import (
	"encoding/binary"
	"io"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/udpproxy/cache"
)

// BenchmarkFlightsParallel records a query in flight and takes its
// answer, from several readers at once (run it with -cpu 1,2,...), each
// with clients of its own: random addresses, ports and IDs, as a
// resolver's are, but only the IDs the steering gives that reader.
func BenchmarkFlightsParallel(b *testing.B) {
	t := newFlights()
	var next atomic.Uint64
	readers := runtime.GOMAXPROCS(0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := next.Add(1) - 1
		keys := make([]uint64, 4096)
		x := (g+1)*0x9e3779b97f4a7c15 | 1
		for i := 0; i < len(keys); {
			// xorshift64: a client address, port and ID.
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			if ReaderOf(uint16(x>>16), uint16(x), readers) == int(g)%readers {
				keys[i] = x
				i++
			}
		}
		var o origin
		var a answered
		query := make([]byte, 40)
		now := int64(1)
		i := 0
		for pb.Next() {
			key := keys[i]
			t.put(key, 1, &o, query, cache.Key{}, now, now)
			if !t.take(key, &a) {
				b.Error("not found")
				return
			}
			if i++; i == len(keys) {
				i = 0
			}
			now++
		}
	})
}

// BenchmarkDatagramToBackendParallel is BenchmarkDatagramToBackend from
// several readers at once (run it with -cpu 1,2,...): each goroutine is
// the reader of a socket of its own, with 256 clients of its own asking
// with the IDs the steering gives it, all of them queued to the one
// backend, written once per 64 datagrams.
func BenchmarkDatagramToBackendParallel(b *testing.B) {
	bed := newBedSockets(b, zerolog.New(io.Discard).Level(zerolog.InfoLevel), 8)
	var next atomic.Uint32
	readers := runtime.GOMAXPROCS(0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := next.Add(1) - 1
		reader := int(g) % readers
		l := bed.p.ls[g%uint32(len(bed.p.ls))]
		buf := make([]byte, slotLen)
		var o origin
		o.lis = l.idx
		i := uint32(0)
		for pb.Next() {
			ip := protocol.U32ToAddr(0x0a000000 | g<<8 | i&0xff)
			// An ID the steering gives this reader.
			id := uint16(int(i) * readers)
			for ReaderOf(5353, id, readers) != reader {
				id++
			}
			binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], id)
			bed.p.handle(l, buf, 64, ip, 5353, &o, 0)
			if i++; i%batchLen == 0 {
				bed.p.endBatch(l, 0)
			}
		}
	})
}
