package tcpproxy

import (
	"encoding/binary"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFramerCountsMessagesSplitAnywhere(t *testing.T) {
	var stream []byte
	for _, n := range []int{12, 0, 300, 1, 2000, 29} {
		stream = binary.BigEndian.AppendUint16(stream, uint16(n))
		stream = append(stream, make([]byte, n)...)
	}
	stream = append(stream, 0, 50, 1, 2) // half a message
	for cut := 0; cut <= len(stream); cut += 7 {
		for _, chunk := range []int{1, 2, 3, 1000} {
			var f framer
			got := f.feed(stream[:cut])
			for b := stream[cut:]; len(b) > 0; {
				n := min(chunk, len(b))
				got += f.feed(b[:n])
				b = b[n:]
			}
			if got != 6 {
				t.Fatalf("cut %d, chunks of %d: %d messages, want 6", cut, chunk, got)
			}
			if f.need != 48 {
				t.Fatalf("cut %d: %d bytes of the last message awaited, want 48", cut, f.need)
			}
		}
	}
}
