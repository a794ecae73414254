package backend

import (
	"testing"
	"time"

	"github.com/bbal/bbal/tools/testbed"
)

func TestWeightedRoundRobinIsProportionalAndInterleaved(t *testing.T) {
	s, _ := newTestSet(t, testbed.SocketDir(t), Config{})
	fakeList(s, map[ID]bool{1: true, 3: true, 5301: true})
	s.Get(3).SetWeight(2)
	s.Get(5301).SetWeight(3)
	count := map[ID]int{}
	run, longest, last := 0, 0, ID(0)
	for range 60 {
		id := s.PickID(nil)
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
	s, _ := newTestSet(t, testbed.SocketDir(t), Config{Policy: PolicyLeastLoaded})
	fakeList(s, map[ID]bool{1: true, 2: false, 3: true, 5301: true})
	outstanding := func(id ID, n uint64) { s.Get(id).load.sent.Store(n) }
	// Nothing outstanding: the fewest remotes per unit of weight.
	prim := map[ID]int{1: 5, 3: 4, 5301: 6}
	if id := s.PickID(prim); id != 3 {
		t.Fatalf("picked %d, want 3 (fewest remotes)", id)
	}
	s.Get(5301).SetWeight(2) // 6 remotes over weight 2 is 3 per unit
	if id := s.PickID(prim); id != 5301 {
		t.Fatalf("picked %d, want 5301 (fewest remotes per unit of weight)", id)
	}
	// Queries outstanding come first.
	outstanding(1, 1)
	outstanding(3, 4)
	outstanding(5301, 4) // 2 per unit
	if id := s.PickID(prim); id != 1 {
		t.Fatalf("picked %d, want 1 (fewest outstanding)", id)
	}
	if got := s.Get(3).Outstanding(); got != 4 {
		t.Fatalf("outstanding %d", got)
	}
	s.Get(3).QueriesAnswered(1, 1, time.Millisecond)
	s.Get(3).QueryForgotten(false)
	s.Get(3).QueryForgotten(true)
	s.Get(3).QueryMoved()
	if st := s.Get(3).Stats(); st.Outstanding != 0 || st.Answered != 1 || st.Unanswered != 1 || st.Evicted != 1 || st.Resent != 1 {
		t.Fatalf("after four queries done: %+v", st)
	}
	// A slow backend is passed over while another is not slow.
	s.Get(3).load.slow.Store(true)
	if id := s.PickID(prim); id == 3 {
		t.Fatal("picked the slow backend")
	}
	for _, id := range []ID{1, 5301} {
		s.Get(id).load.slow.Store(true)
	}
	if id := s.PickID(prim); id == 0 {
		t.Fatal("no pick when every backend is slow")
	}
}

func TestCheckSlowComparesEachWithItsPeers(t *testing.T) {
	s, logs := newTestSet(t, testbed.SocketDir(t), Config{Policy: PolicyLeastLoaded})
	fakeList(s, map[ID]bool{1: true, 3: true, 5301: true})
	answer := func(id ID, rtt time.Duration, n int) {
		for range n {
			s.Get(id).QueriesAnswered(1, 1, rtt)
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
	s.Get(5301).QueryForgotten(false)
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
	rr, _ := newTestSet(t, testbed.SocketDir(t), Config{})
	fakeList(rr, map[ID]bool{1: true})
	if rr.CheckSlow() != nil {
		t.Fatal("round-robin checked for slowness")
	}
}
