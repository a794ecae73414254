package timeouts

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// runSet starts s.Run and returns a channel of fired names.
func runSet(t *testing.T, s *Set) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

type recorder struct {
	mu    sync.Mutex
	fired []string
	ch    chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 100)} }

func (r *recorder) fn(name string) func() {
	return func() {
		r.mu.Lock()
		r.fired = append(r.fired, name)
		r.mu.Unlock()
		r.ch <- name
	}
}

func (r *recorder) expect(t *testing.T, names ...string) {
	t.Helper()
	for _, want := range names {
		select {
		case got := <-r.ch:
			if got != want {
				t.Fatalf("fired %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q did not fire", want)
		}
	}
}

// expectNone checks nothing has fired. Callbacks run in due order on one
// goroutine, so arming a sentinel due now and seeing it fire first proves
// nothing earlier was pending.
func (r *recorder) expectNone(t *testing.T, s *Set) {
	t.Helper()
	s.NewTimeout("sentinel", r.fn("sentinel")).Set(0)
	r.expect(t, "sentinel")
}

func TestFiresInDueOrderOnFakeClock(t *testing.T) {
	clock := NewFake(epoch)
	s := New(clock)
	r := newRecorder()
	c := s.NewTimeout("c", r.fn("c"))
	a := s.NewTimeout("a", r.fn("a"))
	b := s.NewTimeout("b", r.fn("b"))
	c.Set(30 * time.Second)
	a.Set(5 * time.Second)
	b.Set(15 * time.Second)

	got := s.List()
	want := []Entry{{"a", epoch.Add(5 * time.Second)}, {"b", epoch.Add(15 * time.Second)}, {"c", epoch.Add(30 * time.Second)}}
	if len(got) != len(want) {
		t.Fatalf("List = %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("List[%d] = %v, want %v", i, got[i], want[i])
		}
	}

	runSet(t, s)
	r.expectNone(t, s)
	clock.Advance(4 * time.Second)
	r.expectNone(t, s)
	clock.Advance(time.Second)
	r.expect(t, "a")
	clock.Advance(time.Minute)
	r.expect(t, "b", "c")
	if s.Len() != 0 {
		t.Fatalf("Len = %d after all fired", s.Len())
	}
	if _, armed := a.Armed(); armed {
		t.Fatal("a still armed after firing")
	}
}

func TestRearmMovesAndClearDisarms(t *testing.T) {
	clock := NewFake(epoch)
	s := New(clock)
	r := newRecorder()
	runSet(t, s)
	a := s.NewTimeout("a", r.fn("a"))
	b := s.NewTimeout("b", r.fn("b"))
	a.Set(time.Second)
	a.Set(10 * time.Second) // moved, not duplicated
	b.Set(2 * time.Second)
	b.Clear()
	b.Clear() // harmless
	if n := s.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	if due, armed := a.Armed(); !armed || !due.Equal(epoch.Add(10*time.Second)) {
		t.Fatalf("a.Armed = %v %v", due, armed)
	}
	clock.Advance(5 * time.Second)
	r.expectNone(t, s)
	clock.Advance(5 * time.Second)
	r.expect(t, "a")
}

func TestPeriodicRearmFromCallback(t *testing.T) {
	clock := NewFake(epoch)
	s := New(clock)
	runSet(t, s)
	ticks := make(chan time.Time, 10)
	var tick *Timeout
	tick = s.NewTimeout("tick", func() {
		// Re-armed before the test hears of the tick and moves the
		// clock on.
		now := clock.Now()
		tick.Set(5 * time.Second)
		ticks <- now
	})
	tick.Set(5 * time.Second)
	for i := 1; i <= 3; i++ {
		clock.Advance(5 * time.Second)
		select {
		case at := <-ticks:
			if want := epoch.Add(time.Duration(i) * 5 * time.Second); !at.Equal(want) {
				t.Fatalf("tick %d at %v, want %v", i, at, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("tick %d missing", i)
		}
	}
}

func TestSoonerTimeoutWakesRun(t *testing.T) {
	// On the real clock: Run is asleep for an hour-long timer when a
	// short one is armed; the short one must not wait for the long one.
	s := New(System)
	r := newRecorder()
	runSet(t, s)
	s.NewTimeout("long", r.fn("long")).Set(time.Hour)
	s.NewTimeout("short", r.fn("short")).Set(time.Millisecond)
	r.expect(t, "short")
}

func TestFakeTimerStopAndReset(t *testing.T) {
	clock := NewFake(epoch)
	tm := clock.NewTimer(time.Second)
	if !tm.Stop() {
		t.Fatal("Stop of armed timer = false")
	}
	clock.Advance(time.Second)
	select {
	case <-tm.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if tm.Reset(time.Second) {
		t.Fatal("Reset of stopped timer = true")
	}
	clock.Advance(time.Second)
	select {
	case at := <-tm.C():
		if !at.Equal(epoch.Add(2 * time.Second)) {
			t.Fatalf("fired at %v", at)
		}
	default:
		t.Fatal("reset timer did not fire")
	}
}

func TestLimiter(t *testing.T) {
	clock := NewFake(epoch)
	l := NewLimiter(clock, 5*time.Second)
	if ok, held := l.Allow(); !ok || held != 0 {
		t.Fatalf("first event: %v %d", ok, held)
	}
	for range 3 {
		if ok, _ := l.Allow(); ok {
			t.Fatal("second event within 5 s let through")
		}
	}
	clock.Advance(5*time.Second - 1)
	if ok, _ := l.Allow(); ok {
		t.Fatal("let through early")
	}
	clock.Advance(1)
	if ok, held := l.Allow(); !ok || held != 4 {
		t.Fatalf("after 5 s: %v, held %d, want 4", ok, held)
	}
	if a := testing.AllocsPerRun(100, func() { l.Allow() }); a != 0 {
		t.Fatalf("Allow allocates %.1f", a)
	}
}

func TestBurstLimiter(t *testing.T) {
	clock := NewFake(epoch)
	l := NewBurstLimiter(clock, time.Second, 3)
	for i := range 3 {
		if ok, _ := l.Allow(); !ok {
			t.Fatalf("event %d of the burst held", i)
		}
	}
	for range 5 {
		if ok, _ := l.Allow(); ok {
			t.Fatal("event past the burst let through")
		}
	}
	clock.Advance(time.Second)
	if ok, held := l.Allow(); !ok || held != 5 {
		t.Fatalf("next interval: %v, held %d, want 5", ok, held)
	}
}

func TestAgainKeepsAPeriodicScheduleWhenTheCallbackIsLate(t *testing.T) {
	clock := NewFake(epoch)
	s := New(clock)
	tick := s.NewTimeout("tick", func() {})
	tick.Set(5 * time.Second)
	// The callback runs at 12 s for the tick due at 5 s: the next is
	// due at once (10 s is past), and the one after at 17 s, not 22 s.
	clock.Advance(12 * time.Second)
	tick.Again(5 * time.Second)
	if due, ok := tick.Armed(); !ok || !due.Equal(epoch.Add(12*time.Second)) {
		t.Fatalf("due %v, want now", due)
	}
	tick.Again(5 * time.Second)
	if due, _ := tick.Armed(); !due.Equal(epoch.Add(17 * time.Second)) {
		t.Fatalf("due %v, want 17 s", due)
	}
	// On time, Again is Set.
	clock.Advance(5 * time.Second)
	tick.Again(5 * time.Second)
	if due, _ := tick.Armed(); !due.Equal(epoch.Add(22 * time.Second)) {
		t.Fatalf("due %v, want 22 s", due)
	}
	// Never armed: from now.
	fresh := s.NewTimeout("fresh", func() {})
	fresh.Again(time.Second)
	if due, _ := fresh.Armed(); !due.Equal(epoch.Add(18 * time.Second)) {
		t.Fatalf("fresh due %v", due)
	}
}
