package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// newWildcardBed is bbal bound to 0.0.0.0 and :: on one port, in front
// of two node-mname processes.
func newWildcardBed(t *testing.T) *servertest.Harness {
	t.Helper()
	h := servertest.NewConfig(t, func(c *server.Config) {
		c.Listen = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	}, nil)
	testbed.StartMname(t, h.Sock("5301"), "n1")
	testbed.StartMname(t, h.Sock("5302"), "n2")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	h.Established(0, 5302)
	return h
}

// at is the balancer's port on address a.
func at(h *servertest.Harness, a string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(a), h.Addr.Port())
}

func TestIPv6ClientsGetStandinsAndTheirAnswers(t *testing.T) {
	h := newWildcardBed(t)
	if got := h.B.Addrs(); len(got) != 2 || !got[1].Addr().Is6() || got[0].Port() != got[1].Port() {
		t.Fatalf("listening on %v, want 0.0.0.0 and :: on one port", got)
	}
	client := netip.MustParseAddr("::1")
	for _, tcp := range []bool{false, true} {
		r, local, err := testbed.Query(at(h, "::1"), client, tcp, "who.example.", dns.TypeTXT)
		if err != nil {
			t.Fatalf("query over IPv6 (tcp %v): %v", tcp, err)
		}
		f, err := dnsbackend.TXTFields(r)
		if err != nil {
			t.Fatal(err)
		}
		// node-mname saw the stand-in, with the client's own port.
		seen := netip.MustParseAddrPort(f["client"])
		if !remotes.DefaultStandins.Contains(seen.Addr()) || seen.Port() != local.Port() {
			t.Fatalf("backend saw %v for client %v, want a stand-in in %v with its port", seen, local, remotes.DefaultStandins)
		}
		in, ok := h.B.Table.Lookup(client)
		if !ok || in.Standin != seen.Addr() {
			t.Fatalf("remote %v: %+v, want stand-in %v", client, in, seen.Addr())
		}
		// The same backend over UDP and TCP: one remote, one stand-in.
		if in.Primary == 0 || f["backend"] == "" {
			t.Fatalf("remote %+v answered by %s", in, f["backend"])
		}
	}
	// IPv4 clients on the same port are unaffected.
	if got := testbed.MustWho(t, at(h, "127.0.0.1"), testbed.Loopback(5), false); got["client"] == "" {
		t.Fatal("no answer over IPv4")
	}
	// balstat's source shows the real address and its stand-in.
	c := debugapi.NewClient(h.DebugSocket)
	defer c.Close()
	var rows []debugapi.Remote
	if _, err := c.Remotes(context.Background(), debugapi.RemoteFilter{IP: "::1"}, func(_ time.Time, r debugapi.Remote) error {
		rows = append(rows, r)
		return nil
	}); err != nil || len(rows) != 1 || rows[0].IP != "::1" || !strings.HasPrefix(rows[0].Standin, "24") {
		t.Fatalf("remotes for ::1: %+v %v", rows, err)
	}
}

func TestRepliesLeaveFromTheAddressTheQueryCameTo(t *testing.T) {
	h := newWildcardBed(t)
	// An unconnected socket, so that a reply from any source address
	// is received and its source seen.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for i, dst := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.1"} {
		q := new(dns.Msg)
		q.SetQuestion("who.example.", dns.TypeTXT)
		q.Id = uint16(100 + i)
		wire, _ := q.Pack()
		if _, err := pc.WriteToUDPAddrPort(wire, at(h, dst)); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1500)
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no reply to the query sent to %s: %v", dst, err)
		}
		var r dns.Msg
		if err := r.Unpack(buf[:n]); err != nil || r.Id != q.Id {
			t.Fatalf("reply %v (%v), want ID %d", &r, err, q.Id)
		}
		if from != at(h, dst) {
			t.Fatalf("reply to the query sent to %s came from %v", dst, from)
		}
	}
	if st := h.B.UDP.Stats(); st.Unmatched != 0 {
		t.Fatalf("%d replies matched no query", st.Unmatched)
	}
}

func TestServfailLeavesFromTheQueryAddressToo(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) {
		c.Listen = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
		c.ServfailWhenDown = true
	}, nil)
	// No backend: every query is answered SERVFAIL by bbal itself.
	r, _, err := testbed.Query(at(h, "::1"), netip.IPv6Loopback(), false, "who.example.", dns.TypeTXT)
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("over IPv6: %v, %v", r, err)
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	q := new(dns.Msg)
	q.SetQuestion("who.example.", dns.TypeTXT)
	wire, _ := q.Pack()
	pc.WriteToUDPAddrPort(wire, at(h, "127.0.0.3"))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	var resp dns.Msg
	if err != nil || resp.Unpack(buf[:n]) != nil || resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("over IPv4: %v %v", &resp, err)
	}
	if from != at(h, "127.0.0.3") {
		t.Fatalf("SERVFAIL for a query to 127.0.0.3 came from %v", from)
	}
	if st := h.B.UDP.Stats(); st.Servfails != 2 {
		t.Fatalf("%d SERVFAILs counted", st.Servfails)
	}
}
