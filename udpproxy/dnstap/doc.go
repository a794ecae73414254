// Package dnstap streams the UDP proxy's client queries and responses
// to a dnstap collector (-D): one message per query and one per
// response, of types CLIENT_QUERY and CLIENT_RESPONSE (bbal faces
// clients, as a resolver's client side does), with the socket family,
// protocol UDP, the client's address and port (query_address,
// query_port), the address and port it asked (response_address,
// response_port), the time and the DNS message. Responses bbal made
// itself (a SERVFAIL of -F, a rate limiter's slip) carry extra
// "bbal:self". The stream is Frame Streams with content type
// "protobuf:dnstap.Dnstap" ([github.com/dnstap/golang-dnstap]), to a
// Unix socket or TCP address (bidirectional: READY, ACCEPT, START) or to
// a file (START only, appended to).
//
// # Queue
//
// A [Writer] is a [github.com/bbal/bbal/udpproxy.Tap]. Its Query and
// Response copy the message, addresses and time into a free slot of
// fixed size (a pool of QueueLen slots, taken and given back through
// channels) and queue it for the writer goroutine (writeLoop). While messages come, the
// writer takes them every FlushDelay (1 ms, the timer "dnstap flush"),
// or at once when the queue is half full: it encodes each into its buffer, gives the slot back and writes the
// buffer to the collector, in one system call per 64 KiB. An idle
// writer is woken by the next message. So the packet path wakes no
// goroutine per message, and a busy bbal writes many messages at once.
// Query and Response never wait and allocate nothing: with no
// free slot (the collector reads too slowly, or writeLoop is stuck on a
// full socket) the message is dropped and counted ("queue_full"). The
// memory is the slots, made at Open: QueueLen × 1.6 KB.
//
// # Collector lost
//
// A write that fails, or is held for longer than WriteTimeout by a
// collector that stopped reading, closes the stream: it is logged (at
// most once per 5 s) and the messages queued meanwhile are dropped and
// counted ("no_collector") until a reconnect succeeds. Reconnects are
// tried on the timer "dnstap reconnect", after 100 ms and doubling to
// 10 s; each success is counted and logged. The target must open at
// [Open]: a collector not there at start is an error.
//
// # Concurrency
//
// Query and Response are safe from any number of goroutines. One
// goroutine, writeLoop, owns the stream; the reconnect timer's callback
// only posts to it. Close closes the stream first (releasing a blocked
// write), then waits for writeLoop.
package dnstap
