package server

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/remotes"
)

// ProbeSource is the client address of the DNS health checks (-H) with
// the default stand-in range: the backends see each probe come from it,
// and bbal keeps their answers to it. It is in 240.0.0.0/4, reserved,
// which no real client has. With another range (-6), it is that range's
// second address (remotes.ProbeSource).
var ProbeSource = remotes.ProbeSource(remotes.StandinRange(netip.Prefix{}))

// Probe is the question of the DNS health checks.
type Probe struct {
	Name string // fully qualified; no probes when empty
	Type uint16 // a dns.Type
}

// ParseProbe parses -H's NAME or NAME/TYPE (type A when none is given),
// e.g. example.com or example.com/SOA.
func ParseProbe(s string) (Probe, error) {
	name, typ, hasType := strings.Cut(s, "/")
	if _, ok := dns.IsDomainName(name); !ok || name == "" {
		return Probe{}, fmt.Errorf("invalid name %q (want a domain name, e.g. example.com)", name)
	}
	p := Probe{Name: dns.Fqdn(name), Type: dns.TypeA}
	if hasType {
		t, ok := dns.StringToType[strings.ToUpper(typ)]
		switch {
		case !ok:
			return Probe{}, fmt.Errorf("invalid type %q (want a query type, e.g. A or SOA)", typ)
		case t == dns.TypeOPT || t == dns.TypeAXFR || t == dns.TypeIXFR:
			return Probe{}, fmt.Errorf("type %s cannot be asked in a UDP query", typ)
		}
		p.Type = t
	}
	if _, err := p.Query(); err != nil {
		return Probe{}, err
	}
	return p, nil
}

func (p Probe) String() string { return p.Name + "/" + dns.TypeToString[p.Type] }

// Query returns the probe's query message (class IN, no recursion
// desired) in wire format, with ID 0: each probe gets its own.
func (p Probe) Query() ([]byte, error) {
	m := new(dns.Msg)
	m.SetQuestion(p.Name, p.Type)
	m.Id, m.RecursionDesired = 0, false
	wire, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", p, err)
	}
	return wire, nil
}
