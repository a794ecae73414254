package backend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newTestSet returns a started Set on dir, closed at the end of the
// test. Its timeouts are on a fake clock that nothing advances, and no
// goroutine runs them: no timer of the Set ever fires (no heartbeat,
// reconnect back-off or fault timeout).
func newTestSet(t *testing.T, dir string, cfg Config) (*Set, *testbed.Logs) {
	t.Helper()
	logs := testbed.NewLogs()
	ts := timeouts.New(timeouts.NewFake(testbed.Epoch))
	cfg.Dir, cfg.Timeouts = dir, ts
	cfg.Log = testbed.Logger(logs)
	s := NewSet(cfg)
	s.Start(Links{Replies: func(*Backend) ReplyBatch { return &testbed.Replies{} }})
	t.Cleanup(s.Close)
	return s, logs
}

func touch(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// stale makes sockets that nothing listens on, as a crashed backend
// leaves: connecting to one is refused.
func stale(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		path := filepath.Join(dir, n)
		bind := path
		if len(path) > maxSocketPath { // bound short, then renamed
			bind = filepath.Join(dir, ".bind")
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Bind(fd, &unix.SockaddrUnix{Name: bind})
		unix.Close(fd)
		if err == nil && bind != path {
			err = os.Rename(bind, path)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func ids(s *Set) map[string]ID {
	out := map[string]ID{}
	for _, b := range s.All() {
		out[filepath.Base(b.Path())] = b.ID()
	}
	return out
}

func TestIDsFromSocketNames(t *testing.T) {
	dir := testbed.SocketDir(t)
	// ReadDir returns names sorted: +5303, 05302, 5299, 5301, 5301x,
	// 5399, 5400, foo. Only a plain number from 5300 to 5399 is an ID
	// from Binder's range; the others get the lowest free ID outside it.
	stale(t, dir, "+5303", "05302", "5299", "5301", "5301x", "5399", "5400", "foo")
	s, _ := newTestSet(t, dir, Config{})
	want := map[string]ID{"+5303": 1, "05302": 2, "5299": 3, "5301": 5301, "5301x": 4, "5399": 5399, "5400": 5, "foo": 6}
	got := ids(s)
	for name, id := range want {
		if got[name] != id {
			t.Errorf("%s: ID %d, want %d (all: %v)", name, got[name], id, got)
		}
	}
	// A later socket named after a taken ID gets the next free one, and
	// All stays in ID order.
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	stale(t, filepath.Join(dir, "sub"), "5301")
	s2, _ := newTestSet(t, filepath.Join(dir, "sub"), Config{})
	if got := ids(s2)["5301"]; got != 5301 {
		t.Fatalf("first 5301 in a new set: %d", got)
	}
	all := s.All()
	for i := 1; i < len(all); i++ {
		if all[i-1].ID() >= all[i].ID() {
			t.Fatalf("All not in ID order: %d before %d", all[i-1].ID(), all[i].ID())
		}
	}
}

func TestLongPathsAndTooManyBackendsAreSkippedOnce(t *testing.T) {
	dir := testbed.SocketDir(t)
	long := strings.Repeat("x", maxSocketPath-len(dir)) // one byte too long with the slash
	stale(t, dir, "a", "b", "c", long)
	s, logs := newTestSet(t, dir, Config{MaxBackends: 2})
	s.Scan()
	s.Scan()
	if n := logs.Count("socket path too long for sun_path (skipped)", nil); n != 1 {
		t.Fatalf("long path logged %d times, want once", n)
	}
	if n := logs.Count("too many backends (skipped)", map[string]any{"max_backends": 2}); n != 1 {
		t.Fatalf("too many backends logged %d times, want once", n)
	}
	if got := ids(s); len(got) != 2 || got["a"] == 0 || got["b"] == 0 {
		t.Fatalf("backends %v, want a and b", got)
	}
}

func TestDirectoryErrorsLoggedOncePerChange(t *testing.T) {
	dir := filepath.Join(testbed.SocketDir(t), "later")
	s, logs := newTestSet(t, dir, Config{})
	s.Scan()
	s.Scan()
	if n := logs.Count("error reading socket directory", nil); n != 1 {
		t.Fatalf("logged %d times, want once", n)
	}
	os.Mkdir(dir, 0o755)
	s.Scan()
	logs.Wait(t, "socket directory readable again", nil)
}

// connectFake listens on name in dir and completes the balancer's
// handshake, waiting for the balancer to see it.
func connectFake(t *testing.T, logs *testbed.Logs, dir, name string, id int) (*testbed.Fake, *testbed.FakeConn) {
	t.Helper()
	f := testbed.NewFake(t, filepath.Join(dir, name))
	c := f.Accept(t)
	c.Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": id})
	return f, c
}

func TestScanRemovesFaultedBackendWhoseSocketIsGone(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	f1 := testbed.NewFake(t, filepath.Join(dir, "5301"))
	f2 := testbed.NewFake(t, filepath.Join(dir, "5302"))
	s.Scan()
	c1, c2 := f1.Accept(t), f2.Accept(t)
	c1.Hello(t)
	c2.Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5302})
	up, faulted := s.Get(5301), s.Get(5302)
	c2.Close()
	logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302})
	testbed.Eventually(t, "a reconnect scheduled", func() bool { return faulted.armed(faulted.reconnectT) })

	// Both sockets go. The faulted backend is removed, as its reconnect
	// would find, without the attempt; the one whose session is up keeps
	// it.
	f1.Close()
	f2.Close()
	s.Scan()
	logs.Wait(t, "backend socket removed", map[string]any{"be_id": 5302})
	if st, _ := faulted.State(); st != StateRemoved || faulted.armed(faulted.reconnectT) {
		t.Fatalf("state %v, reconnect armed %v; want removed, nothing scheduled", st, faulted.armed(faulted.reconnectT))
	}
	if n := faulted.Stats().ConnectAttempts; n != 1 {
		t.Fatalf("%d connect attempts, want 1", n)
	}
	if !up.OK() || logs.Count("backend socket removed", map[string]any{"be_id": 5301}) != 0 {
		t.Fatal("a backend whose session is up was acted on")
	}
}

