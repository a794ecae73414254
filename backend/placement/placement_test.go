package placement

import (
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ID is the fake backends' ID type.
type ID uint16

// Admin settings of a fake backend, as backend.Admin's.
const (
	AdminEnabled = iota
	AdminDraining
	AdminDisabled
)

// fake is a backend whose state the test sets, with backend.Backend's
// rule: eligible while ok and enabled.
type fake struct {
	id    ID
	ok    bool
	admin int
	load  Load
	log   zerolog.Logger
	// queueWait and unread are what QueueWait and Unread report.
	queueWait time.Duration
	unread    int
}

func (f *fake) ID() ID          { return f.id }
func (f *fake) OK() bool        { return f.ok }
func (f *fake) Available() bool { return f.ok && f.admin == AdminEnabled }
func (f *fake) Eligible() bool  { return f.Available() && !f.load.Avoided() }
func (f *fake) QueueWait(int64) time.Duration {
	return f.queueWait
}
func (f *fake) Unread() int             { return f.unread }
func (f *fake) Load() *Load             { return &f.load }
func (f *fake) Logger() *zerolog.Logger { return &f.log }
func (f *fake) SetAdmin(a int)          { f.admin = a }
func (f *fake) SetWeight(w int) bool    { _, ok := f.load.SetWeight(w); return ok }
func (f *fake) Slow() bool              { return f.load.Slow() }

// testSet is a Picker over a list of fakes.
type testSet struct {
	*Picker[ID, *fake]
	list []*fake
	log  zerolog.Logger
}

func (s *testSet) All() []*fake { return s.list }

func (s *testSet) Get(id ID) *fake {
	i, found := slices.BinarySearchFunc(s.list, id, func(f *fake, id ID) int { return int(f.id) - int(id) })
	if !found {
		return nil
	}
	return s.list[i]
}

type testConfig struct{ Policy Policy }

// newTestSet returns a Picker by cfg's policy over no backends yet.
func newTestSet(t *testing.T, cfg testConfig) (*testSet, *testbed.Logs) {
	t.Helper()
	logs := testbed.NewLogs()
	s := &testSet{log: testbed.Logger(logs)}
	s.Picker = New(s, Config{Policy: cfg.Policy, Log: s.log, Clock: timeouts.NewFake(testbed.Epoch)})
	return s, logs
}

// fakeList installs backends with the given IDs and ok flags.
func fakeList(s *testSet, ok map[ID]bool) {
	var list []*fake
	for _, id := range []ID{1, 2, 3, 5301, 5302} {
		if v, in := ok[id]; in {
			list = append(list, &fake{id: id, ok: v, log: s.log.With().Uint16("be_id", uint16(id)).Logger()})
		}
	}
	s.list = list
}

func TestPickIsRoundRobinInIDOrderOverOKBackends(t *testing.T) {
	s, logs := newTestSet(t, testConfig{})
	fakeList(s, map[ID]bool{1: true, 2: false, 3: true, 5301: true, 5302: false})
	var got []ID
	for range 7 {
		got = append(got, s.Pick(nil))
	}
	want := []ID{1, 3, 5301, 1, 3, 5301, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks %v, want %v", got, want)
		}
	}
	if ok := s.EligibleIDs(); len(ok) != 3 || ok[0] != 1 || ok[2] != 5301 {
		t.Fatalf("EligibleIDs %v", ok)
	}
	// Draining and disabled backends get no new remotes; a draining one
	// still serves its own.
	s.Get(3).SetAdmin(AdminDraining)
	s.Get(5301).SetAdmin(AdminDisabled)
	for range 3 {
		if id := s.Pick(nil); id != 1 {
			t.Fatalf("picked %d, want only 1", id)
		}
	}
	s.Get(3).SetAdmin(AdminEnabled)
	s.Get(5301).SetAdmin(AdminEnabled)

	fakeList(s, map[ID]bool{1: false, 2: false})
	for range 3 {
		if id := s.Pick(nil); id != 0 {
			t.Fatalf("picked %d with none ok", id)
		}
	}
	if n := logs.Count("no backends available", nil); n != 1 {
		t.Fatalf("'no backends available' logged %d times in 5 s", n)
	}
}

func TestWeightedRoundRobinIsProportionalAndInterleaved(t *testing.T) {
	s, _ := newTestSet(t, testConfig{})
	fakeList(s, map[ID]bool{1: true, 3: true, 5301: true})
	s.Get(3).SetWeight(2)
	s.Get(5301).SetWeight(3)
	count := map[ID]int{}
	run, longest, last := 0, 0, ID(0)
	for range 60 {
		id := s.Pick(nil)
		count[id]++
		if id == last {
			run++
		} else {
			run, last = 1, id
		}
		longest = max(longest, run)
	}
	if count[1] != 10 || count[3] != 20 || count[5301] != 30 {
		t.Fatalf("60 picks over weights 1, 2, 3: %v", count)
	}
	if longest > 2 {
		t.Fatalf("%d picks of one backend in a row: not interleaved", longest)
	}
	if s.Get(1).SetWeight(0) || s.Get(1).SetWeight(MaxWeight+1) {
		t.Fatal("a weight out of range was taken")
	}
}

