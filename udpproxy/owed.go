package udpproxy

import (
	"sync"
	"time"

	"github.com/bbal/bbal/backend"
)

// A query sent again to another backend (its first stalled, or died) is
// owed two answers, and its client must get one: the first that comes.
// When it comes, the other backend is recorded here as owing the second,
// which is then dropped and counted redundant, not sent as a late
// answer: a stalled backend that answers its backlog when it wakes would
// otherwise answer every such client twice.
//
// The table is bounded: 1<<14 entries in sets of 4 ways, each kept for
// OwedAge (a stalled backend is faulted by its heartbeat timeout long
// before that, and a faulted session's answers never come), the oldest
// of a full set replaced. It is touched only when an answer comes for a
// query sent again, and by answers that match no query on record.
const (
	owedSlots = 1 << 14
	owedWays  = 4
	owedSets  = owedSlots / owedWays
	// OwedAge is how long a second answer is waited for.
	OwedAge = 30 * time.Second
)

type owedEntry struct {
	key uint64
	be  backend.ID
	at  int64 // unix nanoseconds; 0: free
}

type owed struct {
	mu   sync.Mutex
	sets [owedSets][owedWays]owedEntry
}

func (o *owed) set(key uint64) *[owedWays]owedEntry {
	return &o.sets[((key*0x9e3779b97f4a7c15)>>32)%owedSets]
}

// add records that backend be owes the second answer of the query key,
// at now.
func (o *owed) add(key uint64, be backend.ID, now int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	set := o.set(key)
	way := 0
	for j := range set {
		e := &set[j]
		if e.at == 0 || now-e.at > int64(OwedAge) || e.key == key && e.be == be {
			way = j
			break
		}
		if e.at < set[way].at {
			way = j
		}
	}
	set[way] = owedEntry{key: key, be: be, at: now}
}

// take reports whether be owed the second answer of the query key at
// now, and forgets it.
func (o *owed) take(key uint64, be backend.ID, now int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	set := o.set(key)
	for j := range set {
		if e := &set[j]; e.at != 0 && e.key == key && e.be == be {
			at := e.at
			e.at = 0
			return now-at <= int64(OwedAge)
		}
	}
	return false
}
