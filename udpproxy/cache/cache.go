package cache

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bbal/bbal/backend/counter"
)

const (
	// Ways is how many entries share a set: a key can be kept in any
	// of its set's ways, and a new one takes the place of the set's
	// least recently used.
	Ways = 8
	// EntryBytes is the room for answers (with their records' TTL
	// offsets) per entry: the cache's byte bound is its entries ×
	// EntryBytes, kept per set. A set of small answers holds Ways of
	// them; a set of large ones fewer.
	EntryBytes = 512
	arenaLen   = Ways * EntryBytes

	// StaleTTL is the TTL of every record of an answer served stale
	// (RFC 8767's recommendation).
	StaleTTL = 30

	// DefaultMaxTTL caps the TTL an answer is kept for, in seconds.
	DefaultMaxTTL = 3600
	// DefaultStale is how long after it expires an answer may be served
	// stale, in seconds: a day, as RFC 8767 suggests at most.
	DefaultStale = 86400

	// MinEntries and MaxEntries bound Config.Entries: at MaxEntries the
	// cache takes about 2.3 GB.
	MinEntries = Ways
	MaxEntries = 1 << 22
)

// Config is a cache's configuration.
type Config struct {
	// Entries is how many answers are kept, MinEntries to MaxEntries;
	// it is rounded up to a multiple of Ways.
	Entries int
	// MaxTTL caps the TTL of what is kept, in seconds; 0 is
	// DefaultMaxTTL.
	MaxTTL uint32
	// Stale is how long an expired answer may be served stale, in
	// seconds; 0 is never.
	Stale uint32
}

// Validate says what is wrong with c, or nil.
func (c Config) Validate() error {
	if c.Entries < MinEntries || c.Entries > MaxEntries {
		return fmt.Errorf("answer cache of %d entries (want %d to %d)", c.Entries, MinEntries, MaxEntries)
	}
	return nil
}

// Partition is a backend's share of the cache: its ID and the epoch of
// its data. An entry serves only its own partition: a client is only
// given answers its own backend gave, and a backend given a new epoch
// (it came back after a fault or removal, and its data may have
// changed) has nothing in the cache.
type Partition struct {
	Backend uint16
	Epoch   uint32
}

// way is one entry's record. Its answer, after its records' TTL offsets
// (nttl big-endian 16-bit words), is at arena[off:].
type way struct {
	stored int64  // unix nanoseconds
	ttl    uint32 // seconds
	epoch  uint32
	used   uint32 // the set's tick at its last use
	be     uint16
	feat   uint16
	off    uint16
	size   uint16 // the answer's bytes
	qend   uint16
	nttl   uint8
}

func (w *way) recLen() int { return 2*int(w.nttl) + int(w.size) }

// set is Ways entries and the arena that holds their answers, under one
// lock. A hash of 0 is an empty way.
type set struct {
	mu    sync.Mutex
	tick  uint32
	fill  uint16 // the arena's bytes in use, free space after them
	hash  [Ways]uint64
	w     [Ways]way
	arena []byte // arenaLen, made at the set's first answer
}

// Cache is an answer cache. Create it with New.
type Cache struct {
	cfg  Config
	seed maphash.Seed
	sets []set

	entries atomic.Int64
	bytes   atomic.Int64

	// Counted by every lookup, from every reader: in stripes by the
	// key's hash, so that readers seldom share one.
	hits     counter.Striped
	stale    counter.Striped
	misses   counter.Striped
	bypassed atomic.Uint64
	inserted atomic.Uint64
	rejected atomic.Uint64
	evicted  atomic.Uint64
	expired  atomic.Uint64
	flushed  atomic.Uint64
}

// New returns an empty cache; cfg must be valid.
func New(cfg Config) *Cache {
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	n := (cfg.Entries + Ways - 1) / Ways
	cfg.Entries = n * Ways
	return &Cache{cfg: cfg, seed: maphash.MakeSeed(), sets: make([]set, n)}
}

// Config returns the cache's configuration, defaults filled in.
func (c *Cache) Config() Config { return c.cfg }