func TestLeastLoadedPick(t *testing.T) {
	s, _ := newTestSet(t, testConfig{Policy: PolicyLeastLoaded})
	fakeList(s, map[ID]bool{1: true, 2: false, 3: true, 5301: true})
	outstanding := func(id ID, n uint64) { s.Get(id).load.sent.Store(n) }
	// Nothing outstanding: the fewest remotes per unit of weight.
	prim := map[ID]int{1: 5, 3: 4, 5301: 6}
	if id := s.Pick(prim); id != 3 {
		t.Fatalf("picked %d, want 3 (fewest remotes)", id)
	}
	s.Get(5301).SetWeight(2) // 6 remotes over weight 2 is 3 per unit
	if id := s.Pick(prim); id != 5301 {
		t.Fatalf("picked %d, want 5301 (fewest remotes per unit of weight)", id)
	}
	// Queries outstanding come first.
	outstanding(1, 1)
	outstanding(3, 4)
	outstanding(5301, 4) // 2 per unit
	if id := s.Pick(prim); id != 1 {
		t.Fatalf("picked %d, want 1 (fewest outstanding)", id)
	}
	if got := s.Get(3).load.Outstanding(); got != 4 {
		t.Fatalf("outstanding %d", got)
	}
	s.Get(3).load.QueriesAnswered(1, 1, time.Millisecond)
	s.Get(3).load.QueryForgotten(false)
	s.Get(3).load.QueryForgotten(true)
	s.Get(3).load.QueryMoved()
	if st := s.Get(3).load.Figures(testbed.Epoch); st.Outstanding != 0 || st.Answered != 1 || st.Unanswered != 1 || st.Evicted != 1 || st.Resent != 1 {
		t.Fatalf("after four queries done: %+v", st)
	}
	// A slow backend is passed over while another is not slow.
	s.Get(3).load.slow.Store(true)
	if id := s.Pick(prim); id == 3 {
		t.Fatal("picked the slow backend")
	}
	for _, id := range []ID{1, 5301} {
		s.Get(id).load.slow.Store(true)
	}
	if id := s.Pick(prim); id == 0 {
		t.Fatal("no pick when every backend is slow")
	}
}

func TestCheckSlowComparesEachWithItsPeers(t *testing.T) {
	s, logs := newTestSet(t, testConfig{Policy: PolicyLeastLoaded})
	fakeList(s, map[ID]bool{1: true, 3: true, 5301: true})
	answer := func(id ID, rtt time.Duration, n int) {
		for range n {
			s.Get(id).load.QueriesAnswered(1, 1, rtt)
		}
	}
	answer(1, time.Millisecond, 10)
	answer(3, 2*time.Millisecond, 10)
	answer(5301, 50*time.Millisecond, 10)
	if slow := s.CheckSlow(); len(slow) != 1 || slow[0] != 5301 || !s.Get(5301).Slow() {
		t.Fatalf("slow %v", slow)
	}
	logs.Wait(t, "backend answering far slower than its peers: shedding remotes", map[string]any{"be_id": 5301})
	// Four times the median but under the floor of 5 ms more: not slow.
	answer(1, 100*time.Microsecond, 50)
	answer(3, 100*time.Microsecond, 50)
	answer(5301, 900*time.Microsecond, 50)
	if slow := s.CheckSlow(); len(slow) != 0 {
		t.Fatalf("slow %v: within the floor", slow)
	}
	logs.Wait(t, "backend no longer slow", map[string]any{"be_id": 5301})
	// A backend that answered nothing but let queries go unanswered is
	// as slow as can be; with nothing measured, it stays slow for
	// slowForget checks, then is given another chance.
	answer(1, time.Millisecond, 5)
	answer(3, time.Millisecond, 5)
	s.Get(5301).load.QueryForgotten(false)
	if slow := s.CheckSlow(); len(slow) != 1 || slow[0] != 5301 {
		t.Fatalf("slow %v, want the unanswering backend", slow)
	}
	for i := 1; i <= slowForget; i++ {
		answer(1, time.Millisecond, 5)
		answer(3, time.Millisecond, 5)
		slow := s.CheckSlow()
		if still := i < slowForget; still != (len(slow) == 1 && s.Get(5301).Slow()) {
			t.Fatalf("check %d with nothing measured of 5301: slow %v", i, slow)
		}
	}
	// Under round-robin, nothing is checked.
	rr, _ := newTestSet(t, testConfig{})
	fakeList(rr, map[ID]bool{1: true})
	if rr.CheckSlow() != nil {
		t.Fatal("round-robin checked for slowness")
	}
}
