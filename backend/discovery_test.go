package backend

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// loud counts the records with message msg (and fields) above debug
// level: what an operator's log shows.
func loud(logs *testbed.Logs, msg string, fields map[string]any) int {
	n := 0
	for _, r := range logs.Records() {
		if r["level"] != "debug" && r["level"] != "trace" && r.Match(msg, fields) {
			n++
		}
	}
	return n
}

func TestOnlySocketsAreBackends(t *testing.T) {
	const notSocket, sameSocket = "not a socket (ignored)", "same socket as another backend (ignored)"
	dir := testbed.SocketDir(t)
	touch(t, dir, "file")
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "5301")
	f := testbed.NewFake(t, live)
	// Two more names for the same socket: a symbolic link, which sorts
	// first, and a hard link.
	if err := os.Symlink(live, filepath.Join(dir, "5300")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(live, filepath.Join(dir, "hard")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	s, logs := newTestSet(t, dir, Config{})
	f.Accept(t).Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	s.Scan()
	s.Scan()
	if got := ids(s); len(got) != 1 || got["5301"] != 5301 {
		t.Fatalf("backends %v, want only 5301", got)
	}
	// Each is noted once, at debug level, however many scans.
	for name, msg := range map[string]string{
		"file": notSocket, "subdir": notSocket, "fifo": notSocket, "dangling": notSocket,
		"5300": sameSocket, "hard": sameSocket,
	} {
		path := filepath.Join(dir, name)
		if n := logs.Count(msg, map[string]any{"socket_path": path}); n != 1 {
			t.Errorf("%s: %q logged %d times, want once", name, msg, n)
		}
	}
	if n := s.Discovery().Ignored; n != 6 {
		t.Errorf("Discovery().Ignored = %d, want 6", n)
	}
	if n := logs.Count(sameSocket, map[string]any{"same_as": 5301}); n != 2 {
		t.Errorf("%d records name backend 5301 as the same socket, want 2", n)
	}
	for _, r := range logs.Records() {
		if r["level"] != "debug" && r["be_id"] != 5301.0 {
			t.Errorf("record about an entry that is no backend above debug level: %v", r)
		}
	}

	// An entry is looked at again when it changes: the file replaced by
	// a socket becomes a backend.
	os.Remove(filepath.Join(dir, "file"))
	stale(t, dir, "file")
	s.Scan()
	logs.Wait(t, "new backend", map[string]any{"be_path": filepath.Join(dir, "file")})
}

func TestBinderIDsAreKeptForBinderNames(t *testing.T) {
	dir := testbed.SocketDir(t)
	testbed.NewFake(t, filepath.Join(dir, "5301"))
	stale(t, dir, "stale000", "stale001", "stale002")
	s, _ := newTestSet(t, dir, Config{})
	// The real 5302 comes after the stale entries: its ID is still its
	// name, and no stale entry has an ID of Binder's.
	testbed.NewFake(t, filepath.Join(dir, "5302"))
	s.Scan()
	got := ids(s)
	if got["5302"] != 5302 || got["5301"] != 5301 {
		t.Fatalf("IDs %v: 5301 and 5302 should have their names", got)
	}
	for name, id := range got {
		if name != "5301" && name != "5302" && id >= firstNamedID && id <= lastNamedID {
			t.Errorf("%s has ID %d, one of Binder's", name, id)
		}
	}
}

// removeAll unlinks the named entries of dir.
func removeAll(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
}

// scansFor runs the periodic scans of d on the fake clock.
func scansFor(t *testing.T, s *Set, clock *timeouts.Fake, d time.Duration) {
	t.Helper()
	for end := clock.Now().Add(d); clock.Now().Before(end); {
		periodicScan(t, s, clock)
	}
}

func TestRemovedBackendsAreForgotten(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs, clock := newTickingSet(t, dir, func(s *Set) { s.cfg.MaxBackends = 3 })
	baseline := runtime.NumGoroutine()

	junk := []string{"a", "b", "c", "d"}
	stale(t, dir, junk...)
	periodicScan(t, s, clock)
	logs.Wait(t, "too many backends (skipped)", nil)
	if n := len(s.All()); n != 3 {
		t.Fatalf("%d backends, want the limit, 3", n)
	}
	idA := s.All()[0].ID()
	removeAll(t, dir, junk...)
	periodicScan(t, s, clock)
	testbed.Eventually(t, "the junk removed", func() bool {
		for _, b := range s.All() {
			if !b.Removed() {
				return false
			}
		}
		return true
	})

	// The limit counts the sockets present: a real one is served at
	// once, though the removed ones are still remembered.
	f := testbed.NewFake(t, filepath.Join(dir, "5302"))
	periodicScan(t, s, clock)
	c := f.Accept(t)
	c.Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5302})

	// A minute later they are forgotten, and their IDs are free.
	scansFor(t, s, clock, DefaultForgetAfter+DefaultScanInterval)
	if got := ids(s); len(got) != 1 || got["5302"] != 5302 {
		t.Fatalf("backends %v, want only 5302", got)
	}
	if n := logs.Count("backend forgotten", nil); n != 3 || s.Discovery().Forgotten != 3 {
		t.Fatalf("%d backends forgotten (counted %d), want 3", n, s.Discovery().Forgotten)
	}
	stale(t, dir, "e")
	periodicScan(t, s, clock)
	if got := ids(s)["e"]; got != idA {
		t.Fatalf("new entry has ID %d, want the forgotten %d", got, idA)
	}

	// Everything goes: so do the goroutines.
	f.Close()
	c.Close()
	removeAll(t, dir, "e")
	scansFor(t, s, clock, 3*DefaultForgetAfter)
	if n := len(s.All()); n != 0 {
		t.Fatalf("%d backends left", n)
	}
	testbed.Eventually(t, "the goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})
}

