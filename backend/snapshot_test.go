package backend

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// newIdleSet returns a Set that is not started, for restoring into.
func newIdleSet(t *testing.T) *Set {
	t.Helper()
	return NewSet(Config{Dir: t.TempDir(), Log: testbed.Logger(testbed.NewLogs()),
		Timeouts: timeouts.New(timeouts.NewFake(testbed.Epoch))})
}

// The backends saved, restored in a successor and saved again are the
// same, through JSON as they travel; a weight of 0 (a state from before
// weights) restores the default.
func TestSaveRestoreRoundTrip(t *testing.T) {
	saved := []Saved{
		{ID: 2, Path: "/run/a.sock", Admin: "enabled", Weight: 1},
		{ID: 9, Path: "/run/b.sock", Admin: "disabled", Weight: placement.MaxWeight},
		{ID: 65535, Path: "/run/c\nd.sock", Admin: "draining", Weight: 4},
	}
	first := newIdleSet(t)
	if err := first.RestoreSaved(saved); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(first.Save())
	if err != nil {
		t.Fatal(err)
	}
	var got []Saved
	if err := json.Unmarshal(js, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, saved) {
		t.Fatalf("saved %+v\nwant %+v", got, saved)
	}

	old := newIdleSet(t)
	if err := old.RestoreSaved([]Saved{{ID: 3, Path: "/run/x.sock", Admin: "enabled"}}); err != nil {
		t.Fatal(err)
	}
	if w := old.Get(3).Weight(); w != 1 {
		t.Errorf("weight %d restored from none", w)
	}
	if got := WereUp([]Saved{{ID: 1, OK: true}, {ID: 2}, {ID: 3, OK: true}}); !slices.Equal(got, []ID{1, 3}) {
		t.Errorf("WereUp %v", got)
	}
}
