package protocol

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// FrameType is the first word of every frame.
type FrameType uint32

// Frame types, with their wire values.
const (
	FrameClientHello     FrameType = 1
	FrameInboundUDP      FrameType = 2
	FrameInboundTCP      FrameType = 3
	FrameClientHeartbeat FrameType = 4

	FrameServerHello     FrameType = 1001
	FrameOutboundUDP     FrameType = 1002
	FrameInboundTCPOK    FrameType = 1003
	FrameServerHeartbeat FrameType = 1004
)

const (
	// TypeLen is the length of a frame that is only a type word.
	TypeLen = 4
	// InboundTCPLen is the length of an INBOUND_TCP frame.
	InboundTCPLen = 12
	// UDPHeaderLen is the length of the INBOUND_UDP and OUTBOUND_UDP
	// header that precedes the data. Buffers on the UDP path reserve this
	// much room in front of each datagram so the header is filled in
	// place.
	UDPHeaderLen = 16
	// MaxData is the largest DNS message carried in a UDP frame. Clients
	// have no reason to send larger datagrams (the balancer does not
	// expect fragments), and a backend that sends a larger OUTBOUND_UDP is
	// faulted.
	MaxData = 1500
	// MaxFrameLen is the length of the largest valid frame.
	MaxFrameLen = UDPHeaderLen + MaxData
	// DNSHeaderLen is the length of a DNS message's header: the least
	// that is a DNS message at all.
	DNSHeaderLen = 12
)

var frameNames = map[FrameType]string{
	FrameClientHello:     "CLIENT_HELLO",
	FrameInboundUDP:      "INBOUND_UDP",
	FrameInboundTCP:      "INBOUND_TCP",
	FrameClientHeartbeat: "CLIENT_HEARTBEAT",
	FrameServerHello:     "SERVER_HELLO",
	FrameOutboundUDP:     "OUTBOUND_UDP",
	FrameInboundTCPOK:    "INBOUND_TCP_OK",
	FrameServerHeartbeat: "SERVER_HEARTBEAT",
}

func (t FrameType) String() string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return "frame type " + strconv.FormatUint(uint64(t), 10)
}

// headerLen is the fixed part of a frame of type t: all of it for every
// type but the two UDP frames, whose data follows.
func headerLen(t FrameType) int {
	switch t {
	case FrameInboundUDP, FrameOutboundUDP:
		return UDPHeaderLen
	case FrameInboundTCP:
		return InboundTCPLen
	default:
		return TypeLen
	}
}

// Frame is one decoded frame. IP and Port are set for the UDP frames and
// INBOUND_TCP; Data aliases the decoder's buffer and is valid until the
// decoder is next filled.
type Frame struct {
	Type FrameType
	IP   uint32
	Port uint32
	Data []byte
}

// AddrPort returns the frame's address and port, and false when the port
// does not fit in 16 bits.
func (f *Frame) AddrPort() (netip.AddrPort, bool) {
	if f.Port > 0xffff {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(U32ToAddr(f.IP), uint16(f.Port)), true
}

// AddrToU32 returns the IPv4 address a as the number the protocol carries.
// It is zero for an address that is not IPv4 (after unmapping).
func AddrToU32(a netip.Addr) uint32 {
	a = a.Unmap()
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// U32ToAddr is the inverse of AddrToU32.
func U32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// PutUDPHeader fills the 16-byte header of an INBOUND_UDP or OUTBOUND_UDP
// frame in b[:UDPHeaderLen] for n bytes of data.
func PutUDPHeader(b []byte, t FrameType, ip uint32, port uint16, n int) {
	_ = b[UDPHeaderLen-1]
	binary.LittleEndian.PutUint32(b[0:], uint32(t))
	binary.LittleEndian.PutUint32(b[4:], ip)
	binary.LittleEndian.PutUint32(b[8:], uint32(port))
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
}

// AppendType appends a frame that is only a type word (the hellos, the
// heartbeats and INBOUND_TCP_OK).
func AppendType(dst []byte, t FrameType) []byte {
	return binary.LittleEndian.AppendUint32(dst, uint32(t))
}

// AppendInboundTCP appends an INBOUND_TCP frame for a client at ip:port.
func AppendInboundTCP(dst []byte, ip uint32, port uint16) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(FrameInboundTCP))
	dst = binary.LittleEndian.AppendUint32(dst, ip)
	return binary.LittleEndian.AppendUint32(dst, uint32(port))
}

// AppendUDP appends an INBOUND_UDP or OUTBOUND_UDP frame carrying data.
func AppendUDP(dst []byte, t FrameType, ip uint32, port uint16, data []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, UDPHeaderLen)...)
	PutUDPHeader(dst[n:], t, ip, port, len(data))
	return append(dst, data...)
}
