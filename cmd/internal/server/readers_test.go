package server

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A process that takes over one socket of an address and is to have
// two readers binds the second, but until it reads them (the proxy's
// Start) the kernel gives every datagram to the inherited one, which the
// old process still reads: none waits unread in the new socket.
func TestTakingOverGivesNewSocketsNothingYet(t *testing.T) {
	u, tl, err := listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	ls := &listeners{log: zerolog.Nop(), udp: []*net.UDPConn{u}}
	ls.adjustReaders(2)
	for _, c := range ls.udp {
		defer c.Close()
	}
	if len(ls.udp) != 2 || len(ls.retired) != 0 || !ls.steered {
		t.Fatalf("%d sockets, %d retired, steered %v: want 2, 0, true", len(ls.udp), len(ls.retired), ls.steered)
	}
	cl, err := net.DialUDP("udp4", nil, u.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 10
	for id := range n {
		cl.Write([]byte{0, byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	}
	buf := make([]byte, 64)
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		if _, err := u.Read(buf); err != nil {
			t.Fatalf("the inherited socket had %d of %d datagrams: %v", i, n, err)
		}
	}
	// Any the new socket had would be there by now: the inherited one
	// had all of those sent after them.
	ls.udp[1].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if m, err := ls.udp[1].Read(buf); err == nil {
		t.Fatalf("the new socket was given a datagram (ID %d) before its reader runs", buf[1])
	} else if m != 0 {
		t.Fatal(err)
	}
}
