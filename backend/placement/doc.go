// Package placement decides which backend a client ("remote") is given,
// and owns what that decision reads of each backend: its weight, whether
// it is slow, and the load of its queries. It is a policy over the
// backends' state, and holds none of that state's other parts: package
// backend owns discovery, sessions, queues and probes and exposes each
// backend's state (ok, enabled, removed); package remotes owns the
// assignments, and holds a [Picker]; the UDP proxy owns the queries in
// flight, and counts their load.
//
// # Policies
//
// [Picker.Pick] chooses the backend of a new remote among the eligible
// ones (ok and enabled) by the [Policy]:
//
//   - [PolicyRoundRobin], the original's: round-robin in ID order,
//     starting after the one chosen last; when the weights differ,
//     nginx's smooth weighted round-robin (each backend chosen in
//     proportion to its weight, evenly interleaved);
//   - [PolicyLeastLoaded]: the fewest queries outstanding per unit of
//     weight, then the fewest remotes per unit of weight, then the lowest
//     ID, passing over backends found slow while another is eligible.
//
// [Picker.HashID] is the source hash for clients the full remotes table
// cannot pin (like ipvsadm's source-hash scheduler): the same hash gives
// the same backend while the eligible backends stay the same.
// Whether a remote keeps its primary is not placement's choice but the
// primary's state (backend.Set.Status: it serves while ok and not
// disabled), which the remotes table reads for every packet.
//
// # Weights
//
// A backend's weight, 1 to [MaxWeight] ([DefaultWeight] 1, like ipvsadm
// -w), scales its share of remotes: in weighted round-robin, in
// least-loaded's per-unit comparisons, and in the remotes table's
// rebalancing ([Picker.Weight]).
//
// # Load
//
// Each backend carries a [Load] (backend.Backend.Load): its weight, its
// slowness, and the figures of its queries: sent and not yet answered
// (outstanding), answered, forgotten unanswered (after about a second),
// evicted from a full table of queries in flight, and re-sent to another
// backend after it died, with a moving average (1/8 per sample) of its
// answer times. The UDP proxy, which matches answers to queries, counts
// them, in one place. [Picker.CheckSlow], at each rebalance, marks slow a
// backend whose answers take more than four times the median of its
// peers' and 5 ms more (one that answered nothing while queries went
// unanswered counts as taking a second); a slow backend with nothing
// measured is given another chance after four checks. Under
// PolicyRoundRobin nothing is checked.
//
// # Stalls
//
// [Stalls] finds the backends that stop answering while their sessions
// stay up (a Node process whose event loop is blocked): queries
// outstanding and none answered for the backend's threshold (8 times its
// answer time, from the floor, -A, to [MaxStallThreshold]), or its queue
// not taken for as long. A stalled backend is avoided (not Eligible, not
// Serving: its clients use their backups) while another is available,
// and taken back once it has answered again and caught up, at least
// [DefaultStallHold] after the stall began; one that answers nothing is
// tried again after the hold, doubled up to eight times. No stall is
// begun by a check that came late (bbal starved), or while the backend's
// answers wait unread in its socket. The UDP proxy, which owns the
// queries in flight, runs the check every [StallCheckInterval] on one
// goroutine, and re-sends a stalled backend's queries.
//
// # Concurrency
//
// A Picker is safe for concurrent use. Pick reads the backends' state
// and load through atomics; the weighted round-robin's credit and the
// slowness check's state are under the Picker's one mutex. The remotes
// table calls Pick with its own lock held, and so the Picker calls
// nothing that takes another package's lock. "no backends available" is
// logged at most once per 5 s.
package placement
