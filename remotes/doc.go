// Package remotes keeps the balancer's clients ("remotes", one per IPv4
// or IPv6 address; an IPv6 client also holds a stand-in IPv4 address from
// a reserved range, which the backends see: see [Table.Route]) and pins
// each to a backend, so that every query from one client goes to the same backend process for as long as it is healthy: a
// client's dig and its application see the same server, and logs and
// caches stay consistent.
//
// It owns the clients and their assignments (primary, backup, the counts
// per backend); which backend a new assignment gets it asks a [Picker]
// (package placement's), and whether a backend still serves it reads
// from the backends ([Backends]).
//
// # Table
//
// A [Table] is 64 B-trees of *[Remote] ordered by address (shards, by a
// hash of the address), each guarded by its own mutex. [Table.Route] finds or creates the remote for a packet's source
// and returns a [Routing]: the remote, the backend to use, the address
// the backend is told, and, for a client not served, why
// ([DropStandinRange], [DropNoStandin]), which the proxies count as
// their own drop reasons. Each remote records its first and last
// time seen and counts its UDP queries, TCP connections and drops (those
// counters are atomics, updated by the caller after the lock is released).
//
// # Files
//
//   - table.go: the [Table], its [Config] and [Remote], and routing
//     ([Table.Route], [Routing], [DropReason]), lookups and counts;
//   - keys.go: address keys (the tree's order, an IPv4 client's network
//     with PrefixBits, the hash for unpinned clients);
//   - standins.go: the stand-in range ([StandinRange], [ProbeSource])
//     and the allocator of IPv6 clients' stand-ins, which owns its lock
//     and the reverse map;
//   - assign.go: the assignment rules and the per-backend counts
//     ([Table.Counts]);
//   - maintain.go: the table's goroutine, rebalancing and expiry, the
//     one chunked scan of the shards that they and [Table.ResetCounters]
//     share, and [Table.Walk], which merges the shards' orders;
//   - routecache.go: the readers' caches of routes ([Table.RouteCached]);
//   - snapshot.go: snapshots and restoring remotes ([Table.Restore]).
//
// # Concurrency
//
// Several readers route at once (one per socket of a listen address),
// so nothing on the path of a known client's packet is shared by all of
// them: a reader routes a client it has routed before with no lock at
// all, from a [RouteCache] of its own whose entries last while no
// assignment changes (a generation that every change to one moves on)
// and the client's backend is ok; otherwise routing takes the lock of
// the client's shard alone. A shard's
// mutex guards its tree and its remotes' assignments, times and
// stand-ins. The per-backend counts have their own mutex, taken within
// a shard's to change an assignment (a new client, a backup, a return
// home) and alone to read the counts; a client served by its ok primary
// does not take it. The stand-ins have their own read-write lock over
// the reverse map (stand-in to client), which the reply path reads
// ([Table.Client]) without any other. The order is a shard's mutex,
// then the counts', then the stand-ins': a stand-in is given, restored
// or freed only with its remote's shard locked, and no lock is taken
// while a later one in that order is held. Maintenance scans the shards
// one after another, a chunk of a shard per hold of its lock; the
// ordered listing ([Table.Walk]) merges the shards, copying a few of a
// shard's remotes per hold.
//
// # Assignment
//
// Each remote has a primary backend and, while the primary is not ok
// (the backends' own state, [Backends.Status], read for every packet), a
// backup:
//
//   - no primary yet: pick one and clear any backup;
//   - primary ok: use it; if a backup was set, clear it (the remote returns
//     home);
//   - primary removed or unknown: clear both and pick again;
//   - primary not ok: use the backup if it is ok, otherwise pick a new
//     backup;
//   - nothing ok: no backend (the caller drops the packet or closes the
//     connection).
//
// Picking is placement's ([Picker.Pick]; package placement under
// backend holds the policies and the per-backend load they read), over
// the eligible backends: round-robin in ID order (weighted when the weights
// differ), or least-loaded. The table counts, per backend, the remotes whose
// primary it is; those counts change only in this package, together with
// the primary they count.
//
// # Bounds
//
// The table holds at most MaxRemotes remotes (1,000,000 by default, some
// 170 MB). When it is full, a new client is served by a hash of its
// address over the eligible backends ([Picker.HashID], like ipvsadm's
// source-hash scheduler): consistently, without a record, and counted
// ([Table.Unpinned]). With PrefixBits, clients are pinned by network (a
// /24 shares one remote, like ipvsadm's netmask). Per-remote log records
// are limited to 1000 per 5 s, so that a flood of new (spoofed) sources
// cannot flood the log.
//
// # Maintenance
//
// Every RebalanceInterval (15 s) the spread between the ok backends with
// the most and the fewest remotes is checked; if it is more than the
// number of ok backends, (spread - ok backends) remotes of the fullest
// lose their assignment and pick again on their next packet (with
// weights, the fullest per unit of weight loses what it holds over its
// share); and half the remotes of each backend found answering far
// slower than its peers ([Picker.CheckSlow]) lose theirs. Every
// ExpireInterval (30 s), remotes not seen for ExpireAfter (5 min) are
// forgotten. Both run on the table's own goroutine, woken by timers in a
// [timeouts.Set], and walk the table a chunk of remotes per hold of the
// lock, so that the packet path never waits long behind them; the
// longest hold is measured ([Table.MaxPause]).
//
// # Snapshots
//
// A process handing over to its successor (a restart without downtime)
// writes the table as a snapshot ([Table.WriteSnapshot]): a record per
// remote, in address order, with its assignment, stand-in, counters and
// times to the second. The successor reads it ([ReadSnapshot]) in the
// format the predecessor names ([SnapshotV2], or [SnapshotV1] from a bbal
// before IPv6 clients) and restores it ([Table.RestoreSnapshot]) before
// any traffic: a remote keeps its stand-in when that is in the range and
// free, and is left out, to be placed afresh, when its primary or backup
// is a backend the successor does not have. The stand-in range is applied
// in one place ([StandinRange]), which the command and the health checks
// use too. The backends travel beside the records (see [backend.Saved]);
// the stream around both is the server's.
package remotes
