package udpproxy

import (
	"encoding/binary"
	"io"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/protocol"
)

// BenchmarkDatagramToBackend is the UDP path from a datagram read to its
// frame queued and written to the backend's socket, one write per 64
// datagrams as the reader does.
func BenchmarkDatagramToBackend(b *testing.B) {
	benchDatagrams(b, newBed(b, zerolog.New(io.Discard).Level(zerolog.InfoLevel)))
}

// benchDatagrams measures datagrams handled on bed, one write to the
// backend per 64.
func benchDatagrams(b *testing.B, bed *bed) {
	buf := make([]byte, slotLen)
	ip := netip.MustParseAddr("127.0.0.9")
	var o origin
	bed.p.handle(bed.p.ls[0], buf, 64, ip, 5353, &o, 0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A new DNS ID each time, as a client's queries have: each is a
		// query of its own in flight, not a copy of the last.
		binary.BigEndian.PutUint16(buf[protocol.UDPHeaderLen:], uint16(i))
		bed.p.handle(bed.p.ls[0], buf, 64, ip, 5353, &o, 0)
		if i++; i%batchLen == 0 {
			bed.p.endBatch(bed.p.ls[0], 0)
		}
	}
}

// BenchmarkReplyToClient is the reply path: OUTBOUND_UDP data added to a
// batch and sent with sendmmsg, 64 at a time.
func BenchmarkReplyToClient(b *testing.B) {
	bed := newBed(b, zerolog.Nop())
	to := netip.MustParseAddrPort("127.0.0.1:9")
	// A known client: an answer to no query on record goes out only to
	// one.
	bed.table.Route(to.Addr())
	data := make([]byte, 64)
	batch := bed.p.Replies(bed.set.Get(5301))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		batch.Add(data, to)
		if i++; i%batchLen == 0 {
			batch.Flush()
		}
	}
	batch.Flush()
}