func (c *Cache) set(hash uint64) *set {
	return &c.sets[(hash>>32)*uint64(len(c.sets))>>32]
}

// Result is what Get found.
type Result uint8

const (
	Miss    Result = iota // nothing to serve
	Hit                   // served
	Expired               // expired but within the stale limit: GetStale would serve it
)

// Get looks the query in buf[:k.QEnd] up in partition p at now (unix
// nanoseconds) and, on a hit, writes the answer over it in buf (which
// must have room for MaxAnswer bytes) and returns its length: the
// query's ID and question name as the client wrote them (resolvers that
// randomise the name's case check it), the rest the answer's, each
// record's TTL less the entry's age in whole seconds.
func (c *Cache) Get(buf []byte, k *Key, p Partition, now int64) (int, Result) {
	s := c.set(k.Hash)
	s.mu.Lock()
	j := s.find(k, p, buf)
	if j < 0 {
		s.mu.Unlock()
		c.misses.Add(stripe(k), 1)
		return 0, Miss
	}
	w := &s.w[j]
	age := max(now-w.stored, 0)
	if age >= int64(w.ttl)*int64(time.Second) || int(w.size) > int(k.MaxLen) || int(w.size) > len(buf) {
		r := Miss
		if age < (int64(w.ttl)+int64(c.cfg.Stale))*int64(time.Second) && int(w.size) <= int(k.MaxLen) {
			r = Expired
		}
		s.mu.Unlock()
		c.misses.Add(stripe(k), 1)
		return 0, r
	}
	n := s.serve(j, buf, uint32(age/int64(time.Second)), false)
	s.mu.Unlock()
	c.hits.Add(stripe(k), 1)
	return n, Hit
}

// GetStale is Get for a query whose backend cannot take it: an answer
// expired within the stale limit is served too, each record's TTL
// StaleTTL. It returns 0 when there is none.
func (c *Cache) GetStale(buf []byte, k *Key, p Partition, now int64) int {
	s := c.set(k.Hash)
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.find(k, p, buf)
	if j < 0 {
		return 0
	}
	w := &s.w[j]
	age := max(now-w.stored, 0)
	if int(w.size) > int(k.MaxLen) || int(w.size) > len(buf) ||
		age >= (int64(w.ttl)+int64(c.cfg.Stale))*int64(time.Second) {
		return 0
	}
	if age < int64(w.ttl)*int64(time.Second) {
		c.hits.Add(stripe(k), 1)
		return s.serve(j, buf, uint32(age/int64(time.Second)), false)
	}
	c.stale.Add(stripe(k), 1)
	return s.serve(j, buf, 0, true)
}

// stripe is k's stripe of the lookup counts.
func stripe(k *Key) int { return int(k.Hash & (counter.Stripes - 1)) }

// find returns the way that holds k's answer in partition p, query
// being a message with k's question; -1 if none does.
func (s *set) find(k *Key, p Partition, query []byte) int {
	for j := range Ways {
		if s.hash[j] != k.Hash {
			continue
		}
		w := &s.w[j]
		if w.feat == k.Feat && w.be == p.Backend && w.epoch == p.Epoch && w.qend == k.QEnd &&
			sameQuestion(s.answer(j), query, int(k.QEnd)) {
			return j
		}
	}
	return -1
}

// answer returns way j's answer.
func (s *set) answer(j int) []byte {
	w := &s.w[j]
	start := int(w.off) + 2*int(w.nttl)
	return s.arena[start : start+int(w.size)]
}

// serve writes way j's answer over the query in buf, as Get says, each
// TTL less age, or with stale StaleTTL, and marks the way used.
func (s *set) serve(j int, buf []byte, age uint32, stale bool) int {
	w := &s.w[j]
	offs := s.arena[w.off : int(w.off)+2*int(w.nttl)]
	ans := s.answer(j)
	copy(buf[2:headerLen], ans[2:headerLen])
	copy(buf[w.qend:], ans[w.qend:])
	for i := range int(w.nttl) {
		o := binary.BigEndian.Uint16(offs[2*i:])
		ttl := uint32(StaleTTL)
		if !stale {
			ttl = binary.BigEndian.Uint32(ans[o:]) - age
		}
		binary.BigEndian.PutUint32(buf[o:], ttl)
	}
	s.tick++
	w.used = s.tick
	return int(w.size)
}