func TestQueueBoundsAndStates(t *testing.T) {
	q := newQueue(100, 1000, 0)
	frame := protocol.AppendUDP(nil, protocol.FrameInboundUDP, 1, 2, make([]byte, 24)) // 40 bytes
	if q.push(frame, true, 0) != pushDown || q.push(frame, false, 0) != pushDown {
		t.Fatal("a closed queue accepted a frame")
	}
	q.reset(queueControl)
	if q.push(frame, false, 0) != pushDown {
		t.Fatal("data accepted before SERVER_HELLO")
	}
	hello := protocol.AppendType(nil, protocol.FrameClientHello)
	if q.push(hello, true, 0) != pushed {
		t.Fatal("control frame refused while connecting")
	}
	q.open()
	for range 2 {
		if q.push(frame, false, 0) != pushed {
			t.Fatal("data refused while open")
		}
	}
	if q.push(frame, false, 0) != pushStuck {
		t.Fatal("queue grew past its cap in bytes")
	}
	if b, f := q.length(); b != 84 || f != 3 {
		t.Fatalf("length %d bytes %d frames", b, f)
	}

	// One writer at a time.
	bt, _, ok := q.take(0)
	if !ok || len(bt.bytes()) != 84 {
		t.Fatalf("take %d bytes", len(bt.bytes()))
	}
	if _, _, again := q.take(0); again {
		t.Fatal("a second writer got the queue")
	}
	// The batch out for writing still counts against the cap.
	if q.push(frame, false, 0) != pushStuck {
		t.Fatal("queue took more than its cap while a batch was out")
	}
	if q.done(bt, 84) {
		t.Fatal("something left after a whole write")
	}
	// A partial write: the rest goes back in front of what came since.
	a := protocol.AppendUDP(nil, protocol.FrameInboundUDP, 7, 7, make([]byte, 24))
	q.push(a, false, 0)
	bt, _, _ = q.take(0)
	q.push(frame, false, 0)
	if more := q.done(bt, 10); !more {
		t.Fatal("done after a partial write reports nothing left")
	}
	if n, f := q.length(); n != 30+40 || f != 2 {
		t.Fatalf("after a partial write: %d bytes, %d frames; want 70, 2", n, f)
	}
	bt, _, _ = q.take(0)
	if b := bt.bytes(); string(b) != string(append(append([]byte{}, a[10:]...), frame...)) {
		t.Fatalf("requeued bytes out of order")
	}
	// A write that outlives a reset is dropped, whatever it wrote.
	if n := q.reset(queueControl); n != 0 {
		t.Fatalf("reset discarded %d frames of a batch being written", n)
	}
	q.push(hello, true, 0)
	if q.done(bt, 3) {
		t.Fatal("a stale write put bytes back")
	}
	if got, _, _ := q.take(0); string(got.bytes()) != string(hello) {
		t.Fatalf("after a stale write the queue holds %x", got.bytes())
	}

	// Once both buffers have grown, pushing and writing allocate nothing.
	q.reset(queueOpen)
	if a := testing.AllocsPerRun(1000, func() {
		q.push(frame, false, 0)
		bt, _, _ := q.take(0)
		q.done(bt, len(bt.bytes()))
	}); a != 0 {
		t.Fatalf("queue allocates %.1f per frame", a)
	}
}