func TestReturningBackendKeepsItsIDWithinTheDelay(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs, clock := newTickingSet(t, dir, nil)
	stale(t, dir, "alpha")
	periodicScan(t, s, clock)
	id := ids(s)["alpha"]
	removeAll(t, dir, "alpha")
	periodicScan(t, s, clock)
	logs.Wait(t, "backend socket removed", map[string]any{"be_id": id})
	// Meanwhile another entry comes: it does not take alpha's ID.
	stale(t, dir, "beta")
	scansFor(t, s, clock, DefaultForgetAfter-2*DefaultScanInterval)
	if got := ids(s)["beta"]; got == id || got == 0 {
		t.Fatalf("beta has ID %d (alpha's is %d)", got, id)
	}
	f := testbed.NewFake(t, filepath.Join(dir, "alpha"))
	periodicScan(t, s, clock)
	f.Accept(t).Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": id})
	logs.Wait(t, "backend socket returned", map[string]any{"be_id": id})
}

func TestPrimariesAndSettingsAreNotForgotten(t *testing.T) {
	dir := testbed.SocketDir(t)
	var calls int
	s, logs, clock := newTickingSet(t, dir, func(s *Set) {
		s.links.Primaries = func() map[ID]int {
			calls++ // on the scan goroutine only
			return map[ID]int{5301: 2}
		}
	})
	stale(t, dir, "5301", "5302", "5303")
	periodicScan(t, s, clock)
	if calls != 0 {
		t.Fatalf("Primaries called %d times with nothing removed", calls)
	}
	s.Get(5302).SetAdmin(AdminDisabled)
	removeAll(t, dir, "5301", "5302", "5303")
	periodicScan(t, s, clock)
	logs.Wait(t, "backend socket removed", map[string]any{"be_id": 5303})
	scansFor(t, s, clock, 2*DefaultForgetAfter)
	if got := ids(s); len(got) != 2 || got["5301"] != 5301 || got["5302"] != 5302 {
		t.Fatalf("backends %v: want 5301 (a primary) and 5302 (disabled) kept", got)
	}
	if calls == 0 {
		t.Fatal("Primaries never asked")
	}
}