// Put keeps msg, the answer from partition p to a query with key k, at
// now. It is false, and msg is not kept, when msg is not an answer the
// cache keeps (see parseAnswer), is not to k's question, or is too long.
func (c *Cache) Put(k *Key, p Partition, msg []byte, now int64) bool {
	return c.put(k, p, msg, now, c.cfg.MaxTTL, now)
}

// put keeps msg as stored at stored, its TTLs at most limit.
func (c *Cache) put(k *Key, p Partition, msg []byte, stored int64, limit uint32, now int64) bool {
	var offs [maxRecords]uint16
	a, ok := parseAnswer(msg, offs[:])
	if !ok || a.qend != int(k.QEnd) || hashQuestion(c.seed, msg, a.qend, k.Feat) != k.Hash {
		c.rejected.Add(1)
		return false
	}
	need := 2*len(a.ttls) + len(msg)
	if need > arenaLen {
		c.rejected.Add(1)
		return false
	}
	ttl := min(a.ttl, limit)
	s := c.set(k.Hash)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.arena == nil {
		s.arena = make([]byte, arenaLen)
	}
	j := s.same(k, p.Backend, msg)
	if j < 0 {
		j = c.victim(s, now)
	}
	c.remove(s, j)
	if int(s.fill)+need > arenaLen {
		s.compact()
		for int(s.fill)+need > arenaLen {
			v := s.lru(j)
			c.remove(s, v)
			c.evicted.Add(1)
			s.compact()
		}
	}
	off := int(s.fill)
	rec := s.arena[off : off+need]
	for i, o := range a.ttls {
		binary.BigEndian.PutUint16(rec[2*i:], o)
	}
	ans := rec[2*len(a.ttls):]
	copy(ans, msg)
	// Each record's TTL at most the cap, and a negative answer's at
	// most the entry's (its SOA minimum).
	clamp := limit
	if a.negative {
		clamp = ttl
	}
	for _, o := range a.ttls {
		if binary.BigEndian.Uint32(ans[o:]) > clamp {
			binary.BigEndian.PutUint32(ans[o:], clamp)
		}
	}
	s.fill += uint16(need)
	s.tick++
	s.hash[j] = k.Hash
	s.w[j] = way{stored: stored, ttl: ttl, epoch: p.Epoch, used: s.tick, be: p.Backend, feat: k.Feat,
		off: uint16(off), size: uint16(len(msg)), qend: k.QEnd, nttl: uint8(len(a.ttls))}
	c.entries.Add(1)
	c.bytes.Add(int64(need))
	c.inserted.Add(1)
	return true
}

// same returns the way that holds msg's question for k in backend be's
// partition, of any epoch, or -1.
func (s *set) same(k *Key, be uint16, msg []byte) int {
	for j := range Ways {
		if s.hash[j] == k.Hash && s.w[j].be == be && s.w[j].feat == k.Feat && s.w[j].qend == k.QEnd &&
			sameQuestion(s.answer(j), msg, int(k.QEnd)) {
			return j
		}
	}
	return -1
}

// victim returns the way of s a new entry takes: an empty one; else one
// past its stale limit; else the least recently used of those expired;
// else the least recently used (evicted).
func (c *Cache) victim(s *set, now int64) int {
	exp, lru := -1, -1
	for j := range Ways {
		if s.hash[j] == 0 {
			return j
		}
		w := &s.w[j]
		age := now - w.stored
		if age >= (int64(w.ttl)+int64(c.cfg.Stale))*int64(time.Second) {
			c.expired.Add(1)
			return j
		}
		if age >= int64(w.ttl)*int64(time.Second) && (exp < 0 || s.tick-w.used > s.tick-s.w[exp].used) {
			exp = j
		}
		if lru < 0 || s.tick-w.used > s.tick-s.w[lru].used {
			lru = j
		}
	}
	if exp >= 0 {
		return exp
	}
	c.evicted.Add(1)
	return lru
}