func TestQueueFrameCapAndAge(t *testing.T) {
	const second = int64(time.Second)
	q := newQueue(1<<20, 3, second)
	q.reset(queueOpen)
	frame := protocol.AppendUDP(nil, protocol.FrameInboundUDP, 1, 2, make([]byte, 8))
	hb := protocol.AppendType(nil, protocol.FrameClientHeartbeat)
	q.push(frame, false, 0)
	q.push(frame, false, second/2)
	q.push(hb, true, 0)
	if q.push(frame, false, second) != pushStuck {
		t.Fatal("queue grew past its cap in frames")
	}
	// At 1.2 s the first frame is too old, the second is not: only the
	// first is dropped, and the heartbeat stays.
	bt, expired, ok := q.take(second + second/5)
	if !ok || expired != 1 || len(bt.bytes()) != len(frame)+len(hb) {
		t.Fatalf("take: ok %v, expired %d, %d bytes", ok, expired, len(bt.bytes()))
	}
	q.done(bt, len(bt.bytes()))
	// Everything expired: nothing to write, the count returned.
	q.push(frame, false, 0)
	q.push(frame, false, 0)
	if _, expired, ok := q.take(2 * second); ok || expired != 2 {
		t.Fatalf("all expired: ok %v, expired %d", ok, expired)
	}
	if n, f := q.length(); n != 0 || f != 0 {
		t.Fatalf("after expiry %d bytes %d frames", n, f)
	}
	// The rest of a partly written frame never expires.
	q.push(frame, false, 0)
	bt, _, _ = q.take(0)
	q.done(bt, 5)
	if bt, expired, ok := q.take(10 * second); !ok || expired != 0 || len(bt.bytes()) != len(frame)-5 {
		t.Fatalf("rest of a frame: ok %v, expired %d, %d bytes", ok, expired, len(bt.bytes()))
	}
}

