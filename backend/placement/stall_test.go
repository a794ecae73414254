package placement

import (
	"testing"
	"time"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func newStallSet(t *testing.T) (*testSet, *Stalls[ID, *fake], *testbed.Logs) {
	t.Helper()
	s, logs := newTestSet(t, testConfig{})
	fakeList(s, map[ID]bool{1: true, 2: true})
	st := NewStalls(s, StallConfig{Floor: DefaultStallFloor, Log: s.log, Clock: timeouts.NewFake(testbed.Epoch)})
	return s, st, logs
}

// checkEvery checks st every StallCheckInterval from from to to (unix
// nanoseconds), as the UDP proxy's timer does, and returns to.
func checkEvery(st *Stalls[ID, *fake], from, to int64) int64 {
	for now := from; now < to; now += int64(StallCheckInterval) {
		st.Check(now)
	}
	st.Check(to)
	return to
}

// oneOutstanding gives b one query outstanding and one answer at 1 ms:
// its threshold is the floor.
func oneOutstanding(b *fake) {
	b.load.QueriesSent(2)
	b.load.QueriesAnswered(1, 1, time.Millisecond)
}

func TestStallThresholdFollowsTheBackendsLatency(t *testing.T) {
	s, st, _ := newStallSet(t)
	l := &s.Get(1).load
	if got := st.threshold(l); got != MaxStallThreshold {
		t.Fatalf("threshold %v before any answer, want %v", got, MaxStallThreshold)
	}
	for _, c := range []struct{ lat, want time.Duration }{
		{time.Millisecond, DefaultStallFloor},
		{50 * time.Millisecond, 400 * time.Millisecond},
		{300 * time.Millisecond, MaxStallThreshold},
	} {
		l.samples.Store(0)
		l.QueriesAnswered(1, 1, c.lat)
		if got := st.threshold(l); got != c.want {
			t.Errorf("latency %v: threshold %v, want %v", c.lat, got, c.want)
		}
	}
}

// TestAQueueNotTakenIsAStall: a session that takes nothing queued for
// longer than the threshold is stalled, with no query outstanding (its
// queries were refused as stuck); once it takes them again and the hold
// has passed it is not.
func TestAQueueNotTakenIsAStall(t *testing.T) {
	s, st, _ := newStallSet(t)
	b := s.Get(1)
	b.load.QueriesAnswered(1, 1, time.Millisecond) // threshold: the floor
	now := int64(time.Second)
	b.queueWait = DefaultStallFloor
	if got := st.Check(now); len(got) != 0 {
		t.Fatalf("stalled at the threshold: %v", got)
	}
	b.queueWait = DefaultStallFloor + 1
	got := st.Check(now)
	if len(got) != 1 || got[0].Backend != b || got[0].QueueWait != b.queueWait || !got[0].Avoided || !b.load.Avoided() {
		t.Fatalf("stalls %+v", got)
	}
	if b.Eligible() || s.Pick(nil) != 2 {
		t.Fatal("a stalled backend is eligible")
	}
	b.queueWait = 0
	b.load.Replied(now + 1)
	st.Check(now + int64(DefaultStallHold) - 1)
	if !b.load.Stalled() {
		t.Fatal("stall ended within the hold")
	}
	st.Check(now + int64(DefaultStallHold))
	if b.load.Stalled() || b.load.Avoided() || !b.Eligible() {
		t.Fatal("still stalled, answering again after the hold")
	}
}

// TestStalledBackendsAreUsedWhenNoneIsBetter: when every available
// backend is stalled, none is avoided; when the other's session ends,
// the stalled one is no longer avoided either.
func TestStalledBackendsAreUsedWhenNoneIsBetter(t *testing.T) {
	s, st, logs := newStallSet(t)
	one, two := s.Get(1), s.Get(2)
	one.load.QueriesSent(1)
	two.load.QueriesSent(1)
	checkEvery(st, 1, 1+int64(MaxStallThreshold)+1)
	if !one.load.Stalled() || !two.load.Stalled() || one.load.Avoided() || two.load.Avoided() {
		t.Fatalf("stalled %v %v, avoided %v %v", one.load.Stalled(), two.load.Stalled(), one.load.Avoided(), two.load.Avoided())
	}
	if n := logs.Count("every available backend is stalled: sending to the stalled ones", map[string]any{"stalled": 2}); n != 1 {
		t.Fatalf("logged %d times", n)
	}
	if s.Pick(nil) == 0 {
		t.Fatal("nothing picked while every backend is stalled")
	}

	// Another becomes available: the stalled are avoided; it goes: they
	// are not.
	s.list = append(s.list, &fake{id: 3, ok: true, log: s.log})
	now := 2 + int64(MaxStallThreshold)
	st.Check(now)
	if !one.load.Avoided() || !two.load.Avoided() {
		t.Fatal("stalled backends not avoided while 3 is available")
	}
	s.Get(3).ok = false
	st.Check(now + 1)
	if one.load.Avoided() || two.load.Avoided() {
		t.Fatal("stalled backends avoided with no other available")
	}
	two.ok = false
	st.Check(now + 2)
	if two.load.Stalled() {
		t.Fatal("a backend whose session ended is still stalled")
	}
	if f := two.load.Figures(time.Unix(0, now+2)); f.Stalls != 1 || f.StalledTime != time.Duration(now+2-(1+int64(MaxStallThreshold)+1)) {
		t.Fatalf("figures %+v", f)
	}
}

func TestStallDetectionOff(t *testing.T) {
	s, _, _ := newStallSet(t)
	st := NewStalls(s, StallConfig{Clock: timeouts.NewFake(testbed.Epoch)})
	s.Get(1).load.QueriesSent(1)
	st.Check(1)
	if got := st.Check(int64(time.Hour)); len(got) != 0 || s.Get(1).load.Stalled() {
		t.Fatal("stalled with detection off")
	}
}

// TestNoStallWhileBbalIsBehind: a check that comes late (bbal starved of
// CPU) begins no stall, nor does one while the backend's answers wait
// unread in its socket; once bbal is on time and they are read, it does.
func TestNoStallWhileBbalIsBehind(t *testing.T) {
	s, st, _ := newStallSet(t)
	b := s.Get(1)
	oneOutstanding(b)
	st.Check(int64(time.Second))
	// Late: 2 s since the last check.
	if got := st.Check(int64(3 * time.Second)); len(got) != 0 {
		t.Fatalf("a late check began a stall: %+v", got)
	}
	b.unread = 100
	if got := checkEvery(st, int64(3*time.Second), int64(4*time.Second)); b.load.Stalled() {
		t.Fatalf("stalled with its answers unread: %v", got)
	}
	b.unread = 0
	st.Check(int64(4*time.Second) + int64(StallCheckInterval))
	if !b.load.Stalled() {
		t.Fatal("not stalled, on time and nothing unread")
	}
}

// TestAStallEndsOnceTheBacklogIsAnswered: a woken backend answering the
// backlog of queries it held stays stalled while those answers keep
// coming, so that its clients do not come home to wait behind them, and
// is taken back a threshold after the last.
func TestAStallEndsOnceTheBacklogIsAnswered(t *testing.T) {
	s, st, _ := newStallSet(t)
	b := s.Get(1)
	oneOutstanding(b)
	now := checkEvery(st, int64(time.Second), int64(time.Second+DefaultStallFloor)+2*int64(StallCheckInterval))
	if !b.load.Stalled() {
		t.Fatal("not stalled")
	}
	// It answers its backlog for 2 s, well past the hold.
	for end := now + int64(2*time.Second); now < end; now += int64(StallCheckInterval) {
		b.load.Replied(now)
		st.Check(now)
		if !b.load.Stalled() {
			t.Fatalf("taken back while answering its backlog, %v into the stall", time.Duration(now-b.load.stallSince.Load()))
		}
	}
	last := now - int64(StallCheckInterval)
	for ; now-last < int64(DefaultStallFloor); now += int64(StallCheckInterval) {
		st.Check(now)
		if !b.load.Stalled() {
			t.Fatalf("taken back %v after its last answer", time.Duration(now-last))
		}
	}
	st.Check(now)
	if b.load.Stalled() {
		t.Fatal("still stalled, caught up")
	}
}