// lru returns the least recently used way in use other than not.
func (s *set) lru(not int) int {
	v := -1
	for j := range Ways {
		if j != not && s.hash[j] != 0 && (v < 0 || s.tick-s.w[j].used > s.tick-s.w[v].used) {
			v = j
		}
	}
	return v
}

// remove empties way j, if it is in use. Its room in the arena is taken
// back by compact.
func (c *Cache) remove(s *set, j int) {
	if s.hash[j] == 0 {
		return
	}
	s.hash[j] = 0
	c.entries.Add(-1)
	c.bytes.Add(-int64(s.w[j].recLen()))
	for _, h := range s.hash {
		if h != 0 {
			return
		}
	}
	s.fill = 0
}

// compact moves the answers in use to the start of the arena, in order,
// leaving the free space after them.
func (s *set) compact() {
	var order [Ways]int
	n := 0
	for j := range Ways {
		if s.hash[j] == 0 {
			continue
		}
		i := n
		for i > 0 && s.w[order[i-1]].off > s.w[j].off {
			order[i] = order[i-1]
			i--
		}
		order[i] = j
		n++
	}
	pos := 0
	for _, j := range order[:n] {
		w := &s.w[j]
		l := w.recLen()
		if int(w.off) != pos {
			copy(s.arena[pos:pos+l], s.arena[w.off:int(w.off)+l])
			w.off = uint16(pos)
		}
		pos += l
	}
	s.fill = uint16(pos)
}

// Flush empties the cache and returns how many entries it held.
func (c *Cache) Flush() int {
	return c.removeIf(func(*set, int) bool { return true })
}

// FlushName removes the entries for the name given in wire format (any
// type, class and partition) and returns how many.
func (c *Cache) FlushName(name []byte) int {
	return c.removeIf(func(s *set, j int) bool {
		ans := s.answer(j)
		qend := int(s.w[j].qend)
		return qend-4-headerLen == len(name) && sameName(ans[headerLen:qend-4], name)
	})
}

func sameName(a, b []byte) bool {
	for i := range a {
		if a[i] != b[i] && lower[a[i]] != lower[b[i]] {
			return false
		}
	}
	return true
}

