package backend

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
)

// Defaults for the zero fields of Config.
const (
	DefaultConnectTimeout    = 30 * time.Second
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatTimeout  = 15 * time.Second
	DefaultScanInterval      = 5 * time.Second
	// DefaultWatchSettle is how long a scan waits after the directory
	// watch reports a change. A backend's socket appears when it binds
	// and is connectable once it listens, a few system calls later; a
	// scan in between would be refused and retried only after the
	// reconnect delay. The wait also lets a burst of changes end.
	DefaultWatchSettle = 50 * time.Millisecond
	// The reconnect delay starts at 1 s and grows by 2 s per failure to
	// at most 32 s: longer would leave a backend that has recovered out
	// of service for a protracted time.
	DefaultReconnectMin  = 1 * time.Second
	DefaultReconnectStep = 2 * time.Second
	DefaultReconnectMax  = 32 * time.Second
	// DefaultQueueBytes caps each backend's outgoing queue: about 2,500
	// typical queries, some tens of milliseconds of full load. A healthy
	// backend drains it far faster; past it the backend is stuck and
	// datagrams for it are dropped.
	DefaultQueueBytes = 256 << 10
	// DefaultQueueFrames caps the same queue in frames.
	DefaultQueueFrames = 4096
	// DefaultQueueAge is how long a query may wait in a backend's queue:
	// about as long as a client waits before it asks again. An older one
	// is dropped before it is written (counted as expired).
	DefaultQueueAge = time.Second
	// DefaultMaxBackends caps the number of socket paths tracked. A
	// directory with more entries has the rest logged and ignored.
	DefaultMaxBackends = 1000
	// repeatLogInterval spaces out "no backends available" errors.
	repeatLogInterval = 5 * time.Second
)

// Backend IDs taken from socket names: Binder names each socket after the
// instance's own DNS port.
const (
	firstNamedID = 5300
	lastNamedID  = 5399
)

// maxSocketPath is the longest path that fits in sun_path with its
// terminator.
const maxSocketPath = 107

// ReplyBatch collects OUTBOUND_UDP data to send from the DNS socket, so
// that the replies decoded from one read of a session leave in one
// system call. Each session's reader has its own.
type ReplyBatch interface {
	// Add queues data for the client at to; data stays valid until
	// Flush. A full batch may be sent at once.
	Add(data []byte, to netip.AddrPort)
	// Flush sends what was added and returns how many replies could not
	// be sent.
	Flush() (failed int)
}

// Config configures a Set. Dir, Timeouts and Replies are required; every
// other zero field takes the default above (negative values are not
// for use).
type Config struct {
	Dir      string         // the socket directory
	Log      zerolog.Logger // the root logger
	Timeouts *timeouts.Set  // where the backends' timers live
	// Replies returns a new, empty batch for the reader of a session of
	// backend b.
	Replies func(b *Backend) ReplyBatch
	// Down, when set, is called when a backend that was ok stops being
	// so (fault, removal, stop), on that backend's goroutine: the UDP
	// proxy sends the queries it had not answered to other backends.
	// f says why (and, for an oversized answer, to which query).
	Down func(b *Backend, f Fault)
	// Policy chooses the backend of a new remote.
	Policy Policy

	ConnectTimeout    time.Duration
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	ScanInterval      time.Duration
	WatchSettle       time.Duration // real time, not Timeouts' clock
	ReconnectMin      time.Duration
	ReconnectStep     time.Duration
	ReconnectMax      time.Duration
	QueueBytes        int
	QueueFrames       int
	QueueAge          time.Duration
	MaxBackends       int

	// Probe, when not empty, is a DNS query (wire format, at most 1500
	// bytes) sent to each ok backend every ProbeInterval (5 s) as a
	// health check, each time with a new ID, from ProbeSource (an IPv4
	// address no client has, required with Probe) and a new port. A
	// backend that answers none for ProbeTimeout (15 s) is faulted.
	// Empty: no probes.
	Probe         []byte
	ProbeSource   netip.Addr
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
}

