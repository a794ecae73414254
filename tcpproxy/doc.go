// Package tcpproxy carries DNS over TCP between clients and backends.
//
// A [Proxy] owns the DNS TCP listener. For each accepted connection it
// finds the client's remote and backend (the same stickiness as UDP, see
// [remotes.Table.Route]), opens a new connection to the backend's socket,
// sends INBOUND_TCP with the client's address and port, and waits for
// INBOUND_TCP_OK. From then on the two connections are one verbatim byte
// pipe; DNS's two-byte length framing is the client's and the backend's
// business.
//
// Client bytes that arrive before the OK stay in the kernel's socket
// buffer until the pipe starts: nothing is read early, so nothing is lost.
// A half-close (EOF) on either side is passed on as a half-close to the
// other, so a client may send several queries, shut down its write side
// and still read every answer. An error on either side closes both, and
// so does a backend that has not finished DrainTimeout (10 s) after the
// client's half-close.
//
// If INBOUND_TCP_OK has not arrived within OKTimeout (10 s), the backend
// is faulted and the client's connection closed; any other first frame
// closes the session without faulting the backend.
//
// # Limits
//
// At most MaxConns client connections are open at once (4096) and
// MaxConnsPerIP from one address (64); more are closed at once. The
// copiers follow DNS's two-byte framing to count queries and answers,
// and a sweep on the timers checks every second for a connection past
// INBOUND_TCP_OK to close, with its limit's label:
//
//   - idle_timeout: no query outstanding, and no complete message for
//     IdleTimeout (-I, 5 s);
//   - unread_timeout: a write of answers to the client pending for
//     IdleTimeout, the client reading none of it. Such a client holds
//     its place whatever it sends (its queries are outstanding, so it is
//     never idle), and the backend stops reading its queries once their
//     answers back up;
//   - answer_timeout: a query outstanding and no answer completed for
//     AnswerTimeout (10 s) since the query (or since the last answer,
//     when several are owed): a backend that sends a length and never the
//     message, or nothing at all, would otherwise keep a patient client
//     until the lifetime;
//   - max_lifetime: any connection older than MaxLifetime (-L, 5 min),
//     before INBOUND_TCP_OK too.
//
// Each limit hit is counted once and logged at most once per 5 s. A
// failing accept (EMFILE) backs off up to 1 s instead of spinning.
//
// # Counters
//
// The proxy's plain counts (connections accepted, failed accepts) are
// declared once, in the table that [Counters] returns (proxy.go): it
// drives [Proxy.Stats], [Proxy.ResetCounters] and the metrics. The active
// connections (a gauge), the drops by reason and the limits are counted
// beside it.
//
// # Ownership and shutdown
//
// After accepting a connection the proxy owns it until both halves are
// closed. Each session is one goroutine (serve) plus one for the
// client-to-backend copy (copyToBackend); serve alone closes the
// session's sockets, once both copies have returned, and counts and logs
// the limit that ended it.
//
// Ending a session never waits on its own blocked I/O. The copier reads
// the client's socket in its raw connection's callback and writes to the
// backend from within it, so with a backend that has stopped reading
// (node-mname does when its answers back up), that write, and so the
// read, never return; closing the client's socket waits for that read.
// Everything that ends a session from outside its goroutines (the sweep,
// the INBOUND_TCP_OK and drain timers, a failed copy, Close) therefore
// only marks it and sets both sockets' deadlines in the past, which makes
// every read and write in progress return at once; serve then closes.
// Timer callbacks do nothing else, and take no lock held across I/O (see
// package timeouts).
//
// Close stops accepting, ends every session that way and waits for every
// goroutine.
//
// The copies read and write through a pooled buffer rather than splice:
// for DNS-sized messages two splices through a pipe cost more than a read
// and a write (measured with make bench), and a copier that reads in the
// raw connection's callback waits for the poller as soon as a read leaves
// room in its buffer, without a system call to see EAGAIN. An idle
// session holds no buffer.
package tcpproxy
