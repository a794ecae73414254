package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"testing"
)

func TestWireValues(t *testing.T) {
	// The values node-mname's lib/balancer.js uses.
	want := map[FrameType]uint32{
		FrameClientHello: 1, FrameInboundUDP: 2, FrameInboundTCP: 3, FrameClientHeartbeat: 4,
		FrameServerHello: 1001, FrameOutboundUDP: 1002, FrameInboundTCPOK: 1003, FrameServerHeartbeat: 1004,
	}
	for ft, v := range want {
		if uint32(ft) != v {
			t.Errorf("%s = %d, want %d", ft, uint32(ft), v)
		}
	}
	if got := FrameType(77).String(); got != "frame type 77" {
		t.Errorf("String of unknown type = %q", got)
	}
}

func TestEncodingIsLittleEndianHostOrderAddress(t *testing.T) {
	ip := AddrToU32(netip.MustParseAddr("10.1.2.3"))
	if ip != 0x0A010203 {
		t.Fatalf("AddrToU32(10.1.2.3) = %#x", ip)
	}
	got := AppendUDP(nil, FrameInboundUDP, ip, 5353, []byte("hi"))
	want := "02000000" + "0302010a" + "e9140000" + "02000000" + hex.EncodeToString([]byte("hi"))
	if hex.EncodeToString(got) != want {
		t.Errorf("INBOUND_UDP = %x, want %s", got, want)
	}
	got = AppendInboundTCP(nil, ip, 40000)
	if want := "03000000" + "0302010a" + "409c0000"; hex.EncodeToString(got) != want {
		t.Errorf("INBOUND_TCP = %x, want %s", got, want)
	}
	if got := AppendType(nil, FrameServerHello); hex.EncodeToString(got) != "e9030000" {
		t.Errorf("SERVER_HELLO = %x", got)
	}
	if a := U32ToAddr(ip); a != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("U32ToAddr = %s", a)
	}
	if AddrToU32(netip.MustParseAddr("::ffff:10.1.2.3")) != ip {
		t.Error("mapped address not unmapped")
	}
	if AddrToU32(netip.MustParseAddr("2001:db8::1")) != 0 {
		t.Error("IPv6 address should give 0")
	}
}

// stream returns a backend's stream of one of each frame it may send.
func backendStream() ([]byte, []Frame) {
	frames := []Frame{
		{Type: FrameServerHello},
		{Type: FrameOutboundUDP, IP: 0x7f000001, Port: 53000, Data: []byte("answer one")},
		{Type: FrameServerHeartbeat},
		{Type: FrameOutboundUDP, IP: 0x0a000002, Port: 1, Data: bytes.Repeat([]byte{0xab}, MaxData)},
		{Type: FrameOutboundUDP, IP: 0x0a000003, Port: 2, Data: []byte{}},
		{Type: FrameInboundTCPOK},
	}
	var b []byte
	for _, f := range frames {
		switch f.Type {
		case FrameOutboundUDP:
			b = AppendUDP(b, f.Type, f.IP, uint16(f.Port), f.Data)
		default:
			b = AppendType(b, f.Type)
		}
	}
	return b, frames
}

func drain(t *testing.T, d *Decoder) []Frame {
	t.Helper()
	var out []Frame
	for {
		f, ok, err := d.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if !ok {
			return out
		}
		f.Data = bytes.Clone(f.Data)
		out = append(out, f)
	}
}

func sameFrames(t *testing.T, got, want []Frame) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.IP != w.IP || g.Port != w.Port || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("frame %d = %v %x:%d len %d, want %v %x:%d len %d",
				i, g.Type, g.IP, g.Port, len(g.Data), w.Type, w.IP, w.Port, len(w.Data))
		}
	}
}

func TestDecoderSplitAnywhere(t *testing.T) {
	stream, want := backendStream()
	for cut := 0; cut <= len(stream); cut++ {
		d := NewDecoder(FromBackend, 0)
		var got []Frame
		for _, part := range [][]byte{stream[:cut], stream[cut:]} {
			if _, err := d.Write(part); err != nil {
				t.Fatalf("cut %d: Write: %v", cut, err)
			}
			got = append(got, drain(t, d)...)
		}
		sameFrames(t, got, want)
		if d.Buffered() != 0 {
			t.Fatalf("cut %d: %d bytes left over", cut, d.Buffered())
		}
	}
}

func TestDecoderOneByteAtATime(t *testing.T) {
	stream, want := backendStream()
	d := NewDecoder(FromBackend, 0)
	var got []Frame
	r := bytes.NewReader(stream)
	for r.Len() > 0 {
		if n, err := d.Fill(io.LimitReader(r, 1)); n != 1 || err != nil {
			t.Fatalf("Fill = %d, %v", n, err)
		}
		got = append(got, drain(t, d)...)
	}
	sameFrames(t, got, want)
}