func (c *Config) setDefaults() {
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, DefaultConnectTimeout)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, DefaultHeartbeatInterval)
	c.HeartbeatTimeout = cmp.Or(c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	c.ScanInterval = cmp.Or(c.ScanInterval, DefaultScanInterval)
	c.WatchSettle = cmp.Or(c.WatchSettle, DefaultWatchSettle)
	c.ReconnectMin = cmp.Or(c.ReconnectMin, DefaultReconnectMin)
	c.ReconnectStep = cmp.Or(c.ReconnectStep, DefaultReconnectStep)
	c.ReconnectMax = cmp.Or(c.ReconnectMax, DefaultReconnectMax)
	c.QueueBytes = cmp.Or(c.QueueBytes, DefaultQueueBytes)
	c.QueueFrames = cmp.Or(c.QueueFrames, DefaultQueueFrames)
	c.QueueAge = cmp.Or(c.QueueAge, DefaultQueueAge)
	c.MaxBackends = cmp.Or(c.MaxBackends, DefaultMaxBackends)
	c.setProbeDefaults()
}

// Set is every backend found in the socket directory. It owns discovery
// (the scan goroutine), ID assignment and selection; each Backend owns its
// own session.
type Set struct {
	cfg Config
	log zerolog.Logger

	scanT     *timeouts.Timeout
	scanKick  chan struct{} // the periodic scan is due
	watchKick chan struct{} // the directory watch saw a change
	watch     watch

	mu      sync.Mutex // guards byPath, skipped; serialises scans
	byPath  map[string]*Backend
	skipped map[string]bool // paths already logged as unusable
	scanErr string          // the directory error last logged

	// list is every backend in ID order, replaced (never modified) when
	// one is added, so the packet path reads it without a lock.
	list atomic.Pointer[[]*Backend]

	lastPicked atomic.Uint32     // ID most recently chosen by Pick
	pickMu     sync.Mutex        // guards the backends' credit (weighted round-robin)
	noneLog    *timeouts.Limiter // "no backends available"

	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// NewSet returns a Set for cfg. Nothing happens until Start.
func NewSet(cfg Config) *Set {
	cfg.setDefaults()
	s := &Set{
		cfg:       cfg,
		log:       cfg.Log,
		byPath:    map[string]*Backend{},
		skipped:   map[string]bool{},
		scanKick:  make(chan struct{}, 1),
		watchKick: make(chan struct{}, 1),
		noneLog:   timeouts.NewLimiter(cfg.Timeouts.Clock(), repeatLogInterval),
	}
	s.watch.wd = -1
	s.watch.init, s.watch.add = unix.InotifyInit1, unix.InotifyAddWatch
	s.watch.overflows = timeouts.NewLimiter(cfg.Timeouts.Clock(), repeatLogInterval)
	s.list.Store(&[]*Backend{})
	s.scanT = cfg.Timeouts.NewTimeout("backend directory scan", func() {
		select {
		case s.scanKick <- struct{}{}:
		default:
		}
	})
	return s
}

// Start scans the directory now, connecting to what it finds, and then
// again whenever the directory's inotify watch reports a change and every
// ScanInterval, until Close.
func (s *Set) Start() {
	s.mu.Lock()
	s.ctx, s.stop = context.WithCancel(context.Background())
	for _, b := range *s.list.Load() { // restored ones
		s.wg.Add(1)
		go b.run(s.ctx, &s.wg)
	}
	s.mu.Unlock()
	s.openWatch()
	s.Scan()
	s.wg.Add(1)
	go s.scanLoop()
}

// Close stops scanning, closes every session and waits for all the Set's
// goroutines to finish.
func (s *Set) Close() {
	if s.stop == nil {
		return
	}
	s.stop()
	s.scanT.Clear()
	s.closeWatch()
	s.wg.Wait()
}

// scanLoop is the scan goroutine: it scans when the directory watch
// reports a change, and every ScanInterval whatever the watch says (the
// periodic scan also puts back a watch that was lost or could not be
// made).
func (s *Set) scanLoop() {
	defer s.wg.Done()
	s.scanT.Set(s.cfg.ScanInterval)
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.watchKick:
			if !s.settle() {
				return
			}
			// Counted first: whoever sees what the scan found sees
			// it counted.
			s.watch.scans.Add(1)
			s.Scan()
		case <-s.scanKick:
			s.openWatch()
			s.Scan()
			s.scanT.Set(s.cfg.ScanInterval)
		}
	}
}

// settle waits WatchSettle after the watch reported a change, on the real
// clock: what it waits for is other processes' progress, which a fake
// clock knows nothing of. Changes reported meanwhile are covered by the
// scan that follows. It returns false if the Set is closing.
func (s *Set) settle() bool {
	t := time.NewTimer(s.cfg.WatchSettle)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return false
	case <-t.C:
	}
	select {
	case <-s.watchKick:
	default:
	}
	return true
}