func TestReplyPathAllocatesNothing(t *testing.T) {
	s, _ := newTestSet(t, testbed.SocketDir(t), Config{})
	b := newBackend(s, 1, "x")
	batch := &testbed.Replies{}
	f := protocol.Frame{Type: protocol.FrameOutboundUDP, IP: 0x7f000001, Port: 5353, Data: make([]byte, 60)}
	if a := testing.AllocsPerRun(1000, func() { b.reply(&f, batch) }); a != 0 {
		t.Fatalf("reply allocates %.1f per packet", a)
	}
	sent := batch.Added()
	f.Port = 0
	b.reply(&f, batch)
	if st := b.Stats(); st.OutboundErrors != 1 || int64(st.OutboundUDP) != sent+1 || batch.Added() != sent {
		t.Fatalf("a reply to port 0 was not refused and counted: %+v", st)
	}
}

// Set.ResetCounters resets everything the Set owns: the discovery
// counters and each backend's.
func TestSetResetCountersResetsBackendsToo(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	connectFake(t, logs, dir, "5301", 5301)
	b := s.Get(5301)
	if st, d := b.Stats(), s.Discovery(); st.ConnectAttempts == 0 || d.Events == 0 || d.WatchScans == 0 {
		t.Fatalf("before the reset: connect attempts %d, discovery %+v", st.ConnectAttempts, d)
	}
	s.ResetCounters()
	if st, d := b.Stats(), s.Discovery(); st.ConnectAttempts != 0 || d.Events != 0 || d.WatchScans != 0 {
		t.Fatalf("after the reset: connect attempts %d, discovery %+v", st.ConnectAttempts, d)
	}
	if !b.OK() {
		t.Fatal("the reset touched the backend's state")
	}
}

// A batch of frames from one reader: as many as fit, from the first,
// whole and in order, in the bytes and frames left; the rest refused as
// stuck, or all of it as down when the queue is not open. Each frame
// expires on its own.
func TestQueueBatch(t *testing.T) {
	const second = int64(time.Second)
	q := newQueue(100, 4, second)
	a := protocol.AppendUDP(nil, protocol.FrameInboundUDP, 1, 2, make([]byte, 24)) // 40 bytes
	b := protocol.AppendUDP(nil, protocol.FrameInboundUDP, 3, 4, make([]byte, 14)) // 30 bytes
	frames := append(append(append([]byte{}, a...), b...), a...)
	ends := []int32{40, 70, 110}
	if n, r := q.pushBatch(frames, ends, 0); n != 0 || r != pushDown {
		t.Fatalf("closed queue: %d, %v", n, r)
	}
	q.reset(queueOpen)
	// 110 bytes: the third frame does not fit in 100.
	if n, r := q.pushBatch(frames, ends, 0); n != 2 || r != pushStuck {
		t.Fatalf("batch into 100 bytes: %d queued, %v; want 2, stuck", n, r)
	}
	if n, f := q.length(); n != 70 || f != 2 {
		t.Fatalf("length %d bytes %d frames", n, f)
	}
	bt, _, _ := q.take(0)
	if string(bt.bytes()) != string(frames[:70]) {
		t.Fatal("batch not queued whole and in order")
	}
	q.done(bt, len(bt.bytes()))
	// The cap in frames: 4, of which a single push holds one.
	q = newQueue(1<<20, 4, second)
	q.reset(queueOpen)
	q.push(b, false, 0)
	if n, r := q.pushBatch(frames[:70], ends[:2], second/2); n != 2 || r != pushed {
		t.Fatalf("batch of two beside one: %d, %v", n, r)
	}
	if n, r := q.pushBatch(frames[:70], ends[:2], second/2); n != 1 || r != pushStuck {
		t.Fatalf("batch of two into one frame left: %d, %v", n, r)
	}
	// At 1.2 s the single frame has expired, the batch's have not.
	bt, expired, ok := q.take(second + second/5)
	if !ok || expired != 1 || len(bt.bytes()) != 40+30+40 || string(bt.bytes()) != string(append(frames[:70:70], a...)) {
		t.Fatalf("take: ok %v, expired %d, %d bytes", ok, expired, len(bt.bytes()))
	}
}
