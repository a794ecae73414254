package udpproxy

import (
	"testing"

	"github.com/miekg/dns"
)

func TestServfail(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("down.example.", dns.TypeA)
	q.SetEdns0(1232, true)
	q.CheckingDisabled = true
	wire, _ := q.Pack()
	out := servfail(wire, nil)
	var r dns.Msg
	if err := r.Unpack(out); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	if !r.Response || r.Rcode != dns.RcodeServerFailure || r.Id != q.Id || !r.RecursionDesired || !r.CheckingDisabled ||
		len(r.Question) != 1 || r.Question[0] != q.Question[0] || len(r.Answer)+len(r.Ns)+len(r.Extra) != 0 {
		t.Fatalf("answer %v", &r)
	}
	for name, bad := range map[string][]byte{
		"short":     wire[:11],
		"response":  out,
		"truncated": wire[:15],
		"pointer":   append(append([]byte{}, wire[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),
	} {
		if got := servfail(bad, nil); got != nil {
			t.Errorf("%s: answered %x", name, got)
		}
	}
	if a := testing.AllocsPerRun(100, func() { out = servfail(wire, out) }); a != 0 {
		t.Errorf("servfail allocates %.1f", a)
	}
}

func TestServfailNameLengthLimit(t *testing.T) {
	// A name of 255 octets in wire format is the longest there is.
	query := func(labels ...int) []byte {
		q := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for _, l := range labels {
			q = append(q, byte(l))
			q = append(q, make([]byte, l)...)
		}
		return append(q, 0, 0, 1, 0, 1)
	}
	if servfail(query(63, 63, 63, 61), nil) == nil { // 64+64+64+62+1 = 255
		t.Fatal("255-octet name refused")
	}
	if servfail(query(63, 63, 63, 62), nil) != nil { // 256
		t.Fatal("256-octet name answered")
	}
}
