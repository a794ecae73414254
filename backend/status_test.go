package backend

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// fakeList installs backends with the given IDs and ok flags, without
// sessions, for selection tests.
func fakeList(s *Set, ok map[ID]bool) {
	var list []*Backend
	for _, id := range []ID{1, 2, 3, 5301, 5302} {
		if v, in := ok[id]; in {
			b := &Backend{id: id, set: s, q: newQueue(1024, 16, 0), log: s.log.With().Uint16("be_id", uint16(id)).Logger()}
			b.ok.Store(v)
			list = append(list, b)
		}
	}
	s.list.Store(&list)
}

// The Status assertions of what was TestPickIsRoundRobinInIDOrderOverOKBackends
// (its picks are placement's now, tested there).
func TestStatusOfDrainingDisabledAndUnknownBackends(t *testing.T) {
	s, _ := newTestSet(t, testbed.SocketDir(t), Config{})
	fakeList(s, map[ID]bool{1: true, 2: false, 3: true, 5301: true, 5302: false})
	// Draining and disabled backends get no new remotes; a draining one
	// still serves its own.
	s.Get(3).SetAdmin(AdminDraining)
	s.Get(5301).SetAdmin(AdminDisabled)
	if ok, _ := s.Status(3); !ok {
		t.Fatal("a draining backend stopped serving")
	}
	if ok, gone := s.Status(5301); ok || gone {
		t.Fatalf("disabled backend Status = %v %v, want not ok, not gone", ok, gone)
	}
	s.Get(3).SetAdmin(AdminEnabled)
	s.Get(5301).SetAdmin(AdminEnabled)

	fakeList(s, map[ID]bool{1: false, 2: false})
	if ok, gone := s.Status(7); ok || !gone {
		t.Fatalf("Status of unknown ID = %v %v", ok, gone)
	}
}
