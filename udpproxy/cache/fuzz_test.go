package cache

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswer checks that any bytes, taken as a backend's answer, are
// read without panicking or reading out of bounds, and that one the
// cache keeps is served back as it was given, but for the client's ID
// and the TTLs, which are never more than they were. The query is the
// answer's own question, when it has one.
func FuzzAnswer(f *testing.F) {
	c := New(Config{Entries: 64, Stale: 60})
	q := new(dns.Msg)
	q.SetQuestion("fuzz.example.", dns.TypeA)
	a := new(dns.Msg)
	a.SetReply(q)
	a.Compress = true
	a.Answer = append(a.Answer, &dns.A{Hdr: dns.RR_Header{Name: "fuzz.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{10, 0, 0, 1}})
	wire, _ := a.Pack()
	f.Add(wire)
	a.Rcode = dns.RcodeNameError
	a.Answer = nil
	a.Ns = append(a.Ns, &dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
		Ns: "ns.example.", Mbox: "a.example.", Serial: 1, Refresh: 1, Retry: 1, Expire: 1, Minttl: 5})
	a.SetEdns0(1232, true)
	wire, _ = a.Pack()
	f.Add(wire)
	f.Add(wire[:20])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		var offs [maxRecords]uint16
		parseAnswer(msg, offs[:])
		qend, ok := questionEnd(msg)
		if !ok {
			return
		}
		// The query: the answer's header and question, QR clear.
		query := bytes.Clone(msg[:qend])
		query[2] &^= 0x80
		binary.BigEndian.PutUint16(query[6:], 0)
		binary.BigEndian.PutUint16(query[8:], 0)
		binary.BigEndian.PutUint16(query[10:], 0)
		k, ok := c.KeyOf(query)
		if !ok {
			return
		}
		c.Flush()
		if !c.Put(&k, p1, msg, 0) {
			return
		}
		buf := make([]byte, MaxAnswer)
		copy(buf, query)
		buf[0], buf[1] = 0xab, 0xcd
		k.MaxLen = MaxAnswer
		n, r := c.Get(buf, &k, p1, 1e9)
		if r != Hit {
			return // expired at 1 s: a TTL of 1
		}
		got := buf[:n]
		if len(got) != len(msg) || got[0] != 0xab || got[1] != 0xcd || !bytes.Equal(got[2:qend], msg[2:qend]) {
			t.Fatalf("served %x for %x", got, msg)
		}
		a, _ := parseAnswer(msg, offs[:])
		same := bytes.Clone(got)
		same[0], same[1] = msg[0], msg[1]
		for _, o := range a.ttls {
			if binary.BigEndian.Uint32(got[o:]) >= binary.BigEndian.Uint32(msg[o:]) {
				t.Fatalf("TTL at %d not lessened: %x for %x", o, got, msg)
			}
			copy(same[o:o+4], msg[o:o+4])
		}
		if !bytes.Equal(same, msg) {
			t.Fatalf("served %x for %x: more than the ID and TTLs differ", got, msg)
		}
	})
}
