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
// the Run goroutine with no lock held; they must not block. The owners in
// this project only post an event to the goroutine that owns the state
// concerned, so a callback never touches another goroutine's state.
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
