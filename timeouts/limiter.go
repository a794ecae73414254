package timeouts

import (
	"sync/atomic"
	"time"
)

// Limiter lets a repeated event through at most once per interval on a
// clock, counting what it holds back: the balancer's repeated log records
// ("no backends available", a flood of oversized datagrams) go through
// one. It is safe for concurrent use and allocates nothing.
type Limiter struct {
	clock Clock
	every time.Duration
	last  atomic.Int64 // unix nanoseconds of the last event let through; 0: none yet
	held  atomic.Int64 // events held back since
}

// NewLimiter returns a limiter for one event per every on clock.
func NewLimiter(clock Clock, every time.Duration) *Limiter {
	return &Limiter{clock: clock, every: every}
}

// Allow reports whether this event may go through and, if so, how many
// were held back since the last one that did.
func (l *Limiter) Allow() (ok bool, held int64) {
	now := l.clock.Now().UnixNano()
	prev := l.last.Load()
	if prev != 0 && now-prev < int64(l.every) || !l.last.CompareAndSwap(prev, now) {
		l.held.Add(1)
		return false, 0
	}
	return true, l.held.Swap(0)
}
