// Package protocol implements the framing spoken between the balancer and
// its backend DNS server processes (node-mname's listenBalancer) over an
// AF_UNIX stream socket.
//
// This is the one place where the wire format is written down; the other
// packages refer here.
//
// # Frames
//
// All integers are unsigned 32-bit little-endian. Every frame starts with
// its type word. Addresses are IPv4 addresses as a number in host order
// (10.1.2.3 is 0x0A010203), written little-endian like every other word.
//
// Balancer to backend:
//
//	TYPE  NAME              LAYOUT
//	1     CLIENT_HELLO      type
//	2     INBOUND_UDP       type, source IPv4, source port, length N, N bytes
//	3     INBOUND_TCP       type, source IPv4, source port
//	4     CLIENT_HEARTBEAT  type
//
// Backend to balancer:
//
//	TYPE  NAME              LAYOUT
//	1001  SERVER_HELLO      type
//	1002  OUTBOUND_UDP      type, destination IPv4, destination port, length N, N bytes
//	1003  INBOUND_TCP_OK    type (the last frame on that connection)
//	1004  SERVER_HEARTBEAT  type
//
// The INBOUND_UDP and OUTBOUND_UDP header is 16 bytes:
//
//	OFFSET  LENGTH  DESCRIPTION
//	0       4       frame type
//	4       4       IPv4 address
//	8       4       port
//	12      4       data length N (at most [MaxData])
//	16      N       the DNS message
//
// # Sessions
//
// A standing session (one per backend) opens with CLIENT_HELLO, answered by
// SERVER_HELLO; after that the balancer sends INBOUND_UDP and
// CLIENT_HEARTBEAT, the backend sends OUTBOUND_UDP and SERVER_HEARTBEAT.
// Replies are not matched to requests: an OUTBOUND_UDP frame says "send
// these bytes to this address and port from the DNS socket".
//
// A TCP proxy session (one per client TCP connection) is a new connection
// on which the balancer sends INBOUND_TCP and waits for INBOUND_TCP_OK; from
// then on bytes are copied verbatim both ways. It has no hello.
//
// # Decoding
//
// [Decoder] takes a byte stream split anywhere and yields whole frames
// without allocating. It checks a frame's type before waiting for the rest
// of it, and a data length against [MaxData] before waiting for the data,
// so a hostile peer cannot make it buffer more than one maximal frame.
package protocol
