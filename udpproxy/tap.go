package udpproxy

import "net/netip"

// A Tap is told of the client queries the proxy takes and the responses
// it sends, for a copy to a log such as dnstap ([Proxy.SetTap]). Both
// are called on the packet path, from any number of goroutines at once:
// they must not block or allocate, and must not keep msg past the call.
//
// client is the client's own address (an IPv6 client's, not its
// stand-in) and port; local the address and port the query came to,
// which its answer leaves from; at the time in Unix nanoseconds, by the
// proxy's clock.
type Tap interface {
	// Query is a query from client to local that the proxy took: sent
	// to a backend, or answered by bbal itself.
	Query(client, local netip.AddrPort, msg []byte, at int64)
	// Response is an answer sent to client from local; self says that
	// bbal made it (a SERVFAIL of -F, a rate limiter's slip) rather
	// than a backend.
	Response(client, local netip.AddrPort, msg []byte, at int64, self bool)
}

// SetTap has the proxy tell t of its queries and responses. Call it
// before Start. Without it (nil), the packet path pays one nil check.
//
// Queries are told once they are taken: sent to a backend (a
// retransmit too), or answered by bbal itself (a SERVFAIL); those
// dropped (counted by reason in Stats) are not. Every response sent to a
// client is told, a late one too.
func (p *Proxy) SetTap(t Tap) { p.tap = t }

// local is the address and port a query came to on l, as o says: its
// destination on a wildcard socket, else the socket's own address.
func (l *listener) local(o *origin) netip.AddrPort {
	if l.pktinfo && o != nil && o.local != ([16]byte{}) {
		return netip.AddrPortFrom(netip.AddrFrom16(o.local).Unmap(), l.addr.Port())
	}
	return netip.AddrPortFrom(l.addr.Addr().Unmap(), l.addr.Port())
}