// Sweep removes the entries past their stale limit, and those of a
// partition alive says is no longer: a backend's old epoch, or one gone.
// It returns how many it removed. It holds one set's lock at a time,
// and calls alive with it held.
func (c *Cache) Sweep(now int64, alive func(Partition) bool) int {
	n := 0
	for i := range c.sets {
		s := &c.sets[i]
		s.mu.Lock()
		for j := range Ways {
			if s.hash[j] == 0 {
				continue
			}
			w := &s.w[j]
			if now-w.stored >= (int64(w.ttl)+int64(c.cfg.Stale))*int64(time.Second) {
				c.remove(s, j)
				c.expired.Add(1)
				n++
			} else if !alive(Partition{Backend: w.be, Epoch: w.epoch}) {
				c.remove(s, j)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// removeIf removes the entries of which f is true, one set at a time,
// counting them flushed.
func (c *Cache) removeIf(f func(s *set, j int) bool) int {
	n := 0
	for i := range c.sets {
		s := &c.sets[i]
		s.mu.Lock()
		for j := range Ways {
			if s.hash[j] != 0 && f(s, j) {
				c.remove(s, j)
				n++
			}
		}
		s.mu.Unlock()
	}
	c.flushed.Add(uint64(n))
	return n
}

// Bypass counts a query that cannot use the cache (KeyOf was false).
func (c *Cache) Bypass() { c.bypassed.Add(1) }

// Stats is a snapshot of the cache.
type Stats struct {
	Counts
	Entries       int64  `json:"entries"`
	Bytes         int64  `json:"bytes"`
	Capacity      int    `json:"capacity"`
	CapacityBytes int    `json:"capacity_bytes"`
	MaxTTL        uint32 `json:"max_ttl"`
	StaleLimit    uint32 `json:"stale_limit"`
}

// Counts are the cache's plain counts, as counterTable loads them.
type Counts struct {
	Hits   uint64 `json:"hits"`   // queries answered from the cache
	Stale  uint64 `json:"stale"`  // of those, answered stale
	Misses uint64 `json:"misses"` // queries looked up and not answered
	// Bypassed counts queries that cannot use the cache: not a plain
	// query of one question, or with EDNS options.
	Bypassed uint64 `json:"bypassed"`
	Inserted uint64 `json:"inserted"` // answers kept
	// Rejected counts answers to cacheable queries not kept: see
	// parseAnswer.
	Rejected uint64 `json:"rejected"`
	Evicted  uint64 `json:"evicted"` // entries put out, unexpired, for room
	Expired  uint64 `json:"expired"` // entries put out past their stale limit
	Flushed  uint64 `json:"flushed"` // entries flushed by the operator
}

// Counter is one of the cache's plain counts; Counters lists them.
type Counter = counter.Counter[Cache, Counts]

var counterTable = counter.Table[Cache, Counts]{
	{Metric: "bbal_cache_hits_total", Help: "UDP queries answered from the answer cache (-c), stale ones included.", Field: func(c *Cache) counter.Value { return &c.hits }, Stat: func(s *Counts) *uint64 { return &s.Hits }},
	{Metric: "bbal_cache_stale_total", Help: "UDP queries answered stale from the answer cache: their backend could not take them.", Field: func(c *Cache) counter.Value { return &c.stale }, Stat: func(s *Counts) *uint64 { return &s.Stale }},
	{Metric: "bbal_cache_misses_total", Help: "UDP queries looked up in the answer cache and not answered from it.", Field: func(c *Cache) counter.Value { return &c.misses }, Stat: func(s *Counts) *uint64 { return &s.Misses }},
	{Metric: "bbal_cache_bypassed_total", Help: "UDP queries that cannot use the answer cache (not one plain question, or EDNS options).", Field: func(c *Cache) counter.Value { return &c.bypassed }, Stat: func(s *Counts) *uint64 { return &s.Bypassed }},
	{Metric: "bbal_cache_inserted_total", Help: "Answers kept in the answer cache.", Field: func(c *Cache) counter.Value { return &c.inserted }, Stat: func(s *Counts) *uint64 { return &s.Inserted }},
	{Metric: "bbal_cache_rejected_total", Help: "Answers to cacheable queries not kept (truncated, an error, TTL 0, malformed, and the like).", Field: func(c *Cache) counter.Value { return &c.rejected }, Stat: func(s *Counts) *uint64 { return &s.Rejected }},
	{Metric: "bbal_cache_evictions_total", Help: "Unexpired answers put out of the answer cache for room.", Field: func(c *Cache) counter.Value { return &c.evicted }, Stat: func(s *Counts) *uint64 { return &s.Evicted }},
	{Metric: "bbal_cache_expired_total", Help: "Answers put out of the answer cache past their stale limit.", Field: func(c *Cache) counter.Value { return &c.expired }, Stat: func(s *Counts) *uint64 { return &s.Expired }},
	{Metric: "bbal_cache_flushed_total", Help: "Answers flushed from the answer cache by the operator.", Field: func(c *Cache) counter.Value { return &c.flushed }, Stat: func(s *Counts) *uint64 { return &s.Flushed }},
}

// Counters returns the table of the cache's plain counts, for the
// metrics.
func Counters() []Counter { return append([]Counter(nil), counterTable...) }

// Stats returns a snapshot of the cache: all 0 for a nil one (no
// cache).
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	s := Stats{Entries: c.entries.Load(), Bytes: c.bytes.Load(), Capacity: c.cfg.Entries,
		CapacityBytes: len(c.sets) * arenaLen, MaxTTL: c.cfg.MaxTTL, StaleLimit: c.cfg.Stale}
	counterTable.Load(c, &s.Counts)
	return s
}

// ResetCounters sets the cache's counts back to zero; nil does
// nothing.
func (c *Cache) ResetCounters() {
	if c != nil {
		counterTable.Reset(c)
	}
}
