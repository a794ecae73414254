package timeouts

import (
	"sync"
	"time"
)

// Clock is the time source of a Set and of everything that measures time
// against the Set's timers.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that sends on C once d has passed.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Set uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// System is the real clock.
var System Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time        { return t.t.C }
func (t systemTimer) Stop() bool                 { return t.t.Stop() }
func (t systemTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

// Fake is a clock that moves only when told to. Its zero value is not
// usable; call NewFake.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start}
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the clock forward by d and fires every timer that falls
// due.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for _, t := range f.timers {
		if t.armed && !t.when.After(f.now) {
			t.armed = false
			select {
			case t.c <- f.now:
			default:
			}
		}
	}
}

// NewTimer returns a timer that fires when the fake time reaches now+d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{clock: f, c: make(chan time.Time, 1)}
	f.timers = append(f.timers, t)
	t.resetLocked(d)
	return t
}

type fakeTimer struct {
	clock *Fake
	c     chan time.Time
	when  time.Time
	armed bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.armed
	t.armed = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.armed
	t.resetLocked(d)
	return was
}

func (t *fakeTimer) resetLocked(d time.Duration) {
	t.when = t.clock.now.Add(d)
	t.armed = true
	if d <= 0 {
		t.armed = false
		select {
		case t.c <- t.clock.now:
		default:
		}
	}
}
