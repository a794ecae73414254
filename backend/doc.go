// Package backend maintains the balancer's backends: the DNS server
// processes listening on the UNIX sockets found in the socket directory,
// each reached through one standing session that carries UDP traffic and
// heartbeats. The frames are described in package
// [github.com/bbal/bbal/protocol].
//
// It owns discovery, the sessions, the outgoing queues and the probes,
// and exposes each backend's state (ok, admin setting, removed, the
// counters) for the others to read. Which backend a client is given is
// not its business but package [github.com/bbal/bbal/backend/placement]'s;
// which backend each client has is package remotes'; the queries in
// flight are the UDP proxy's.
//
// # Discovery and identity
//
// A [Set] scans the directory at [Set.Start], whenever the directory's
// inotify watch reports a change (WatchSettle, 50 ms, after it: see
// [DefaultWatchSettle]), and every ScanInterval (5 s) whatever the watch
// says. Only sockets are backends: what each entry is comes from the
// directory listing, and a socket or symbolic link is looked at with
// stat (links followed). An entry that is no socket (a file, directory,
// FIFO, dangling link) is noted once at debug level and looked at again
// only when it changes; so is a second name for a socket already a
// backend's (the same device and inode: a hard or symbolic link), names
// that are not links coming first; a socket path too long for sun_path
// (107 bytes) is logged once. The notes are dropped with their entries.
// A new socket becomes a [Backend] and is connected at once. One whose
// socket is removed is marked removed, and is reconnected when a later
// scan finds the path again.
//
// MaxBackends (1000) counts the backends whose socket is listed: a
// socket past it is skipped, logged at most once per 5 s, and tried
// again at the next scan. A backend removed for ForgetAfter
// ([DefaultForgetAfter], a minute) is forgotten at a scan: its goroutine
// ends, and its ID is free again. Within the minute a returning socket
// gets its backend back, ID and settings included. A backend is not
// forgotten while it is some remote's primary (Links.Primaries asks the
// remotes table, outside the Set's locks; the remote's next query moves
// it), nor while the operator has changed its admin setting or weight.
// When more backends are removed than MaxBackends, the ones removed
// longest are forgotten at once, so that the table stays within twice
// MaxBackends however fast entries come and go.
//
// A socket is found removed when a connect attempt fails with ENOENT, or
// when a scan no longer lists a faulted backend's socket (its reconnect
// would fail so). A backend whose session is up keeps it when its socket
// is unlinked: the session still works, and the removal is found when it
// ends.
//
// The watch (IN_CREATE, IN_MOVED_TO, IN_ATTRIB, IN_DELETE, IN_MOVED_FROM,
// and the directory's own deletion or move) only ever triggers a scan,
// so a burst of changes makes a scan or two, and a queue overflow
// (IN_Q_OVERFLOW) one more. When the watch cannot be set up (no
// directory yet, the watch limit reached) it is logged once and the
// periodic scan alone finds changes; when the directory is deleted or
// moved the watch is dropped. Each periodic scan tries the watch again,
// and compares the device and inode of the directory at Config.Dir with
// the watched one's: a directory deleted while sockets are still bound in
// it lives on, and sends no IN_DELETE_SELF, so a new one at the same path
// would go unwatched. On a mismatch the watch is moved. [Set.Discovery]
// tells whether it is in place and counts its events, the entries
// ignored at the last scan and the backends forgotten.
//
// A backend's ID is its socket's name when that is a number from 5300 to
// 5399, written plainly, and the ID is free (Binder names sockets after
// each instance's DNS port, so logs read naturally); otherwise it is the
// lowest free ID outside 5300-5399, so that no other entry takes one of
// Binder's. ID 0 means "no backend".
//
// # State machine
//
// Each Backend has one goroutine (run) that alone changes its state:
//
//	connecting --SERVER_HELLO--> ok
//	connecting --connect timeout (30 s), EOF, error, bad frame--> faulted
//	ok --heartbeat timeout (15 s), EOF, error, bad frame, TCP OK timeout--> faulted
//	ok --no answer to DNS probes (15 s; only with Config.Probe)--> faulted
//	faulted --reconnect timer--> connecting
//	connecting --connect fails with ENOENT--> removed
//	faulted --scan finds the socket gone--> removed
//	removed --scan finds the path again--> connecting
//	removed --ForgetAfter, no remote's primary--> forgotten (run ends)
//	any --Set.Close--> stopped
//
// A backend is used for traffic only while ok. Entering faulted closes the
// session, discards what was queued for it (counted) and arms the
// reconnect timer. The reconnect delay starts at 1 s, grows by 2 s per
// failed attempt to at most 32 s, and returns to 1 s on SERVER_HELLO; the
// first attempt for a newly found backend is immediate.
//
// A backend's first connect attempt, and one in each ReconnectMax (32 s)
// after it, log their records (connecting, failed to connect, faults,
// the session's end) at their levels, the failure with the number of
// attempts held back; the other attempts' records go to debug level, so
// that a stale socket logs its failure when it starts and then about once
// per back-off cap. A session up for ReconnectMax logs its end in any
// case. A connect refused with EACCES says so, with the socket's owner,
// group and mode and the process's user and groups. The Set's own
// records about backends found, removed and forgotten, and its notes,
// are limited to 100 per 5 s each.
//
// While ok, a CLIENT_HEARTBEAT is sent 5 s after SERVER_HELLO and 5 s
// after each reply; a reply must come within 15 s.
//
// Protocol errors fault the backend, and are logged with the reason: a
// frame other than SERVER_HELLO first, a second SERVER_HELLO, a
// SERVER_HEARTBEAT with none outstanding, a frame type a backend may not
// send, an OUTBOUND_UDP with more than 1500 bytes of data.
//
// # Health checks by DNS
//
// Heartbeats show that a backend's session is served, not that its DNS
// handler answers. With Config.Probe set, each ok backend is also sent
// that query every ProbeInterval (5 s; the first one 5 s after
// SERVER_HELLO) in an INBOUND_UDP frame from ProbeSource, an address
// reserved for the purpose, with a new DNS ID and source port each time.
// The session's reader takes OUTBOUND_UDP frames addressed to
// ProbeSource off the reply path (a single compare when probes are off):
// they never reach a client, and are not counted as OUTBOUND_UDP. It
// posts each DNS response's ID and receive time to run, on a channel of
// their own so that a backend sending many cannot crowd out the timers'
// events, and run matches it: a response with a waiting probe's ID
// answers it, whatever its RCODE. If no probe has been answered for
// ProbeTimeout (15 s) since the backend became ok or since the last
// answer, the backend is faulted with reason probe_timeout, and
// reconnected with the usual back-off. Probes still waiting when the
// session ends have failed, even if their answer was on its way.
//
// # Placement and load
//
// Which backend a remote is given is package placement's: it reads the
// Set's list ([Set.All], [Set.Get]) and each backend's state
// ([Backend.OK], [Backend.Eligible]); the remotes table reads whether a
// remote's primary still serves it ([Set.Status]). Each backend carries placement's record of it
// ([Backend.Load]: weight, slowness, the load of its queries), which the
// UDP proxy counts and the Set only shows ([Backend.Stats]) and keeps
// across a restart (the weight).
//
// # Wiring
//
// The Set is built first, and calls nothing built after it until
// [Set.Start], which is handed the [Links]: the UDP proxy's reply sink
// and the remotes table's counts. A backend that stops being ok does not
// call up into the data path: it queues a [Down] event ([Set.Downs]),
// which the UDP proxy's goroutine consumes to send the backend's
// unanswered queries elsewhere; its [Fault] says why, and for an
// oversized OUTBOUND_UDP names the answer's client, port and DNS ID.
//
// # Restarts
//
// A new process taking over from an old one ([Set.RestoreSaved], from
// the old one's [Set.Save]) recreates the old one's backends with their
// IDs, admin settings and weights before it scans, so that IDs and the
// remotes' assignments carry over; [Set.WaitUp], woken by the backends'
// state changes, waits until those that were up are up again.
//
// # Concurrency
//
// The timers live in a [timeouts.Set]; their callbacks, the session's
// reader and writer goroutines, the directory scan and the TCP proxies
// talk to run only by posting events, which never blocks them. An event
// from a session carries its generation so that one from a session
// already replaced is ignored.
//
// The Set has two goroutines of its own: scanLoop, which runs every scan
// after Start's, and readEvents, which reads the inotify instance through
// the runtime poller and asks scanLoop for a scan. [Set.Close] closes the
// instance and waits for both.
//
// The packet path reads [Backend.OK] and the Set's backend list through
// atomics, and queues frames with [Backend.SendUDP]. The session's reader
// sends OUTBOUND_UDP data straight to the client through Links.Replies.
//
// # Backpressure
//
// Each backend has one outgoing queue, bounded in bytes (QueueBytes, 256
// KiB) and in frames (QueueFrames, 4096), counting the batch being
// written. The UDP reader writes what it queued at the end of each batch
// of datagrams without blocking ([Backend.Flush]); the session's writer
// goroutine takes over when the socket is full. When a backend stops
// reading, the queue fills and further datagrams for it are dropped and
// counted as stuck; a query that has waited longer than QueueAge (1 s,
// about as long as a client waits) is dropped before it is written and
// counted as expired. Memory stays flat and the UDP reader never waits on
// a backend.
//
// # Counters
//
// Every backend counts INBOUND_UDP frames and bytes queued, OUTBOUND_UDP
// frames and bytes received, replies that could not be sent, stuck, down
// and expired drops, frames discarded by a fault, TCP proxy sessions (total,
// active, failed), connect attempts and errors, faults by [Reason], the
// last heartbeat round trip, and DNS probes sent, answered and failed with
// the last probe's round trip ([ProbeStats]); [Backend.Stats] returns a
// snapshot. The plain counts are declared once, in the table that
// [Counters] returns (stats.go, a [counter.Table]): it drives Stats, the
// reset and the metrics, and a new count is one line of it. The [Set] counts what
// discovery sees ([Set.Discovery]).
// [Set.ResetCounters] zeroes every counter the Set owns, its backends'
// included; the gauges (sessions active, queue, round trips) stay.
package backend
