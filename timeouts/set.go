package timeouts

import (
	"context"
	"sync"
	"time"

	"github.com/google/btree"
)

// Set is a collection of timers run by one goroutine. Create it with New.
type Set struct {
	clock Clock

	mu   sync.Mutex
	tree *btree.BTreeG[*Timeout] // armed timeouts by (due, seq)
	seq  uint64
	wake chan struct{} // capacity 1: an earlier due time was armed
}

// Timeout is a named one-shot timer belonging to a Set.
type Timeout struct {
	set  *Set
	name string
	fn   func()

	// Guarded by set.mu.
	due   time.Time
	seq   uint64
	armed bool
}

// Entry describes one armed Timeout, for listing.
type Entry struct {
	Name string
	Due  time.Time
}

func lessTimeout(a, b *Timeout) bool {
	if !a.due.Equal(b.due) {
		return a.due.Before(b.due)
	}
	return a.seq < b.seq
}

// New returns an empty Set on clock c. Its callbacks run once Run is
// called.
func New(c Clock) *Set {
	return &Set{
		clock: c,
		tree:  btree.NewG(8, lessTimeout),
		wake:  make(chan struct{}, 1),
	}
}

// Clock returns the Set's clock.
func (s *Set) Clock() Clock { return s.clock }

// NewTimeout returns a disarmed Timeout that calls fn on the Run
// goroutine when it falls due. The name is what List reports.
func (s *Set) NewTimeout(name string, fn func()) *Timeout {
	return &Timeout{set: s, name: name, fn: fn}
}

// Name returns the name given to NewTimeout.
func (t *Timeout) Name() string { return t.name }

// Set arms t to fire d from now, moving it if it was already armed.
func (t *Timeout) Set(d time.Duration) { t.arm(d, false) }

// Again arms t to fire d after it last fell due, or at once if that is
// already past: for a periodic timer re-armed from its own callback,
// which may run late (a busy machine, a fake clock moved on meanwhile),
// so that the late run does not push every later one back.
func (t *Timeout) Again(d time.Duration) { t.arm(d, true) }

func (t *Timeout) arm(d time.Duration, again bool) {
	s := t.set
	s.mu.Lock()
	if t.armed {
		s.tree.Delete(t)
	}
	s.seq++
	t.seq = s.seq
	now := s.clock.Now()
	if again && !t.due.IsZero() {
		t.due = t.due.Add(d)
		if t.due.Before(now) {
			t.due = now
		}
	} else {
		t.due = now.Add(d)
	}
	t.armed = true
	s.tree.ReplaceOrInsert(t)
	first, _ := s.tree.Min()
	s.mu.Unlock()
	if first == t {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Clear disarms t. It is a no-op on a disarmed Timeout.
func (t *Timeout) Clear() {
	s := t.set
	s.mu.Lock()
	if t.armed {
		s.tree.Delete(t)
		t.armed = false
	}
	s.mu.Unlock()
}

// Armed reports whether t is waiting to fire, and when.
func (t *Timeout) Armed() (time.Time, bool) {
	s := t.set
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.due, t.armed
}

// List returns the armed timeouts in due order.
func (s *Set) List() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Entry, 0, s.tree.Len())
	s.tree.Ascend(func(t *Timeout) bool {
		out = append(out, Entry{Name: t.name, Due: t.due})
		return true
	})
	return out
}

// Len returns the number of armed timeouts.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tree.Len()
}

// popDue takes the earliest timeout off the tree if it is due, or returns
// how long until it is (or a long time when none is armed).
func (s *Set) popDue() (*Timeout, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tree.Min()
	if !ok {
		return nil, time.Hour
	}
	if wait := t.due.Sub(s.clock.Now()); wait > 0 {
		return nil, wait
	}
	s.tree.DeleteMin()
	t.armed = false
	return t, 0
}

// Run runs callbacks as they fall due until ctx is done.
func (s *Set) Run(ctx context.Context) {
	timer := s.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		t, wait := s.popDue()
		if t != nil {
			t.fn()
			continue
		}
		timer.Stop()
		select {
		case <-timer.C():
		default:
		}
		timer.Reset(wait)
		// The clock may have moved between popDue and Reset (a fake
		// clock can jump); look once more before sleeping.
		if t, _ := s.popDue(); t != nil {
			t.fn()
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C():
		}
	}
}
