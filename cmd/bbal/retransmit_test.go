package main

import (
	"context"
	"net"
	"net/netip"
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

// A stub resolver retransmits a query with the same ID from the same
// port. On a wildcard bind every answer must leave from the address the
// query was sent to, and the copies are counted as duplicates, not as
// unanswered queries and unmatched replies.
func TestRetransmitsAreAnsweredFromTheAddressAsked(t *testing.T) {
	f := faultBedOn(servertest.NewConfig(t, func(c *server.Config) {
		c.Listen = []netip.Addr{netip.IPv4Unspecified()}
	}, nil))
	f.helloOK()
	fake := f.B.Backends.Get(5302)
	from := f.PinTo(5302)
	// Unconnected, so that a reply from any source is received.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: from.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	asked := at(f.harness, "127.0.0.2")

	// send sends copies of query id and returns what the fake got.
	send := func(id uint16, copies int) []protocol.Frame {
		q := new(dns.Msg)
		q.SetQuestion("who.example.", dns.TypeTXT)
		q.Id = id
		wire, _ := q.Pack()
		for range copies {
			if _, err := pc.WriteToUDPAddrPort(wire, asked); err != nil {
				t.Fatal(err)
			}
		}
		var in []protocol.Frame
		for range copies {
			in = append(in, f.conn.Expect(t, protocol.FrameInboundUDP))
		}
		return in
	}
	// answer sends the fake's answers to frames, copies of query id, and
	// checks that each reaches the client from the address asked.
	answer := func(id uint16, in []protocol.Frame) {
		var out []byte
		for _, q := range in {
			qfrom, _ := q.AddrPort()
			out = protocol.AppendUDP(out, protocol.FrameOutboundUDP, q.IP, qfrom.Port(), answerAs("fake", q))
		}
		f.conn.Send(t, out)
		buf := make([]byte, 1500)
		for i := range in {
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, src, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("answer %d of %d: %v", i+1, len(in), err)
			}
			var r dns.Msg
			if err := r.Unpack(buf[:n]); err != nil || r.Id != id {
				t.Fatalf("answer %d of %d: ID %d (%v), want %d", i+1, len(in), r.Id, err, id)
			}
			if src != asked {
				t.Fatalf("answer %d of %d came from %v, the query went to %v", i+1, len(in), src, asked)
			}
		}
	}

	answer(777, send(777, 5))
	st := f.B.UDP.Stats()
	if st.Duplicates != 4 || st.Unmatched != 0 || st.Unsolicited != 0 {
		t.Fatalf("duplicates %d, unmatched %d, unsolicited %d; want 4, 0, 0", st.Duplicates, st.Unmatched, st.Unsolicited)
	}
	testbed.Eventually(t, "five answered", func() bool { return fake.Stats().Answered == 5 })
	if bs := fake.Stats(); bs.Unanswered != 0 || fake.Outstanding() != 0 {
		t.Fatalf("unanswered %d, outstanding %d; want 0", bs.Unanswered, fake.Outstanding())
	}

	// Copies the backend does not answer are counted unanswered, one
	// by one, when the query is forgotten.
	in := send(778, 4)
	answer(778, in[:1])
	f.Advance(udpproxy.FlightAge + time.Second)
	testbed.Eventually(t, "three copies unanswered", func() bool { return fake.Stats().Unanswered == 3 })
	if n := fake.Outstanding(); n != 0 {
		t.Fatalf("%d outstanding", n)
	}
	c := debugapi.NewClient(f.DebugSocket)
	defer c.Close()
	if js, err := c.Stats(context.Background()); err != nil || js.UDP.Duplicates != 7 || js.UDP.Unmatched != 0 {
		t.Fatalf("/v1/stats udp: %+v %v", js.UDP, err)
	}
}
