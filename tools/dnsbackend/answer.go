// Package dnsbackend is a small DNS server that speaks the backend half of
// the balancer protocol (as node-mname's listenBalancer does) and plain
// DNS over UDP and TCP, with one answer code path for all three. The demo
// and the benchmarks run it; tests use it as a well-behaved backend.
//
// Its answers say who asked and who answered, which is what the demo and
// the tests want to see:
//
//   - TXT: "client=ADDR:PORT", "backend=NAME", "proto=udp|tcp";
//   - A: 192.0.2.1;
//   - anything else: an empty NOERROR answer.
//
// A message that does not parse as a DNS query gets no answer.
//
// [Echo] is the benchmarks' answer instead: the query itself with the
// response bit set, which costs next to nothing, so that what a benchmark
// measures is the transport.
package dnsbackend

import (
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// AnswerFunc returns the response to query from client, or nil for no
// answer. The response may be built in buf (scratch space of the
// caller's), or in query itself.
type AnswerFunc func(query []byte, client netip.AddrPort, tcp bool, buf []byte) []byte

// Echo answers a query with itself, QR set and RCODE NOERROR; anything
// shorter than a DNS header gets no answer.
func Echo(query []byte, _ netip.AddrPort, _ bool, _ []byte) []byte {
	if len(query) < 12 || query[2]&0x80 != 0 {
		return nil
	}
	query[2] |= 0x80
	query[3] &^= 0x0f
	return query
}

// Answerer builds answers for one backend name.
type Answerer struct {
	Name string
}

// Answer returns the response to query from client, or nil for no
// answer. buf is scratch space the response may be packed into.
func (a *Answerer) Answer(query []byte, client netip.AddrPort, tcp bool, buf []byte) []byte {
	var q dns.Msg
	if err := q.Unpack(query); err != nil || q.Response || len(q.Question) != 1 {
		return nil
	}
	var m dns.Msg
	m.SetReply(&q)
	m.Authoritative = true
	qs := q.Question[0]
	hdr := dns.RR_Header{Name: qs.Name, Rrtype: qs.Qtype, Class: dns.ClassINET, Ttl: 0}
	switch qs.Qtype {
	case dns.TypeTXT:
		proto := "udp"
		if tcp {
			proto = "tcp"
		}
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{
			"client=" + client.String(),
			"backend=" + a.Name,
			"proto=" + proto,
		}})
	case dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: []byte{192, 0, 2, 1}})
	}
	out, err := m.PackBuffer(buf)
	if err != nil {
		return nil
	}
	return out
}

// TXTFields returns the TXT strings of a response, for clients of the
// demo answers.
func TXTFields(m *dns.Msg) (map[string]string, error) {
	out := map[string]string{}
	for _, rr := range m.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		for _, s := range txt.Txt {
			for i := range len(s) {
				if s[i] == '=' {
					out[s[:i]] = s[i+1:]
					break
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no TXT answer in %v", m)
	}
	return out, nil
}
