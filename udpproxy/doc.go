// Package udpproxy carries DNS over UDP between clients and backends.
//
// A [Proxy] owns the DNS UDP socket. Its reader goroutine takes each
// datagram, finds the client's remote and backend ([remotes.Table.Route]),
// wraps the datagram in an INBOUND_UDP frame and queues it on the backend
// ([backend.Backend.SendUDP]). The frame header is filled in place in the
// 16 bytes reserved in front of the datagram in the read buffer, so the
// path allocates nothing. Backends' replies come back through
// [Proxy.Reply], which the backend sessions call to send OUTBOUND_UDP data
// from the same socket.
//
// # Drops
//
// A datagram is dropped, and counted by reason, when it is longer than
// 1500 bytes ("oversized", also logged as a warning, at most once per 5 s),
// when it is shorter than a DNS header ("runt"),
// when no backend is ok ("no_backend"), when its source is not IPv4
// ("not_ipv4"), or when the backend's queue is full ("stuck") or the
// backend went down between the choice and the send ("down"). The reader
// never waits on a backend.
//
// # Concurrency
//
// One goroutine (readLoop) reads the socket; Reply is safe for concurrent
// use by any number of backend sessions. Close stops the reader and waits
// for it.
package udpproxy
