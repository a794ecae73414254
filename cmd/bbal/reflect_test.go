package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy"
)

// listenUDP is a socket on a, on a port of the kernel's choosing, that
// the test closes.
func listenUDP(t *testing.T, a string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(a)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func localAddr(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// readWithin reads one datagram on c, waiting at most d.
func readWithin(c *net.UDPConn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return buf[:n], err
}

// A backend that sends OUTBOUND_UDP frames nobody asked for must not
// make bbal's DNS port a reflector: a reply that matches no query in
// flight goes only to a client the remotes table knows.
func TestUnsolicitedRepliesAreNotReflected(t *testing.T) {
	f := faultBedOn(servertest.NewConfig(t, func(c *server.Config) {
		c.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	}, nil))
	f.helloOK()
	fake := f.B.Backends.Get(5302)

	// A client pinned to the fake asks; the fake holds the answer until
	// the query is forgotten.
	from := f.PinTo(5302)
	client, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(f.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	q := new(dns.Msg)
	q.SetQuestion("who.example.", dns.TypeTXT)
	q.Id = 4242
	wire, _ := q.Pack()
	if _, err := client.Write(wire); err != nil {
		t.Fatal(err)
	}
	in := f.conn.Expect(t, protocol.FrameInboundUDP)
	late := answerAs("fake", in)
	f.Advance(udpproxy.FlightAge + time.Second)
	testbed.Eventually(t, "the query forgotten", func() bool { return fake.Outstanding() == 0 })

	// A victim that never asked anything, on an address no client has.
	victim := listenUDP(t, "127.9.9.9")
	vto := localAddr(victim)
	if f.B.Table.Known(vto.Addr()) {
		t.Fatalf("%v is a known client", vto.Addr())
	}
	junk := bytes.Repeat([]byte{0xab}, 1400)
	const flood = 50
	var frames []byte
	for range flood {
		frames = protocol.AppendUDP(frames, protocol.FrameOutboundUDP, protocol.AddrToU32(vto.Addr()), vto.Port(), junk)
	}
	// The late answer comes after the flood, on the same session.
	frames = protocol.AppendUDP(frames, protocol.FrameOutboundUDP, in.IP, localAddr(client).Port(), late)
	f.conn.Send(t, frames)

	// The late answer still reaches its client (the control that makes
	// the silence below mean something)...
	got, err := readWithin(client, 5*time.Second)
	if err != nil || !bytes.Equal(got, late) {
		t.Fatalf("late answer: read %d bytes, %v", len(got), err)
	}
	// ...and nothing reached the victim: had the flood been sent, it
	// would have been before the answer, on the same loopback.
	if got, err := readWithin(victim, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the victim received %d bytes (%v)", len(got), err)
	}
	st := f.B.UDP.Stats()
	if st.Unsolicited != flood || st.Unmatched != 1 {
		t.Fatalf("unsolicited %d, unmatched %d; want %d and 1", st.Unsolicited, st.Unmatched, flood)
	}
	// Logged once per 5 s, naming the backend and the address.
	msg := "dropping UDP reply to a client that asked nothing"
	fields := map[string]any{"be_id": 5302, "remote_ip": "127.9.9.9", "remote_port": vto.Port()}
	if n := f.Logs.Count(msg, fields); n != 1 {
		t.Fatalf("%d log records of the flood, want 1", n)
	}
	mark := f.Logs.Mark()
	f.Advance(5 * time.Second)
	f.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, protocol.AddrToU32(vto.Addr()), vto.Port(), junk))
	fields["suppressed"] = flood - 1
	f.Logs.WaitAfter(t, mark, msg, fields)

	// An IPv6 client known to the table (routed, as its query would be)
	// is known by its stand-in: a late answer to the stand-in still goes
	// out, from the IPv6 socket.
	client6 := listenUDP(t, "::1")
	standin := f.B.Table.Route(netip.MustParseAddr("::1")).Wire
	if standin == 0 {
		t.Fatal("no stand-in for ::1")
	}
	f.conn.Send(t, protocol.AppendUDP(nil, protocol.FrameOutboundUDP, standin, localAddr(client6).Port(), late))
	if got, err := readWithin(client6, 5*time.Second); err != nil || !bytes.Equal(got, late) {
		t.Fatalf("late answer over IPv6: read %d bytes, %v", len(got), err)
	}
	if st := f.B.UDP.Stats(); st.Unsolicited != flood+1 || st.Unmatched != 2 {
		t.Fatalf("unsolicited %d, unmatched %d; want %d and 2", st.Unsolicited, st.Unmatched, flood+1)
	}
	c := debugapi.NewClient(f.DebugSocket)
	defer c.Close()
	if js, err := c.Stats(context.Background()); err != nil || js.UDP.Unsolicited != flood+1 || js.UDP.Unmatched != 2 {
		t.Fatalf("/v1/stats udp: %+v %v", js.UDP, err)
	}
	if !fake.OK() {
		t.Fatal("the backend was faulted")
	}
}
