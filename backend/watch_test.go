package backend

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// The tests in this file start from newTestSet, whose timers never run,
// so that only the directory watch can find a change; those about the
// fallback to periodic scans use newTickingSet.

// newTickingSet is newTestSet with the timers running on a fake clock,
// and a chance to change the Set before Start.
func newTickingSet(t *testing.T, dir string, setup func(*Set)) (*Set, *testbed.Logs, *timeouts.Fake) {
	t.Helper()
	clock := timeouts.NewFake(testbed.Epoch)
	ts := testbed.RunTimeouts(t, timeouts.New(clock))
	logs := testbed.NewLogs()
	s := NewSet(Config{Dir: dir, Timeouts: ts, Log: testbed.Logger(logs)})
	s.links.Replies = func(*Backend) ReplyBatch { return &testbed.Replies{} }
	if setup != nil {
		setup(s) // may add Links.Primaries
	}
	s.Start(s.links)
	t.Cleanup(s.Close)
	return s, logs, clock
}

// periodicScan moves the clock to the next periodic scan and waits until
// that scan is over (its timer armed again).
func periodicScan(t *testing.T, s *Set, clock *timeouts.Fake) {
	t.Helper()
	var due time.Time
	testbed.Eventually(t, "the scan timer armed", func() bool {
		var ok bool
		due, ok = s.scanT.Armed()
		return ok
	})
	clock.Advance(due.Sub(clock.Now()))
	testbed.Eventually(t, "the periodic scan", func() bool {
		next, ok := s.scanT.Armed()
		return ok && next.After(due)
	})
}

func TestWatchFindsNewSocketAtOnce(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	if !s.Discovery().WatchActive {
		t.Fatal("directory not watched")
	}
	connectFake(t, logs, dir, "5301", 5301)
	if d := s.Discovery(); d.Events == 0 || d.WatchScans == 0 {
		t.Fatalf("discovery %+v: the socket was not found through the watch", d)
	}
	// A name outside 5300-5399 gets an ID outside it, as from any scan.
	connectFake(t, logs, dir, "other", 1)
}

func TestWatchedUnlinkRemovesFaultedBackend(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	f, c := connectFake(t, logs, dir, "5301", 5301)
	b := s.Get(5301)
	c.Close()
	logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5301})
	testbed.Eventually(t, "a reconnect scheduled", func() bool { return b.armed(b.reconnectT) })
	// The socket goes: the backend is removed at once, as the reconnect
	// would have found, and is not reconnected.
	f.Close()
	logs.Wait(t, "backend socket removed", map[string]any{"be_id": 5301})
	if st, _ := b.State(); st != StateRemoved || !b.Removed() {
		t.Fatalf("state %v, want removed", st)
	}
	if b.armed(b.reconnectT) {
		t.Fatal("a removed backend is still to be reconnected")
	}
	if n := b.Stats().ConnectAttempts; n != 1 {
		t.Fatalf("%d connect attempts, want 1", n)
	}

	// It comes back: connected at once.
	mark := logs.Mark()
	f2 := testbed.NewFake(t, filepath.Join(dir, "5301"))
	f2.Accept(t).Hello(t)
	logs.WaitAfter(t, mark, "backend socket returned", map[string]any{"be_id": 5301})
	logs.WaitAfter(t, mark, "backend socket established", map[string]any{"be_id": 5301})
}

func TestWatchedUnlinkLeavesHealthyBackendAlone(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	f, c := connectFake(t, logs, dir, "5301", 5301)
	b := s.Get(5301)
	// As at a periodic scan, a backend whose session is up keeps it:
	// only a failed reconnect finds the socket gone.
	scans := s.Discovery().WatchScans
	f.Close()
	testbed.Eventually(t, "the scan for the unlink", func() bool { return s.Discovery().WatchScans > scans })
	if !b.OK() || logs.Count("backend socket removed", nil) != 0 {
		t.Fatalf("an up backend was acted on when its socket went (ok %v)", b.OK())
	}
	c.Close()
	logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5301})
	testbed.Eventually(t, "a reconnect scheduled", func() bool { return b.armed(b.reconnectT) })
}

func TestWatchCoalescesBursts(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, _ := newTestSet(t, dir, Config{})
	before := s.Discovery()
	// The burst happens while a scan cannot run: every event is read
	// before the next scan can start.
	s.mu.Lock()
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("s%03d", i)
	}
	stale(t, dir, names...)
	testbed.Eventually(t, "100 events read", func() bool { return s.Discovery().Events-before.Events >= 100 })
	s.mu.Unlock()
	testbed.Eventually(t, "100 backends", func() bool { return len(s.All()) == 100 })
	testbed.Eventually(t, "the scan counted", func() bool { return s.Discovery().WatchScans > before.WatchScans })
	if n := s.Discovery().WatchScans - before.WatchScans; n > 2 {
		t.Fatalf("100 events made %d scans, want 1 or 2", n)
	}
}

// inotifyEvent is one inotify event as read from the instance.
func inotifyEvent(wd int32, mask uint32, name string) []byte {
	n := (len(name) + 4) &^ 3 // with its NUL, padded
	b := make([]byte, unix.SizeofInotifyEvent+n)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(n))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

