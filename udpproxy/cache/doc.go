// Package cache keeps backends' answers to UDP queries, so that bbal can
// answer a query asked again within the answer's TTL itself, and, when
// a client's backend cannot take a query, answer it from an expired
// entry (serve-stale, RFC 8767).
//
// # What an answer is kept for
//
// An entry is found by its key ([Key], read from the query by
// [Cache.KeyOf]) and its partition ([Partition]):
//   - the question: the name, compared without regard to case, the
//     type and the class;
//   - the query's RD and CD bits and its DO bit;
//   - whether it has EDNS, and the class of its UDP size (below 1024
//     bytes, to 2047, to 4095, or more), and an answer is given only to
//     a client whose size it fits (512 bytes without EDNS);
//   - the backend that gave it, and the epoch of that backend's data: a
//     client is only given answers of its own backend, and a backend
//     that comes back after a fault or removal starts a new epoch, with
//     nothing in the cache.
//
// A query that is not a standard query of one question with no records
// but an OPT, a zone transfer, or one with any EDNS option (client
// subnet, cookies and the like make an answer the client's own)
// bypasses the cache. An answer is not kept when it is truncated, when
// its RCODE is other than NOERROR or NXDOMAIN (SERVFAIL, REFUSED and
// FORMERR are not kept), when a record's TTL is 0, when its OPT has
// options or it has a TSIG, when it is not well formed, and when it is
// negative (NXDOMAIN, or NOERROR with no answer records) with no SOA in
// its authority section. An entry lives for the least of its records'
// TTLs, for a negative answer no longer than the SOA minimum (RFC
// 2308), and never longer than [Config.MaxTTL].
//
// # Serving from it
//
// [Cache.Get] writes the answer over the query in the reader's buffer:
// the ID and the question's name stay the client's (resolvers that
// randomise the name's case check it), the rest is the answer's, and
// each record's TTL is lessened by the entry's age in whole seconds.
// A hit allocates nothing. [Cache.GetStale] also serves an entry
// expired within [Config.Stale], every TTL [StaleTTL].
//
// # Storage
//
// The entries are in sets of [Ways], a set chosen by the key's hash
// (seeded per process), each set under its own lock with an arena of
// Ways × [EntryBytes] bytes for its answers and their records' TTL
// offsets. A new entry takes an empty way, else one past its stale
// limit, else the least recently used of the expired, else the least
// recently used (an eviction); when the arena has no room, the set's
// least recently used go until it has. The byte bound is so exact: the
// entries × EntryBytes, plus about 45 bytes an entry of records.
//
// # Restarts
//
// [Cache.WriteSnapshot] and [Cache.ReadSnapshot] carry the entries to a
// successor process, bounded by its capacity; the successor checks each
// answer as it would a backend's.
package cache
