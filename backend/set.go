package backend

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend/placement"
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
	// DefaultMaxBackends caps the number of backends whose socket is in
	// the directory. Sockets past it are logged (at most once per 5 s)
	// and tried again at each scan.
	DefaultMaxBackends = 1000
	// DefaultForgetAfter is how long a backend whose socket is gone is
	// remembered: its ID and admin setting wait for it that long, far
	// longer than a backend process takes to restart, and a directory
	// of short-lived junk costs nothing after it.
	DefaultForgetAfter = time.Minute
	// repeatLogInterval spaces out the Set's repeated records.
	repeatLogInterval = 5 * time.Second
	// setLogBurst is how many records about backends found, removed and
	// forgotten, and about entries that are not backends, are logged per
	// repeatLogInterval: as many as Binder has IDs.
	setLogBurst = lastNamedID - firstNamedID + 1
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

// Config configures a Set. Dir and Timeouts are required; every other
// zero field takes the default above (negative values are not for use).
type Config struct {
	Dir      string         // the socket directory
	Log      zerolog.Logger // the root logger
	Timeouts *timeouts.Set  // where the backends' timers live

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
	ForgetAfter       time.Duration

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

// Links are what a Set is handed at Start: what it calls of the parts
// built after it (the UDP proxy, the remotes table). Replies is
// required.
type Links struct {
	// Replies returns a new, empty batch for the reader of a session of
	// backend b: the UDP proxy's reply sink.
	Replies func(b *Backend) ReplyBatch
	// Primaries, when set, returns the number of remotes whose primary
	// each backend is (the remotes table's counts). A backend that is
	// some remote's primary is not forgotten. It is called by scans,
	// without the Set's locks held, only while some backend is removed.
	// Unset: no backend is anyone's primary.
	Primaries func() map[ID]int
}

// Down is the event of a backend that was ok ceasing to be so (fault,
// removal, stop): Fault says why (and, for an oversized answer, to
// which query). The UDP proxy consumes them ([Set.Downs]) and sends the
// queries the backend had not answered to other backends.
type Down struct {
	Backend *Backend
	Fault   Fault
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
	c.ForgetAfter = cmp.Or(c.ForgetAfter, DefaultForgetAfter)
	c.setProbeDefaults()
}

// Set is every backend found in the socket directory. It owns discovery
// (the scan goroutine) and ID assignment; each Backend owns its own
// session. Which backend a remote is given is placement's (see package
// placement), over the Set's list.
type Set struct {
	cfg Config
	log zerolog.Logger

	scanT     *timeouts.Timeout
	scanKick  chan struct{} // the periodic scan is due
	watchKick chan struct{} // the directory watch saw a change
	watch     watch
	links     Links // set by Start

	downs    chan Down         // see Downs
	downLost atomic.Uint64     // Down events the full queue could not take
	downLog  *timeouts.Limiter // "down event lost"

	mu      sync.Mutex // guards byPath, notes and the backends' cancel; serialises scans
	byPath  map[string]*Backend
	notes   map[string]note // entries that are no backend, as last logged
	scanErr string          // the directory error last logged

	fullLog  *timeouts.Limiter // "too many backends (skipped)"
	noteLog  *timeouts.Limiter // why entries are not backends
	churnLog *timeouts.Limiter // backends found, removed and forgotten

	ignored   atomic.Int64  // len(notes), for Discovery
	forgotten atomic.Uint64 // backends forgotten
	epochs    atomic.Uint32 // the last epoch given (see Backend.Epoch)

	// list is every backend in ID order, replaced (never modified) when
	// one is added, so the packet path reads it without a lock.
	list atomic.Pointer[[]*Backend]

	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	changeMu sync.Mutex
	changed  chan struct{} // closed at the next state change; nil while no one waits
}

// NewSet returns a Set for cfg. Nothing happens until Start.
func NewSet(cfg Config) *Set {
	cfg.setDefaults()
	s := &Set{
		cfg:       cfg,
		log:       cfg.Log,
		byPath:    map[string]*Backend{},
		notes:     map[string]note{},
		scanKick:  make(chan struct{}, 1),
		watchKick: make(chan struct{}, 1),
		fullLog:   timeouts.NewLimiter(cfg.Timeouts.Clock(), repeatLogInterval),
		noteLog:   timeouts.NewBurstLimiter(cfg.Timeouts.Clock(), repeatLogInterval, setLogBurst),
		churnLog:  timeouts.NewBurstLimiter(cfg.Timeouts.Clock(), repeatLogInterval, setLogBurst),
		downLog:   timeouts.NewLimiter(cfg.Timeouts.Clock(), repeatLogInterval),
	}
	s.downs = make(chan Down, s.maxTracked())
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
// ScanInterval, until Close. The sessions send their replies through
// l.Replies.
func (s *Set) Start(l Links) {
	s.mu.Lock()
	s.links = l
	s.ctx, s.stop = context.WithCancel(context.Background())
	for _, b := range *s.list.Load() { // restored ones
		s.start(b)
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

// Scan reads the socket directory once: new sockets become backends and
// are connected at once, removed backends whose socket is back are
// reconnected, faulted backends whose socket is gone are marked removed
// (as their next reconnect would), and backends removed for ForgetAfter
// that no remote has as its primary are forgotten. A backend whose
// session is up keeps it, socket or not. An entry that is no socket, or
// is the socket of a backend already found (a link to it), is noted once
// at debug level and looked at again only when it changes.
func (s *Set) Scan() {
	inUse := s.primaries() // before s.mu: it takes the remotes table's lock
	entries, err := os.ReadDir(s.cfg.Dir)
	found := examine(s.cfg.Dir, entries)
	s.mu.Lock()
	defer s.mu.Unlock()
	// A directory error is logged when it starts or changes, and its end
	// when it ends, not every ScanInterval. Entries read before an error
	// are still used.
	switch {
	case err != nil && err.Error() != s.scanErr:
		s.log.Error().Str("socket_dir", EscapePath(s.cfg.Dir)).Err(err).Msg("error reading socket directory")
		s.scanErr = err.Error()
	case err == nil && s.scanErr != "":
		s.log.Info().Str("socket_dir", EscapePath(s.cfg.Dir)).Msg("socket directory readable again")
		s.scanErr = ""
	}
	listed := make(map[string]bool, len(found)) // every entry
	sockets := make(map[string]bool, len(found))
	// The backends found again first, so that a link to one of them is
	// known for what it is, and the limit counts them.
	byFile := make(map[fileID]*Backend, len(s.byPath))
	present := 0
	for _, e := range found {
		listed[e.path] = true
		b := s.byPath[e.path]
		if !e.socket() {
			continue
		}
		sockets[e.path] = true
		if b == nil {
			continue
		}
		byFile[e.file] = b
		present++
		if b.Removed() {
			b.post(event{kind: evReturned})
		}
	}
	if err == nil && inUse.known {
		s.forget(sockets, present, inUse.ids)
	}
	for _, e := range found {
		if s.byPath[e.path] != nil {
			continue
		}
		switch {
		case !e.socket():
			s.note(e, msgNotSocket, nil)
		case len(e.path) > maxSocketPath:
			s.note(e, msgTooLong, nil)
		case byFile[e.file] != nil:
			s.note(e, msgSameSocket, byFile[e.file])
		case present >= s.cfg.MaxBackends || len(s.byPath) >= s.maxTracked():
			delete(s.notes, e.path) // tried again at the next scan
			if ok, held := s.fullLog.Allow(); ok {
				s.log.Error().Str("socket_path", EscapePath(e.path)).Int("max_backends", s.cfg.MaxBackends).
					Int64("suppressed", held).Msg("too many backends (skipped)")
			}
		default:
			if b := s.add(e.path); b != nil {
				delete(s.notes, e.path)
				byFile[e.file] = b
				present++
			}
		}
	}
	if err != nil {
		return // only a whole listing says what is gone
	}
	for path := range s.notes {
		if !listed[path] {
			delete(s.notes, path)
		}
	}
	s.ignored.Store(int64(len(s.notes)))
	for path, b := range s.byPath {
		if st, _ := b.State(); st == StateFaulted && !sockets[path] {
			b.post(event{kind: evGone})
		}
	}
}

// maxTracked bounds the backends remembered, present or removed: a
// directory whose entries come and go faster than they are forgotten
// cannot grow the table without bound.
func (s *Set) maxTracked() int { return 2 * s.cfg.MaxBackends }

// fileID identifies a file: two paths to one socket have the same.
type fileID struct{ dev, ino uint64 }

// dirEntry is one entry of the socket directory, as a scan sees it.
type dirEntry struct {
	path string
	mode fs.FileMode // the type of what the name leads to, links followed
	file fileID      // for a socket
	link bool        // the name is a symbolic link
	err  error       // why what a link leads to is unknown
}

func (e *dirEntry) socket() bool { return e.err == nil && e.mode&fs.ModeSocket != 0 }

// examine finds out what each entry is. Only sockets and links (which may
// lead to one) cost a stat. Entries that are not links come first, so
// that a socket is its own backend rather than a link's to it.
func examine(dir string, entries []fs.DirEntry) []dirEntry {
	out := make([]dirEntry, 0, len(entries))
	for _, de := range entries {
		e := dirEntry{path: filepath.Join(dir, de.Name()), mode: de.Type(), link: de.Type()&fs.ModeSymlink != 0}
		if e.link || e.mode&fs.ModeSocket != 0 {
			fi, err := os.Stat(e.path)
			if err != nil {
				e.err = err
			} else {
				e.mode = fi.Mode().Type()
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					e.file = fileID{dev: uint64(st.Dev), ino: st.Ino}
				}
			}
		}
		out = append(out, e)
	}
	slices.SortStableFunc(out, func(a, b dirEntry) int {
		return cmp.Compare(boolInt(a.link), boolInt(b.link))
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// note is what a scan last made of an entry that is not a backend.
type note struct {
	msg  string
	mode fs.FileMode
	file fileID
}

// note records why the entry e is not a backend, logging it when that
// is new for the path or has changed: at debug level, except for a
// socket path too long to use, and never more than noteBurst records per
// 5 s. s.mu is held.
func (s *Set) note(e dirEntry, msg string, same *Backend) {
	n := note{msg: msg, mode: e.mode, file: e.file}
	if s.notes[e.path] == n {
		return
	}
	s.notes[e.path] = n
	level := zerolog.DebugLevel
	if msg == msgTooLong {
		level = zerolog.WarnLevel
	}
	ok, held := s.noteLog.Allow()
	if !ok {
		return
	}
	ev := s.log.WithLevel(level).Str("socket_path", EscapePath(e.path)).Int64("suppressed", held)
	switch {
	case same != nil:
		ev = ev.Uint16("same_as", uint16(same.id))
	case e.err != nil:
		ev = ev.Err(e.err)
	case msg == msgTooLong:
		ev = ev.Int("len", len(e.path))
	default:
		ev = ev.Str("type", fileType(e.mode))
	}
	ev.Msg(msg)
}

// Why an entry is not a backend.
const (
	msgNotSocket  = "not a socket (ignored)"
	msgTooLong    = "socket path too long for sun_path (skipped)"
	msgSameSocket = "same socket as another backend (ignored)"
)

// fileType names the type of a file that is not a socket.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "other"
	}
}

// inUse is what Links.Primaries said: the remotes whose primary each
// backend is. When known is false, nothing may be forgotten.
type inUse struct {
	ids   map[ID]int
	known bool
}

// primaries asks Links.Primaries, when some backend is removed (and so
// may be forgotten). It is called without s.mu: the remotes table calls
// into the Set with its own lock held.
func (s *Set) primaries() inUse {
	removed := false
	for _, b := range s.All() {
		if b.Removed() {
			removed = true
			break
		}
	}
	switch {
	case !removed:
		return inUse{}
	case s.links.Primaries == nil:
		return inUse{known: true}
	}
	return inUse{ids: s.links.Primaries(), known: true}
}

// forget drops the backends removed for ForgetAfter, and the ones removed
// longest, however recently, while more are removed than MaxBackends:
// their goroutines end, and their IDs are free again. A backend is kept
// while a remote has it as its primary (the remote's next query moves
// it), while its socket is listed again, and while the operator has
// changed its admin setting or weight. sockets are the socket paths
// listed; present counts the backends among them. s.mu is held.
func (s *Set) forget(sockets map[string]bool, present int, primaries map[ID]int) {
	now := s.cfg.Timeouts.Clock().Now()
	var can []*Backend
	for path, b := range s.byPath {
		st, _ := b.State()
		if st == StateRemoved && !sockets[path] && primaries[b.id] == 0 &&
			b.Admin() == AdminEnabled && b.Weight() == placement.DefaultWeight {
			can = append(can, b)
		}
	}
	if len(can) == 0 {
		return
	}
	slices.SortFunc(can, func(a, b *Backend) int { return cmp.Compare(a.since.Load(), b.since.Load()) })
	excess := len(s.byPath) - present - s.cfg.MaxBackends
	n := 0
	for i, b := range can {
		_, since := b.State()
		if now.Sub(since) < s.cfg.ForgetAfter && i >= excess {
			break
		}
		n++
	}
	if n == 0 {
		return
	}
	gone := make(map[*Backend]bool, n)
	for _, b := range can[:n] {
		gone[b] = true
		delete(s.byPath, b.path)
		b.cancel()
		s.forgotten.Add(1)
		if ok, held := s.churnLog.Allow(); ok {
			b.log.Info().Int64("suppressed", held).Msg("backend forgotten")
		}
	}
	next := slices.DeleteFunc(slices.Clone(*s.list.Load()), func(b *Backend) bool { return gone[b] })
	s.list.Store(&next)
}

// add creates the backend for path and starts its goroutine. It returns
// nil when no ID is free. s.mu is held.
func (s *Set) add(path string) *Backend {
	id := s.newID(filepath.Base(path))
	if id == 0 {
		if ok, held := s.fullLog.Allow(); ok {
			s.log.Error().Str("socket_path", EscapePath(path)).Int64("suppressed", held).Msg("no backend ID free (skipped)")
		}
		return nil
	}
	b := s.insert(id, path)
	if ok, held := s.churnLog.Allow(); ok {
		b.log.Info().Int64("suppressed", held).Msg("new backend")
	}
	s.start(b)
	return b
}

// newID chooses the ID of a new backend whose socket is called name: the
// name itself when it is a number from 5300 to 5399 (written plainly)
// and that ID is free, otherwise the lowest free ID outside that range,
// which is Binder's. 0 when none is free. s.mu is held.
func (s *Set) newID(name string) ID {
	list := *s.list.Load()
	if n, err := strconv.Atoi(name); err == nil && itoa(n) == name &&
		n >= firstNamedID && n <= lastNamedID && s.lookup(list, ID(n)) == nil {
		return ID(n)
	}
	next := 1
	for _, b := range list {
		if next == firstNamedID {
			next = lastNamedID + 1
		}
		if int(b.id) > next {
			break
		}
		if int(b.id) == next {
			next++
		}
	}
	if next == firstNamedID {
		next = lastNamedID + 1
	}
	if next > math.MaxUint16 {
		return 0
	}
	return ID(next)
}

// start runs b's goroutine, which forget can end on its own. s.mu is
// held, and the Set started.
func (s *Set) start(b *Backend) {
	ctx, cancel := context.WithCancel(s.ctx)
	b.cancel = cancel
	s.wg.Add(1)
	go b.run(ctx, &s.wg)
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

// Downs returns the queue of Down events, in the order the backends went
// down. It holds one for every backend the Set may track (twice
// MaxBackends); a backend goes down at most once per reconnect delay, so
// a consumer that keeps up never finds it full. An event that finds it
// full is lost, counted (Discovery's DownsLost) and logged (at most
// once per 5 s).
func (s *Set) Downs() <-chan Down { return s.downs }

// wentDown queues the Down event of b, which was ok, told why. It never
// blocks: it is called on b's goroutine.
func (s *Set) wentDown(b *Backend, why Fault) {
	select {
	case s.downs <- Down{Backend: b, Fault: why}:
	default:
		s.downLost.Add(1)
		if ok, held := s.downLog.Allow(); ok {
			b.log.Error().Int64("suppressed", held).Msg("down event lost: the queue of down events is full")
		}
	}
}

// stateChanged wakes those waiting for a change of a backend's state
// (WaitUp). It is called whenever one changes.
func (s *Set) stateChanged() {
	s.changeMu.Lock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	s.changeMu.Unlock()
}

// nextChange returns a channel closed at the next state change.
func (s *Set) nextChange() <-chan struct{} {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// WaitUp waits until each of the backends ids that the Set has is ok,
// woken by their state changes, or until ctx is done; it reports
// whether they all are ok. An ID the Set does not have is not waited
// for.
func (s *Set) WaitUp(ctx context.Context, ids []ID) bool {
	var want []*Backend
	for _, id := range ids {
		if b := s.Get(id); b != nil {
			want = append(want, b)
		}
	}
	for {
		change := s.nextChange() // before looking, so that no change is missed
		want = slices.DeleteFunc(want, (*Backend).OK)
		if len(want) == 0 {
			return true
		}
		select {
		case <-change:
		case <-ctx.Done():
			return false
		}
	}
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

// ResetCounters sets every counter the Set owns back to zero: those of
// Discovery and each backend's (see Backend.ResetCounters). The gauges
// stay.
func (s *Set) ResetCounters() {
	s.watch.resetCounters()
	s.forgotten.Store(0)
	s.downLost.Store(0)
	for _, b := range s.All() {
		b.ResetCounters()
	}
}

// Status reports whether backend id serves its remotes now (ok and not
// disabled), and whether it is unknown or its socket has been removed
// (gone).
func (s *Set) Status(id ID) (ok, gone bool) {
	b := s.Get(id)
	if b == nil {
		return false, true
	}
	return b.Serving(), b.Removed()
}

func itoa(n int) string { return strconv.Itoa(n) }
