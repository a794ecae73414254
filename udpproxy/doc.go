// Package udpproxy carries DNS over UDP between clients and backends.
// It owns the DNS UDP sockets, the queries in flight and what becomes of
// them: their answers' way back, the counting of the backends' load
// (placement's figures), and the queries of a backend that went down.
//
// A [Proxy] owns the DNS UDP sockets, one per listen address (IPv4 or
// IPv6). Each socket's reader goroutine takes up to 64 datagrams per
// system call (recvmmsg); for each it finds the client's remote and
// backend ([remotes.Table.Route]; an IPv6 client is given a stand-in IPv4
// address, which the frame carries), records the query as in flight,
// wraps the datagram in an INBOUND_UDP frame and queues it on the backend
// ([backend.Backend.SendUDP]); at the end of the batch it writes each
// backend's queue in one write ([backend.Backend.Flush]). The frame
// header is filled in place in the 16 bytes reserved in front of each
// datagram's buffer, so the path allocates nothing. Backends' replies
// come back through the batches of [Proxy.Replies]: each session reader
// sends the replies it decoded from one read with one sendmmsg per
// socket.
//
// The batching is Linux's (recvmmsg, sendmmsg); bbal runs on Linux.
//
// # Queries in flight
//
// Every query sent on is kept (flights.go) until its answer comes or
// FlightAge passes, keyed by client address (or stand-in), port and DNS
// ID; a retransmit with the same key is a copy on the same record,
// counted as a duplicate. The answer is sent from the socket, and with
// a wildcard socket from the address (IP_PKTINFO, IPV6_PKTINFO), that
// the query (its first copy) came to; the backends' load (placement's
// figures, [backend.Backend.Load]: queries sent, answered, forgotten,
// evicted and moved, and the answer latency) is counted from the
// records, in one place (load.go); and when a backend dies, the
// proxy's resendLoop, consuming the backend's Down event
// ([backend.Set.Downs]), sends its unanswered queries to the backends
// their clients use now.
//
// # Queries of death
//
// One client datagram takes down at most one backend. Of a dead
// backend's unanswered queries, the suspect is not sent on ("withheld"):
// the query whose answer faulted it (an OUTBOUND_UDP over 1500 bytes,
// named by [backend.Fault]), or else the first one it was given of
// those it had not answered: a backend that reads its queries in order
// and dies of one has answered those before it, and those after it came
// while it was dying. A backend faulted for a heartbeat, probe or TCP
// OK timeout is wedged or far behind, may not have read its last
// queries, and none of them is sent on. Every other query is sent on
// once. A query seen at a
// second death (sent on once already, or withheld and asked again by
// its client: same client, port, ID and bytes) is quarantined: dropped
// on arrival ("quarantined") for [QuarantineTime] (30 s), and logged
// with its client and question at most once per 5 s. The quarantine
// table (quarantine.go) has 64 entries; the packet path reads one word
// of its 1024-bit filter, and looks further only when its key's bit is
// set.
//
// An answer that matches no query on record (a late one) leaves from
// the first socket of the client's family if the client is known to the
// remotes table ([remotes.Table.Known]; an IPv6 client by its stand-in,
// with prefix pinning any address of a network that asked), and is
// counted unmatched. Any other is dropped, counted unsolicited and
// logged at most once per 5 s: a backend's flood to an address that
// never asked must not leave bbal's DNS port. No lock is held on the
// reply path when the table is asked.
//
// # Stalls, second answers
//
// Every [placement.StallCheckInterval] a timer posts to resendLoop, which
// runs the stall check ([placement.Stalls]; stall.go) and sends the
// unanswered queries of each backend newly stalled, and avoided, to the
// backends their clients use now, as for a backend that died of a query
// (the suspect withheld, none for a backend stalled again after a trial).
// A query so sent is owed two answers: the first goes to its client, and
// the other backend is recorded (owed.go, bounded) so that its answer is
// dropped and counted redundant.
//
// # Rate limits and top talkers
//
// With [Proxy.LimitRate] (-q), each client's queries are admitted by the
// rate in its remote's record ([remotes.Remote.Admit]); one over it is
// dropped ("ratelimited"), and every Slip-th answered truncated by bbal
// itself (ratelimit.go). One datagram in [SampleEvery], at random, is
// sampled into bounded summaries of the busiest clients and questions
// ([Proxy.Top]; top.go).
//
// # Answer cache
//
// With [Proxy.SetCache] (-c: package
// [github.com/bbal/bbal/udpproxy/cache]), the reader looks each query up
// in its backend's partition of the cache (cache.go) before it is sent
// on: a hit is written over the query in the reader's own buffer and
// sent, with the batch's other hits, in one sendmmsg at the end of the
// batch, never touching the backend. When the client's backend cannot
// take the query (none is available, it is stalled, or its queue is
// full), an entry expired within the stale limit is served instead
// (serve-stale), from the backend's partition, or without one the
// client's primary's. A query that misses carries its key in its record
// in flight, and its answer is offered to the cache from the reply
// path. A timer has a goroutine of its own (cacheLoop) sweep the cache
// every CacheSweepInterval of entries past their stale limit and of
// backends' old epochs ([backend.Backend.Epoch]).
//
// # Drops
//
// A datagram is dropped, and counted by reason, when it is longer than
// 1500 bytes ("oversized", also logged as a warning, at most once per 5 s),
// when it is shorter than a DNS header ("runt"), when no backend is ok
// ("no_backend"), when its source address is unusable ("bad_source"), is
// an IPv4 address within the stand-in range ("standin_range") or an IPv6
// client that could be given no stand-in ("no_standin"), or when the
// backend's queue is full ("stuck") or the backend went down between the
// choice and the send ("down"), when it is quarantined ("quarantined",
// above), or when its client is over its rate limit ("ratelimited"). The reader never waits on a backend. With
// [Proxy.ServfailWhenDown], a query that finds no backend is answered
// SERVFAIL (its header and question, no records) instead of only dropped.
//
// # Tap
//
// With [Proxy.SetTap] (-D: package
// [github.com/bbal/bbal/udpproxy/dnstap]), the proxy tells a [Tap] of
// each query it takes (sent to a backend, or answered by bbal itself)
// and of each response it sends, with the client's own address (not its
// stand-in) and the address the query came to. Without one, the packet
// path pays a nil check.
//
// # Counters
//
// The proxy's plain counts (datagrams and bytes in and out, send errors,
// SERVFAILs, unmatched, unsolicited and lost replies, duplicates, queries
// resent, unresent, withheld and quarantined) are declared once, in the
// table that [Counters] returns (proxy.go): it drives [Proxy.Stats],
// [Proxy.ResetCounters] and the metrics, and a new count is one line of
// it. The drops are counted by reason beside it. The packet path updates
// the atomics directly.
//
// # Concurrency
//
// The proxy is built after the remotes table and the backends it routes
// to ([New] is handed both) and calls nothing built after it; the
// backends, built before it, reach it only through the reply sink they
// are handed at their Start ([Proxy.Replies]) and the Down events it
// consumes.
//
// One goroutine (readLoop) reads each socket, one (resendLoop)
// consumes the backends' Down events, and with a cache one (cacheLoop)
// sweeps it. Each reply batch belongs to one
// session reader; any number of them send concurrently. Close stops the
// readers and resendLoop and waits for them.
package udpproxy