func TestWatchEvents(t *testing.T) {
	for _, tt := range []struct {
		name   string
		ev     func(wd int32) []byte
		scan   bool
		active bool
		log    string
	}{
		{"created", func(wd int32) []byte { return inotifyEvent(wd, unix.IN_CREATE, "5301") }, true, true, ""},
		{"deleted", func(wd int32) []byte { return inotifyEvent(wd, unix.IN_DELETE, "5301") }, true, true, ""},
		{"old watch", func(wd int32) []byte { return inotifyEvent(wd+1, unix.IN_CREATE, "5301") }, false, true, ""},
		{"overflow", func(int32) []byte { return inotifyEvent(-1, unix.IN_Q_OVERFLOW, "") }, true, true,
			"socket directory events lost (rescanning)"},
		{"directory deleted", func(wd int32) []byte {
			return append(inotifyEvent(wd, unix.IN_DELETE_SELF, ""), inotifyEvent(wd, unix.IN_IGNORED, "")...)
		}, true, false, "socket directory watch lost (periodic scans only)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, logs := newTestSet(t, testbed.SocketDir(t), Config{})
			wd := int32(s.watch.wd)
			if scan := s.handleEvents(tt.ev(wd)); scan != tt.scan {
				t.Errorf("scan %v, want %v", scan, tt.scan)
			}
			if got := s.Discovery().WatchActive; got != tt.active {
				t.Errorf("watch active %v, want %v", got, tt.active)
			}
			if tt.log != "" && logs.Count(tt.log, nil) != 1 {
				t.Errorf("%q not logged once", tt.log)
			}
		})
	}
}

func TestWatchFallsBackToPeriodicScans(t *testing.T) {
	for _, refused := range []struct {
		name  string
		setup func(s *Set, refuse *atomic.Bool)
		err   string
	}{
		{"instance refused", func(s *Set, refuse *atomic.Bool) {
			s.watch.init = func(flags int) (int, error) {
				if refuse.Load() {
					return -1, unix.EMFILE
				}
				return unix.InotifyInit1(flags)
			}
		}, "too many open files"},
		{"watch refused", func(s *Set, refuse *atomic.Bool) {
			s.watch.add = func(fd int, path string, mask uint32) (int, error) {
				if refuse.Load() {
					return -1, unix.ENOSPC
				}
				return unix.InotifyAddWatch(fd, path, mask)
			}
		}, "no space left on device"},
	} {
		t.Run(refused.name, func(t *testing.T) {
			dir := testbed.SocketDir(t)
			var refuse atomic.Bool
			refuse.Store(true)
			s, logs, clock := newTickingSet(t, dir, func(s *Set) { refused.setup(s, &refuse) })
			logs.Wait(t, "cannot watch socket directory (periodic scans only)", map[string]any{"error": refused.err})
			if s.Discovery().WatchActive {
				t.Fatal("watch active")
			}
			// The periodic scan finds sockets, and tries the watch
			// again without logging again.
			testbed.NewFake(t, filepath.Join(dir, "5301"))
			periodicScan(t, s, clock)
			logs.Wait(t, "new backend", map[string]any{"be_id": 5301})
			periodicScan(t, s, clock)
			if n := logs.Count("cannot watch socket directory (periodic scans only)", nil); n != 1 {
				t.Fatalf("logged %d times, want once", n)
			}
			// The watch becomes possible: the next scan puts it in
			// place.
			refuse.Store(false)
			periodicScan(t, s, clock)
			logs.Wait(t, "watching socket directory", nil)
			if !s.Discovery().WatchActive {
				t.Fatal("watch not active")
			}
			connectFake(t, logs, dir, "5302", 5302)
		})
	}

	t.Run("directory missing at start", func(t *testing.T) {
		dir := filepath.Join(testbed.SocketDir(t), "later")
		s, logs, clock := newTickingSet(t, dir, nil)
		logs.Wait(t, "cannot watch socket directory (periodic scans only)", map[string]any{"socket_dir": dir})
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		testbed.NewFake(t, filepath.Join(dir, "5301"))
		periodicScan(t, s, clock)
		logs.Wait(t, "new backend", map[string]any{"be_id": 5301})
		logs.Wait(t, "watching socket directory", nil)
		connectFake(t, logs, dir, "5302", 5302)
	})

	t.Run("directory recreated while a socket in it is bound", func(t *testing.T) {
		dir := filepath.Join(testbed.SocketDir(t), "d")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		s, logs, clock := newTickingSet(t, dir, nil)
		// The listener, unlinked but open, keeps the old directory
		// alive: no IN_DELETE_SELF comes.
		connectFake(t, logs, dir, "5301", 5301)
		removeAll(t, dir, "5301")
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		periodicScan(t, s, clock)
		if !s.Discovery().WatchActive {
			t.Fatal("watch not active")
		}
		// Found through the watch, without another periodic scan.
		connectFake(t, logs, dir, "5302", 5302)
	})

	for _, gone := range []struct {
		name string
		do   func(dir string) error
	}{
		{"directory deleted", os.Remove},
		{"directory moved", func(dir string) error { return os.Rename(dir, dir+".old") }},
	} {
		t.Run(gone.name, func(t *testing.T) {
			dir := filepath.Join(testbed.SocketDir(t), "d")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir + ".old") })
			s, logs, clock := newTickingSet(t, dir, nil)
			if err := gone.do(dir); err != nil {
				t.Fatal(err)
			}
			logs.Wait(t, "socket directory watch lost (periodic scans only)", map[string]any{"socket_dir": dir})
			testbed.Eventually(t, "watch inactive", func() bool { return !s.Discovery().WatchActive })
			// While the directory is away, the periodic scans go on.
			periodicScan(t, s, clock)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			periodicScan(t, s, clock)
			logs.Wait(t, "watching socket directory", map[string]any{"socket_dir": dir})
			connectFake(t, logs, dir, "5301", 5301)
		})
	}
}
