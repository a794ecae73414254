package backend

import (
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
)

// watchMask is what the socket directory's watch reports: an entry
// created, moved in or changed (a socket's mode fixed), an entry deleted
// or moved out, and the directory itself deleted or moved away.
const watchMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ATTRIB |
	unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// watchGone are the events after which the watch no longer covers the
// directory at Config.Dir: the kernel dropped it (IN_IGNORED, also after
// an unmount), or the directory was deleted or moved elsewhere.
const watchGone = unix.IN_IGNORED | unix.IN_UNMOUNT | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// eventBufLen is the inotify read buffer: room for hundreds of events,
// and always for one with the longest name (16 + NAME_MAX + 1 bytes).
const eventBufLen = 16 << 10

// watch is a Set's inotify instance, with at most one watch: on the
// socket directory. Its events only ever trigger a scan (see
// Set.readEvents); the periodic scan stays as the safety net for what
// the watch misses or cannot see.
type watch struct {
	// unix.InotifyInit1 and unix.InotifyAddWatch; tests replace them
	// before Start.
	init func(flags int) (int, error)
	add  func(fd int, path string, mask uint32) (int, error)

	overflows *timeouts.Limiter // "socket directory events lost"

	mu     sync.Mutex
	f      *os.File        // the inotify instance; nil when there is none
	rc     syscall.RawConn // f's descriptor, through the runtime poller
	wd     int             // the directory's watch descriptor; -1 when there is none
	down   bool            // "not watching" has been logged, and not its end since
	closed bool            // by Set.Close: no new instance

	dir    fileID        // the directory wd is on
	active atomic.Bool   // wd is in place
	events atomic.Uint64 // inotify events read
	scans  atomic.Uint64 // scans they triggered
}

// Discovery is a snapshot of how a Set learns of changes to the socket
// directory.
type Discovery struct {
	// WatchActive is whether the directory is watched with inotify now;
	// when it is not, only the periodic scan finds changes.
	WatchActive bool   `json:"watch_active"`
	Events      uint64 `json:"events"`      // inotify events read
	WatchScans  uint64 `json:"watch_scans"` // scans those events triggered
	// Ignored counts the directory's entries that are no backend (not
	// a socket, a second name for one, a path too long), as of the
	// last scan.
	Ignored int `json:"ignored"`
	// Forgotten counts the backends forgotten after their socket was
	// gone for ForgetAfter.
	Forgotten uint64 `json:"forgotten"`
	// DownsLost counts the Down events the full queue could not take
	// (see Set.Downs): a consumer that keeps up sees none.
	DownsLost uint64 `json:"downs_lost"`
}

// Discovery reports on the directory watch.
func (s *Set) Discovery() Discovery {
	w := &s.watch
	return Discovery{WatchActive: w.active.Load(), Events: w.events.Load(), WatchScans: w.scans.Load(),
		Ignored: int(s.ignored.Load()), Forgotten: s.forgotten.Load(), DownsLost: s.downLost.Load()}
}

// resetCounters sets the watch's counters back to zero.
func (w *watch) resetCounters() {
	w.events.Store(0)
	w.scans.Store(0)
}

// openWatch watches the directory, unless it is watched already: it
// makes the inotify instance (and starts readEvents) if there is none,
// and adds the watch. Start calls it before the first scan, so that
// nothing created after that scan goes unseen, and scanLoop before each
// periodic scan, for a directory that has come back or a limit no longer
// reached. A failure is logged once, and the end of it.
//
// A watch stays on the directory it was made for, and a directory
// deleted while backends' sockets are still bound in it lives on, unseen,
// without IN_DELETE_SELF: so openWatch also compares the directory at
// Config.Dir with the one watched (device and inode), and moves the watch
// when they differ.
func (s *Set) openWatch() {
	w := &s.watch
	cur, curErr := dirFile(s.cfg.Dir)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if w.active.Load() {
		if curErr == nil && cur == w.dir {
			return
		}
		s.unwatch()
		s.watchDown(curErr, "socket directory watch lost (periodic scans only)")
	}
	if w.f == nil {
		fd, err := w.init(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			s.watchDown(err, "cannot watch socket directory (periodic scans only)")
			return
		}
		// A nonblocking descriptor is read through the runtime
		// poller: readEvents sleeps until there is something to
		// read, and Close wakes it.
		w.f = os.NewFile(uintptr(fd), "inotify")
		if w.rc, err = w.f.SyscallConn(); err != nil {
			panic(err) // only for a nil *os.File
		}
		s.wg.Add(1)
		go s.readEvents(w.rc)
	}
	var wd int
	var err error
	if cerr := w.rc.Control(func(fd uintptr) { wd, err = w.add(int(fd), s.cfg.Dir, watchMask) }); cerr != nil {
		return // closed
	}
	if err != nil {
		s.watchDown(err, "cannot watch socket directory (periodic scans only)")
		return
	}
	w.wd = wd
	if after, err := dirFile(s.cfg.Dir); curErr != nil || err != nil || after != cur {
		// Replaced meanwhile: which one is watched is unknown. The
		// next periodic scan tries again.
		s.unwatch()
		w.wd = -1
		return
	}
	w.dir = cur
	w.active.Store(true)
	if w.down {
		w.down = false
		s.log.Info().Str("socket_dir", EscapePath(s.cfg.Dir)).Msg("watching socket directory")
	}
}

