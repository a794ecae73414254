// Package timeouts keeps the balancer's one-shot timers in one place,
// ordered by expiry in a B-tree, so that every pending timer can be listed
// (balstat shows them) and so that tests can drive them with a fake clock
// instead of waiting.
//
// # Model
//
// A [Set] owns a B-tree of armed [Timeout]s ordered by (due time, arming
// sequence). A Timeout is created once by its owner with a name and a
// callback, then armed with [Timeout.Set] and disarmed with
// [Timeout.Clear] as often as needed; re-arming an armed Timeout moves it.
// Periodic work re-arms its own Timeout from the callback.
//
// [Set.Run] is the Set's single goroutine: it sleeps on the [Clock] until
// the earliest due time (or until a sooner Timeout is armed), then runs
// every callback that is due, in due order, one at a time.
//
// # Concurrency
//
// Set, Clear and List may be called from any goroutine. Callbacks run on
// the Run goroutine with no lock held, one at a time.
//
// The rule: a timer callback never blocks. It posts to the goroutine
// that owns the state concerned (a send on a buffered channel with a
// select default, an atomic store, a deadline set on that goroutine's
// socket) and returns; the owner does the work. One callback that blocks
// stops every timer of the process: heartbeats, sweeps, directory scans,
// rebalancing and expiry. So a callback must not
//
//   - take a lock that anyone holds across I/O, or that is held while
//     waiting for something (the usual way a callback ends up blocked:
//     the lock is free in every test and taken in production by a
//     goroutine stuck on a socket);
//   - send on a channel without a select default;
//   - close a connection that may have I/O in progress (a net.Conn's Close
//     waits for the reads and writes under way on it, which the raw
//     connection's callbacks can prolong forever): set its deadline
//     instead, and let the goroutine that does the I/O close it;
//   - write a log record (a full stdout pipe blocks the write); let the
//     owner log.
//
// A callback may run after Clear if it was already taken off the tree to
// run when Clear was called; owners that care (a backend whose connection
// has since changed) check a generation number carried in the event.
//
// # Clocks
//
// [System] is the real clock. [Fake] is a manual clock for tests: time
// stands still until [Fake.Advance], which fires what falls due.
package timeouts