// Scan reads the socket directory once: new entries become backends and
// are connected at once, removed backends whose socket is back are
// reconnected, and faulted backends whose socket is gone are marked
// removed (as their next reconnect would). A backend whose session is up
// keeps it, socket or not.
func (s *Set) Scan() {
	entries, err := os.ReadDir(s.cfg.Dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	// A directory error is logged when it starts or changes, and its end
	// when it ends, not every ScanInterval. Entries read before an error
	// are still used.
	switch {
	case err != nil && err.Error() != s.scanErr:
		s.log.Error().Str("socket_dir", s.cfg.Dir).Err(err).Msg("error reading socket directory")
		s.scanErr = err.Error()
	case err == nil && s.scanErr != "":
		s.log.Info().Str("socket_dir", s.cfg.Dir).Msg("socket directory readable again")
		s.scanErr = ""
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		path := filepath.Join(s.cfg.Dir, e.Name())
		seen[path] = true
		if b := s.byPath[path]; b != nil {
			if b.Removed() {
				b.post(event{kind: evReturned})
			}
			continue
		}
		if s.skipped[path] {
			continue
		}
		if len(path) > maxSocketPath {
			s.log.Error().Str("socket_path", path).Int("len", len(path)).
				Msg("socket path too long for sun_path (skipped)")
			s.skipped[path] = true
			continue
		}
		if len(s.byPath) >= s.cfg.MaxBackends {
			s.log.Error().Str("socket_path", path).Int("max_backends", s.cfg.MaxBackends).
				Msg("too many backends (skipped)")
			s.skipped[path] = true
			continue
		}
		s.add(path)
	}
	if err != nil {
		return // only a whole listing says what is gone
	}
	for path, b := range s.byPath {
		if st, _ := b.State(); st == StateFaulted && !seen[path] {
			b.post(event{kind: evGone})
		}
	}
}

// add creates the backend for path and starts its goroutine. s.mu is held.
func (s *Set) add(path string) {
	list := *s.list.Load()
	id := ID(0)
	if n, err := strconv.Atoi(filepath.Base(path)); err == nil && n >= firstNamedID && n <= lastNamedID {
		if s.lookup(list, ID(n)) == nil {
			id = ID(n)
		}
	}
	if id == 0 {
		id = 1
		if len(list) > 0 {
			id = list[len(list)-1].id + 1
		}
	}
	b := s.insert(id, path)
	b.log.Info().Msg("new backend")
	s.wg.Add(1)
	go b.run(s.ctx, &s.wg)
}

// insert makes the backend id for path and publishes it. s.mu is held.
func (s *Set) insert(id ID, path string) *Backend {
	list := *s.list.Load()
	b := newBackend(s, id, path)
	s.byPath[path] = b
	next := make([]*Backend, len(list), len(list)+1)
	copy(next, list)
	i, _ := slices.BinarySearchFunc(next, id, func(b *Backend, id ID) int { return int(b.id) - int(id) })
	next = slices.Insert(next, i, b)
	s.list.Store(&next)
	return b
}

// Restore recreates, before Start, a backend a predecessor process had:
// the same ID for the same socket path, and the operator's setting, so
// that a restart changes neither the IDs in logs and balstat nor the
// remotes' assignments.
func (s *Set) Restore(id ID, path string, admin Admin) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ctx != nil:
		return errors.New("backend: Restore after Start")
	case id == 0 || s.lookup(*s.list.Load(), id) != nil || s.byPath[path] != nil:
		return fmt.Errorf("backend: cannot restore %d at %s: taken", id, path)
	}
	b := s.insert(id, path)
	b.SetAdmin(admin)
	b.log.Info().Str("admin", admin.String()).Msg("backend restored from the previous process")
	return nil
}

func (s *Set) lookup(list []*Backend, id ID) *Backend {
	i, found := slices.BinarySearchFunc(list, id, func(b *Backend, id ID) int { return int(b.id) - int(id) })
	if !found {
		return nil
	}
	return list[i]
}

// Get returns the backend with the given ID, or nil.
func (s *Set) Get(id ID) *Backend {
	if id == 0 {
		return nil
	}
	return s.lookup(*s.list.Load(), id)
}

// All returns every backend in ID order. The slice must not be modified.
func (s *Set) All() []*Backend { return *s.list.Load() }