// watchDown logs msg, unless the watch is already known to be missing.
// w.mu is held.
func (s *Set) watchDown(err error, msg string) {
	w := &s.watch
	w.wd = -1
	w.active.Store(false)
	if w.down {
		return
	}
	w.down = true
	ev := s.log.Warn().Str("socket_dir", EscapePath(s.cfg.Dir))
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msg(msg)
}

// readEvents is the goroutine of the inotify instance rc: it reads
// events until the instance is closed, and asks scanLoop for a scan
// after each read that reported a change. One read returns every event
// queued, and a scan asked for while one is pending is the same scan, so
// a burst of changes makes a scan or two, not one each.
func (s *Set) readEvents(rc syscall.RawConn) {
	defer s.wg.Done()
	buf := make([]byte, eventBufLen)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return // closed
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			// Not seen on a sound descriptor: give the instance up,
			// and let the next periodic scan make another.
			s.dropInstance(rerr)
			return
		}
		if s.handleEvents(buf[:n]) {
			select {
			case s.watchKick <- struct{}{}:
			default:
			}
		}
	}
}

// handleEvents counts the events in buf and keeps track of the watch. It
// reports whether a scan is wanted.
func (s *Set) handleEvents(buf []byte) (scan bool) {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(buf) >= unix.SizeofInotifyEvent {
		wd := int(int32(binary.NativeEndian.Uint32(buf[0:])))
		mask := binary.NativeEndian.Uint32(buf[4:])
		size := unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[12:]))
		buf = buf[min(size, len(buf)):]
		w.events.Add(1)
		switch {
		case mask&unix.IN_Q_OVERFLOW != 0:
			// The kernel's queue was full: events were lost, so what
			// changed is unknown. A scan finds out.
			if ok, held := w.overflows.Allow(); ok {
				s.log.Warn().Str("socket_dir", EscapePath(s.cfg.Dir)).Int64("suppressed", held).
					Msg("socket directory events lost (rescanning)")
			}
			scan = true
		case wd != w.wd:
			// From a watch already given up.
		case mask&watchGone != 0:
			s.lostWatch(mask)
			scan = true
		default:
			scan = true
		}
	}
	return scan
}

// lostWatch gives up the watch: the directory at Config.Dir is no longer
// the one watched. A moved directory's watch would still report on it
// where it went, so it is removed. Later periodic scans add the watch
// again once the directory is back. w.mu is held.
func (s *Set) lostWatch(mask uint32) {
	if mask&unix.IN_IGNORED == 0 {
		s.unwatch()
	}
	s.watchDown(nil, "socket directory watch lost (periodic scans only)")
}

// unwatch removes the watch wd. w.mu is held.
func (s *Set) unwatch() {
	w := &s.watch
	wd := uint32(w.wd)
	w.rc.Control(func(fd uintptr) { unix.InotifyRmWatch(int(fd), wd) })
}

// dirFile identifies the directory at path.
func dirFile(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: st.Dev, ino: st.Ino}, nil
}

// dropInstance closes the inotify instance after a failed read.
func (s *Set) dropInstance(err error) {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		w.f.Close()
		w.f, w.rc = nil, nil
	}
	s.watchDown(err, "socket directory watch lost (periodic scans only)")
}

// closeWatch closes the inotify instance, which ends readEvents, and
// keeps openWatch from making another.
func (s *Set) closeWatch() {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f != nil {
		w.f.Close()
		w.f, w.rc = nil, nil
	}
	w.wd = -1
	w.active.Store(false)
}
