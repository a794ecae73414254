package testbed

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/tools/dnsbackend"
)

// Query sends one question to server over UDP (or TCP) from the loopback
// address from (the kernel's choice when from is invalid), and returns the
// reply and the local address and port it was sent from.
func Query(server netip.AddrPort, from netip.Addr, tcp bool, name string, qtype uint16) (*dns.Msg, netip.AddrPort, error) {
	return QueryTimeout(server, from, tcp, name, qtype, 2*time.Second)
}

// QueryTimeout is Query with a timeout of its own.
func QueryTimeout(server netip.AddrPort, from netip.Addr, tcp bool, name string, qtype uint16, timeout time.Duration) (*dns.Msg, netip.AddrPort, error) {
	var c net.Conn
	var err error
	if tcp {
		var laddr *net.TCPAddr
		if from.IsValid() {
			laddr = &net.TCPAddr{IP: from.AsSlice()}
		}
		c, err = net.DialTCP("tcp", laddr, net.TCPAddrFromAddrPort(server))
	} else {
		var laddr *net.UDPAddr
		if from.IsValid() {
			laddr = &net.UDPAddr{IP: from.AsSlice()}
		}
		c, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(server))
	}
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	c.SetDeadline(time.Now().Add(timeout))
	dc := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if err := dc.WriteMsg(m); err != nil {
		return nil, local, err
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, local, err
	}
	if r.Id != m.Id {
		return nil, local, fmt.Errorf("reply id %d for query %d", r.Id, m.Id)
	}
	return r, local, nil
}

// Who asks server the TXT question whose answer says which client address
// the backend saw and which backend answered. It checks that the address
// the backend saw is exactly the one the query was sent from.
func Who(server netip.AddrPort, from netip.Addr, tcp bool) (map[string]string, error) {
	return WhoTimeout(server, from, tcp, 2*time.Second)
}

// WhoTimeout is Who with a timeout of its own.
func WhoTimeout(server netip.AddrPort, from netip.Addr, tcp bool, timeout time.Duration) (map[string]string, error) {
	r, local, err := QueryTimeout(server, from, tcp, "who.example.", dns.TypeTXT, timeout)
	if err != nil {
		return nil, err
	}
	f, err := dnsbackend.TXTFields(r)
	if err != nil {
		return nil, err
	}
	if f["client"] != local.String() {
		return f, fmt.Errorf("backend %s saw client %s, query came from %s", f["backend"], f["client"], local)
	}
	return f, nil
}

// MustWho is Who that fails the test on error.
func MustWho(t testing.TB, server netip.AddrPort, from netip.Addr, tcp bool) map[string]string {
	t.Helper()
	f, err := Who(server, from, tcp)
	if err != nil {
		t.Fatalf("query from %v (tcp %v): %v", from, tcp, err)
	}
	return f
}

// Loopback returns 127.0.0.1 + n (n from 0): distinct client addresses on
// the loopback network.
func Loopback(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(n >> 16), byte(n >> 8), byte(1 + n)})
}
