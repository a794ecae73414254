package protocol

import (
	"bytes"
	"testing"
)

func BenchmarkEncodeInboundUDPHeader(b *testing.B) {
	buf := make([]byte, UDPHeaderLen+64)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		PutUDPHeader(buf, FrameInboundUDP, 0x7f000001, 53000, 64)
	}
}

func BenchmarkDecodeOutboundUDP(b *testing.B) {
	var stream []byte
	for range 100 {
		stream = AppendUDP(stream, FrameOutboundUDP, 0x7f000001, 53000, make([]byte, 80))
	}
	d := NewDecoder(FromBackend, 0)
	r := bytes.NewReader(stream)
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		r.Reset(stream)
		for r.Len() > 0 {
			d.Fill(r)
			for {
				if _, ok, _ := d.Next(); !ok {
					break
				}
			}
		}
	}
}
