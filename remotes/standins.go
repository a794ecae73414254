package remotes

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/bbal/bbal/protocol"
)

// DefaultStandins is the default stand-in range: 240.0.0.0/4, reserved
// since RFC 1112 and never the source of a real datagram.
var DefaultStandins = netip.MustParsePrefix("240.0.0.0/4")

// StandinRange returns the stand-in range a Table configured with p
// uses: p masked, or DefaultStandins unless p is an IPv4 prefix of /30
// or shorter.
func StandinRange(p netip.Prefix) netip.Prefix {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 {
		return DefaultStandins
	}
	return p.Masked()
}

// ProbeSource returns the reserved address of the stand-in range that
// bbal's own queries (health probes) come from: its second address.
func ProbeSource(standins netip.Prefix) netip.Addr { return standins.Masked().Addr().Next() }

// standinProbes bounds the search for a free stand-in.
const standinProbes = 64

// standins allocates the stand-ins of IPv6 remotes within a range
// (first, size) and keeps the reverse map, stand-in to client, which the
// reply path reads. The reverse map has its own lock, mu: a Table calls
// give, restore and drop with its own lock held and takes mu after it
// (never the other way round); client takes mu alone. contains reads no
// state that changes, and takes no lock.
type standins struct {
	first uint32
	size  uint32

	mu     sync.RWMutex
	byWire map[uint32]netip.Addr

	refused atomic.Uint64 // IPv6 clients that could be given none
}

func newStandins(p netip.Prefix) *standins {
	return &standins{
		first:  protocol.AddrToU32(p.Addr()),
		size:   uint32(1) << (32 - p.Bits()),
		byWire: map[uint32]netip.Addr{},
	}
}

// contains reports whether ip (as the protocol carries it) is within
// the range, reserved addresses included.
func (s *standins) contains(ip uint32) bool { return ip-s.first < s.size }

// give finds r (an IPv6 remote) a free stand-in: its address's hash
// within the range, or one of the next few. The hash is fixed, so that a
// client keeps its stand-in from one run to the next (unless two clients
// contend for one), and so do the backends' logs of it. It counts a
// client that can be given none.
func (s *standins) give(r *Remote) bool {
	h := r.addr.hi*0x9e3779b97f4a7c15 ^ r.addr.lo*0xc2b2ae3d27d4eb4f
	h ^= h >> 29
	usable := uint64(s.size - 2)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range uint64(standinProbes) {
		w := s.first + 2 + uint32((h+i)%usable)
		if _, taken := s.byWire[w]; !taken {
			s.byWire[w] = r.addr.Addr()
			r.standin = w
			return true
		}
	}
	s.refused.Add(1)
	return false
}

// restore gives r (an IPv6 remote) the stand-in it had, if that is
// within the range and free, else a new one.
func (s *standins) restore(r *Remote, had netip.Addr) bool {
	if had.Is4() {
		w := protocol.AddrToU32(had)
		s.mu.Lock()
		_, taken := s.byWire[w]
		if free := w-s.first-2 < s.size-2 && !taken; free {
			s.byWire[w] = r.addr.Addr()
			r.standin = w
		}
		s.mu.Unlock()
		if r.standin != 0 {
			return true
		}
	}
	return s.give(r)
}

// drop frees r's stand-in, if it has one.
func (s *standins) drop(r *Remote) {
	if r.standin == 0 {
		return
	}
	s.mu.Lock()
	delete(s.byWire, r.standin)
	s.mu.Unlock()
	r.standin = 0
}

// client returns the IPv6 client whose stand-in w is; false for a
// stand-in no client has.
func (s *standins) client(w uint32) (netip.Addr, bool) {
	s.mu.RLock()
	a, ok := s.byWire[w]
	s.mu.RUnlock()
	return a, ok
}
