package udpproxy

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzServfail checks that any datagram either gets no answer or a
// well-formed SERVFAIL (and truncated answer) for the question it asked,
// and that the top talkers' question reader takes it without reading
// out of bounds, agreeing with miekg/dns where both read a name.
func FuzzServfail(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("fuzz.example.", dns.TypeTXT)
	wire, _ := q.Pack()
	f.Add(wire)
	f.Add(wire[:12])
	f.Add([]byte{})
	f.Add(append(append([]byte{}, wire[:12]...), 0xc0, 0x0c))
	f.Fuzz(func(t *testing.T, query []byte) {
		var name [maxNameLen]byte
		if n, qtype, ok := questionName(query, name[:]); ok {
			var m dns.Msg
			if m.Unpack(query) == nil && len(m.Question) > 0 && !m.Response {
				if got, want := presentName(name[:n]), dns.CanonicalName(m.Question[0].Name); qtype != m.Question[0].Qtype ||
					!strings.ContainsRune(got, '\\') && got != want {
					t.Fatalf("question %q %d, miekg/dns %q %d", got, qtype, want, m.Question[0].Qtype)
				}
			}
		}
		if tc := truncated(query, nil); tc != nil {
			var r dns.Msg
			if err := r.Unpack(tc); err != nil || !r.Truncated || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("bad truncated answer %v %v", err, &r)
			}
		}
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
