package udpproxy

import (
	"testing"

	"github.com/miekg/dns"
)

// FuzzServfail checks that any datagram either gets no answer or a
// well-formed SERVFAIL for the question it asked.
func FuzzServfail(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("fuzz.example.", dns.TypeTXT)
	wire, _ := q.Pack()
	f.Add(wire)
	f.Add(wire[:12])
	f.Add([]byte{})
	f.Add(append(append([]byte{}, wire[:12]...), 0xc0, 0x0c))
	f.Fuzz(func(t *testing.T, query []byte) {
		out := servfail(query, nil)
		if out == nil {
			return
		}
		var r dns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatalf("SERVFAIL does not parse: %v (%x)", err, out)
		}
		if !r.Response || r.Rcode != dns.RcodeServerFailure || len(r.Answer)+len(r.Ns)+len(r.Extra) != 0 || len(r.Question) > 1 {
			t.Fatalf("bad SERVFAIL %v", &r)
		}
		if len(out) > len(query) {
			t.Fatalf("answer %d bytes longer than the query's %d", len(out), len(query))
		}
	})
}