func TestDecoderSmallBufferWrapsManyFrames(t *testing.T) {
	// Many maximal frames through the smallest buffer exercise compaction.
	var stream []byte
	var want []Frame
	for i := range 50 {
		data := bytes.Repeat([]byte{byte(i)}, MaxData-i)
		stream = AppendUDP(stream, FrameInboundUDP, uint32(i), uint16(i), data)
		want = append(want, Frame{Type: FrameInboundUDP, IP: uint32(i), Port: uint32(i), Data: data})
	}
	d := NewDecoder(FromBalancer, 2*MaxFrameLen)
	d.buf = d.buf[:2*MaxFrameLen]
	var got []Frame
	r := bytes.NewReader(stream)
	for {
		_, err := d.Fill(io.LimitReader(r, 1000))
		got = append(got, drain(t, d)...)
		if err == io.EOF || r.Len() == 0 && d.Buffered() == 0 {
			break
		}
	}
	sameFrames(t, got, want)
}

func TestDecoderErrors(t *testing.T) {
	tests := []struct {
		name  string
		dir   Direction
		input []byte
		want  error
		text  string
	}{
		{"unknown type", FromBackend, AppendType(nil, 77), ErrUnknownFrame, "unknown frame type 77"},
		{"client frame from backend", FromBackend, AppendType(nil, FrameClientHello), ErrUnknownFrame, "unknown CLIENT_HELLO"},
		{"backend frame from balancer", FromBalancer, AppendType(nil, FrameServerHeartbeat), ErrUnknownFrame, "unknown SERVER_HEARTBEAT"},
		{"zero type", FromBalancer, []byte{0, 0, 0, 0}, ErrUnknownFrame, "unknown frame type 0"},
		{
			// The length is refused as soon as the header is in, before
			// any of the data arrives.
			"too long", FromBackend,
			func() []byte { b := make([]byte, 16); PutUDPHeader(b, FrameOutboundUDP, 1, 2, 1501); return b }(),
			ErrTooLong, "OUTBOUND_UDP data length 1501 over 1500",
		},
		{
			"huge length", FromBalancer,
			[]byte{2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
			ErrTooLong, "INBOUND_UDP data length 4294967295 over 1500",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecoder(tt.dir, 0)
			if _, err := d.Write(tt.input); err != nil {
				t.Fatal(err)
			}
			_, ok, err := d.Next()
			if ok || !errors.Is(err, tt.want) {
				t.Fatalf("Next = %v, %v; want %v", ok, err, tt.want)
			}
			if err.Error() != tt.text {
				t.Errorf("error text %q, want %q", err.Error(), tt.text)
			}
			if _, _, again := d.Next(); again != err {
				t.Errorf("error not sticky: %v", again)
			}
			d.Reset()
			if _, ok, err := d.Next(); ok || err != nil {
				t.Errorf("after Reset: %v %v", ok, err)
			}
		})
	}
}

func TestDecoderPartialHeaderWaits(t *testing.T) {
	d := NewDecoder(FromBalancer, 0)
	b := AppendInboundTCP(nil, 0x7f000001, 1234)
	for i := range len(b) - 1 {
		d.Write(b[i : i+1])
		if _, ok, err := d.Next(); ok || err != nil {
			t.Fatalf("after %d bytes: %v %v", i+1, ok, err)
		}
	}
	d.Write(b[len(b)-1:])
	f, ok, err := d.Next()
	if !ok || err != nil || f.Type != FrameInboundTCP || f.IP != 0x7f000001 || f.Port != 1234 {
		t.Fatalf("Next = %+v %v %v", f, ok, err)
	}
	ap, ok := f.AddrPort()
	if !ok || ap.String() != "127.0.0.1:1234" {
		t.Errorf("AddrPort = %v %v", ap, ok)
	}
	f.Port = 70000
	if _, ok := f.AddrPort(); ok {
		t.Error("AddrPort accepted port 70000")
	}
}

func TestDecoderFull(t *testing.T) {
	d := NewDecoder(FromBackend, 0)
	big := make([]byte, len(d.buf)+10)
	for i := 0; i+4 <= len(big); i += 4 {
		copy(big[i:], AppendType(nil, FrameServerHeartbeat))
	}
	n, err := d.Write(big)
	if !errors.Is(err, ErrFull) || n != len(d.buf) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if _, err := d.Fill(bytes.NewReader(big)); !errors.Is(err, ErrFull) {
		t.Fatalf("Fill on a full buffer: %v", err)
	}
	if got := len(drain(t, d)); got != len(d.buf)/4 {
		t.Fatalf("drained %d frames", got)
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	stream, _ := backendStream()
	d := NewDecoder(FromBackend, 0)
	r := bytes.NewReader(stream)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(stream)
		for {
			if _, err := d.Fill(r); err == io.EOF {
				break
			}
			for {
				_, ok, _ := d.Next()
				if !ok {
					break
				}
			}
		}
	})
	if allocs != 0 {
		t.Errorf("decoding allocates %.1f times per stream", allocs)
	}
	hdr := make([]byte, UDPHeaderLen)
	if a := testing.AllocsPerRun(100, func() { PutUDPHeader(hdr, FrameInboundUDP, 1, 2, 3) }); a != 0 {
		t.Errorf("PutUDPHeader allocates %.1f", a)
	}
}
