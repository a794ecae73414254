// Package udpproxy carries DNS over UDP between clients and backends.
//
// A [Proxy] owns the DNS UDP socket. Its reader goroutine takes up to 64
// datagrams per system call (recvmmsg); for each it finds the client's
// remote and backend ([remotes.Table.Route]), wraps the datagram in an
// INBOUND_UDP frame and queues it on the backend
// ([backend.Backend.SendUDP]); at the end of the batch it writes each
// backend's queue in one write ([backend.Backend.Flush]). The frame header
// is filled in place in the 16 bytes reserved in front of each datagram's
// buffer, so the path allocates nothing. Backends' replies come back
// through the batches of [Proxy.Replies]: each session reader sends the
// replies it decoded from one read in one sendmmsg, from the same socket.
//
// The batching is Linux's (recvmmsg, sendmmsg); bbal runs on Linux.
//
// # Drops
//
// A datagram is dropped, and counted by reason, when it is longer than
// 1500 bytes ("oversized", also logged as a warning, at most once per 5 s),
// when it is shorter than a DNS header ("runt"),
// when no backend is ok ("no_backend"), when its source is not IPv4
// ("not_ipv4"), or when the backend's queue is full ("stuck") or the
// backend went down between the choice and the send ("down"). The reader
// never waits on a backend. With [Proxy.ServfailWhenDown], a query that
// finds no backend is answered SERVFAIL (its header and question, no
// records) instead of only dropped.
//
// # Concurrency
//
// One goroutine (readLoop) reads the socket. Each reply batch belongs to
// one session reader; any number of them send concurrently. Close stops
// the reader and waits for it.
package udpproxy
