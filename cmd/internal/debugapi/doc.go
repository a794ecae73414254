// Package debugapi is bbal's debug socket: an HTTP/1.1 API with JSON
// bodies on a UNIX socket, which balstat reads and operators can script
// with curl:
//
//	curl --unix-socket /var/run/bbal.sock http://bbal/v1/backends
//
// # Endpoints
//
//	GET  /v1/backends                  every backend, its state and counters
//	GET  /v1/backends/{id}             one backend
//	POST /v1/backends/{id}/disable     no new remotes; its remotes go to backups until enabled
//	POST /v1/backends/{id}/drain       no new remotes; its remotes stay until they expire
//	POST /v1/backends/{id}/enable      back to normal
//	GET  /v1/remotes[?backend=ID][&ip=ADDR]   the client table, streamed in address order
//	GET  /v1/timeouts                  the scheduled timers, in due order
//	GET  /v1/stats                     process-wide counters
//	POST /v1/counters/reset            every counter back to zero
//	GET  /metrics                      Prometheus text format
//	GET  /debug/pprof/...              the Go profiler (net/http/pprof)
//
// Errors are a JSON object {"error": "..."} with a 4xx status. Control
// actions are logged with the peer's uid and pid (SO_PEERCRED).
//
// # The socket
//
// [Listen] creates the socket with mode 0600 (its owner and root may use
// it). A stale socket left by a dead bbal is replaced; one that a live
// process answers on is refused with [ErrInUse]. The socket is removed
// when the listener is closed.
//
// # Metrics
//
// The metrics are read from the balancer's counters at scrape time
// (metrics.go). The plain counts of the backends and of the two proxies
// come from their packages' tables ([backend.Counters],
// [udpproxy.Counters], [tcpproxy.Counters]), which also drive their Stats
// and their reset; the other metrics are declared in metrics.go. POST
// /v1/counters/reset calls one ResetCounters per package. A test checks
// that every number of the JSON of /v1/stats and /v1/backends has a
// metric of the same value, and that the reset zeroes every counter.
//
// # Hostile clients
//
// The server runs apart from the data path: handlers read counters
// through atomics and take the remotes table's lock for at most a chunk
// of remotes at a time. [DefaultLimits] apply. At most 16 connections are
// open at once, but every connection offered is accepted at once, so the
// listen backlog never fills: at the cap, a new connection evicts the
// oldest idle one (no request being read or served, no bytes of one
// waiting), and when all 16 are in the middle of a request the new one is
// refused. Either is counted (bbal_debug_connections_evicted_total,
// bbal_debug_connections_refused_total) and logged at most once per
// 10 s, so a crowd of idle clients cannot lock balstat out. Requests must
// send their headers within 5 s, bodies are refused, and each write of a
// response must complete within 10 s, so a client that never reads
// cannot hold a connection, or memory, for long. The remotes list is
// streamed, so a million remotes never make one buffer. [Client] tries a
// connection again for up to 10 s while the backlog is full (EAGAIN).
//
// # Names
//
// A backend's path is bytes, not necessarily UTF-8 or printable: the JSON
// and the metrics' path label show it escaped by [backend.EscapePath], as Go's %q
// writes it without the quotes, which strconv.Unquote reverses.
package debugapi