// Pick chooses a backend for a new assignment among the eligible ones
// (ok and enabled), by the Set's policy; primaries gives the remotes
// each backend is the primary of (it is only read). It returns nil when
// none is eligible, and then logs "no backends available" (at most once
// per 5 s).
//
// PolicyRoundRobin is the original's: round-robin in ID order, starting
// after the one chosen last; when the weights differ, smooth weighted
// round-robin (each backend chosen in proportion to its weight, evenly
// interleaved). PolicyLeastLoaded chooses the backend with the fewest
// queries outstanding per unit of weight, then the fewest remotes per
// unit of weight, then the lowest ID; a backend found slow (CheckSlow)
// is passed over while another is eligible.
func (s *Set) Pick(primaries map[ID]int) *Backend {
	list := *s.list.Load()
	var b *Backend
	switch {
	case s.cfg.Policy == PolicyLeastLoaded:
		b = leastLoaded(list, primaries)
	case !sameWeights(list):
		b = s.weightedRoundRobin(list)
	default:
		last := ID(s.lastPicked.Load())
		start, _ := slices.BinarySearchFunc(list, last+1, func(b *Backend, id ID) int { return int(b.id) - int(id) })
		for i := range list {
			if c := list[(start+i)%len(list)]; c.Eligible() {
				b = c
				break
			}
		}
	}
	if b != nil {
		s.lastPicked.Store(uint32(b.id))
		return b
	}
	if ok, held := s.noneLog.Allow(); ok {
		s.log.Error().Int64("suppressed", held).Msg("no backends available")
	}
	return nil
}

// sameWeights reports whether the eligible backends are weighted alike.
func sameWeights(list []*Backend) bool {
	w := int32(0)
	for _, b := range list {
		if b.Eligible() {
			if bw := b.load.weight.Load(); w != 0 && bw != w {
				return false
			} else {
				w = bw
			}
		}
	}
	return true
}

// weightedRoundRobin is nginx's smooth weighted round-robin: each
// eligible backend's credit grows by its weight, the one with the most
// is chosen and pays the total.
func (s *Set) weightedRoundRobin(list []*Backend) *Backend {
	s.pickMu.Lock()
	defer s.pickMu.Unlock()
	var best *Backend
	total := int64(0)
	for _, b := range list {
		if !b.Eligible() {
			continue
		}
		w := int64(b.load.weight.Load())
		b.credit += w
		total += w
		if best == nil || b.credit > best.credit {
			best = b
		}
	}
	if best != nil {
		best.credit -= total
	}
	return best
}

// leastLoaded is PolicyLeastLoaded's choice.
func leastLoaded(list []*Backend, primaries map[ID]int) *Backend {
	var best *Backend
	var bestSlow bool
	var bestOut, bestRem, bestW int64
	for _, b := range list {
		if !b.Eligible() {
			continue
		}
		slow, out, rem, w := b.Slow(), b.Outstanding(), int64(primaries[b.id]), int64(b.load.weight.Load())
		// Compare out/w and rem/w without dividing.
		better := best == nil ||
			bestSlow && !slow ||
			bestSlow == slow && (out*bestW < bestOut*w || out*bestW == bestOut*w && rem*bestW < bestRem*w)
		if better {
			best, bestSlow, bestOut, bestRem, bestW = b, slow, out, rem, w
		}
	}
	return best
}

func itoa(n int) string { return strconv.Itoa(n) }

// Status reports whether backend id serves its remotes now (ok), and
// whether it is unknown or its socket has been removed (gone).
func (s *Set) Status(id ID) (ok, gone bool) {
	b := s.Get(id)
	if b == nil {
		return false, true
	}
	return b.Serving(), b.Removed()
}

// PickID is Pick for callers that keep IDs; 0 when none is eligible.
func (s *Set) PickID(primaries map[ID]int) ID {
	if b := s.Pick(primaries); b != nil {
		return b.id
	}
	return 0
}

// EligibleIDs returns the IDs of the backends that may be given new
// remotes now, in ID order.
func (s *Set) EligibleIDs() []ID {
	var ids []ID
	for _, b := range s.All() {
		if b.Eligible() {
			ids = append(ids, b.id)
		}
	}
	return ids
}

// HashID chooses among the eligible backends, in ID order, by h: the
// same h gives the same backend while that set stays the same. 0 when
// none is eligible.
func (s *Set) HashID(h uint32) ID {
	list := *s.list.Load()
	n := 0
	for _, b := range list {
		if b.Eligible() {
			n++
		}
	}
	if n == 0 {
		return 0
	}
	k := int(h % uint32(n))
	for _, b := range list {
		if b.Eligible() {
			if k == 0 {
				return b.id
			}
			k--
		}
	}
	return 0
}