func TestFailingBackendLogsOncePerBackOffCap(t *testing.T) {
	dir := testbed.SocketDir(t)
	names := []string{"5301", "5302", "5303"}
	stale(t, dir, names...)
	s, logs, clock := newTickingSet(t, dir, nil)
	for _, n := range names {
		logs.Wait(t, "failed to connect", map[string]any{"be_path": filepath.Join(dir, n)})
	}
	// Four minutes of retries: 1 s, 3 s, 5 s ... 32 s apart.
	span := 4 * time.Minute
	retryFor(t, s, clock, span)
	for _, b := range s.All() {
		attempts := b.Stats().ConnectAttempts
		// Once when it starts, then at most once per 32 s.
		limit := 1 + int(span/DefaultReconnectMax)
		got := loud(logs, "failed to connect", map[string]any{"be_id": b.ID()})
		if got > limit || attempts < 10 {
			t.Errorf("backend %d: %d attempts logged %d times, want at most %d", b.ID(), attempts, got, limit)
		}
		if n := loud(logs, "connecting to backend", map[string]any{"be_id": b.ID()}); n > limit {
			t.Errorf("backend %d: 'connecting to backend' logged %d times, want at most %d", b.ID(), n, limit)
		}
	}
}

func TestTooManyBackendsIsLoggedOncePer5s(t *testing.T) {
	dir := testbed.SocketDir(t)
	names := make([]string, 12)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	stale(t, dir, names...)
	s, logs, clock := newTickingSet(t, dir, func(s *Set) { s.cfg.MaxBackends = 2 })
	s.Scan()
	if n := logs.Count("too many backends (skipped)", nil); n != 1 {
		t.Fatalf("logged %d times in one scan, want once", n)
	}
	periodicScan(t, s, clock)
	if n := logs.Count("too many backends (skipped)", nil); n != 2 {
		t.Fatalf("logged %d times in two scans 5 s apart, want twice", n)
	}
}

// retryFor moves the clock on by span, from one reconnect to the next,
// waiting at each for the backends due to have made their attempt.
func retryFor(t *testing.T, s *Set, clock *timeouts.Fake, span time.Duration) {
	t.Helper()
	end := clock.Now().Add(span)
	for {
		// Every attempt under way is over, and its retry armed.
		for _, b := range s.All() {
			testbed.Eventually(t, "the retry armed", func() bool {
				st, _ := b.State()
				return st != StateConnecting && (st != StateFaulted || b.armed(b.reconnectT))
			})
		}
		due := end
		for _, b := range s.All() {
			if at, ok := b.reconnectT.Armed(); ok && at.Before(due) {
				due = at
			}
		}
		if !due.Before(end) {
			clock.Advance(end.Sub(clock.Now()))
			return
		}
		attempts := map[ID]uint64{}
		for _, b := range s.All() {
			attempts[b.ID()] = b.Stats().ConnectAttempts
		}
		clock.Advance(due.Sub(clock.Now()))
		for _, b := range s.All() {
			if at, ok := b.reconnectT.Armed(); ok && !at.After(due) {
				testbed.Eventually(t, "the attempt", func() bool {
					at, ok := b.reconnectT.Armed()
					return b.Stats().ConnectAttempts > attempts[b.ID()] && ok && at.After(due)
				})
			}
		}
	}
}

func TestJunkDirectoryLogsLittle(t *testing.T) {
	dir := testbed.SocketDir(t)
	var files, socks []string
	for i := range 200 {
		files = append(files, fmt.Sprintf("junk%03d", i))
	}
	for i := range 30 {
		socks = append(socks, fmt.Sprintf("stale%03d", i))
	}
	touch(t, dir, files...)
	stale(t, dir, socks...)
	s, logs, clock := newTickingSet(t, dir, func(s *Set) { s.cfg.MaxBackends = 10 })
	testbed.Eventually(t, "10 backends tried", func() bool {
		n := 0
		for _, b := range s.All() {
			if st, _ := b.State(); st == StateFaulted {
				n++
			}
		}
		return n == 10
	})
	// 15 s of retries and periodic scans.
	for range 3 {
		retryFor(t, s, clock, DefaultScanInterval-time.Millisecond)
		periodicScan(t, s, clock)
	}
	// Each backend's first failure and its being found; "too many
	// backends" once per 5 s; nothing about the files.
	n := 0
	for _, r := range logs.Records() {
		if r["level"] != "debug" && r["level"] != "trace" {
			n++
		}
	}
	if want := 10 + 10 + 4; n > want {
		t.Fatalf("%d records above debug level, want at most %d", n, want)
	}
}
