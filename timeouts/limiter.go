package timeouts

import (
	"sync"
	"time"
)

// Limiter lets a repeated event through at most burst times per interval
// on a clock, counting what it holds back: the balancer's repeated log
// records ("no backends available", a flood of oversized datagrams, a
// flood of new clients) go through one. It is safe for concurrent use and
// allocates nothing.
type Limiter struct {
	clock Clock
	every time.Duration
	burst int

	mu    sync.Mutex
	start time.Time // of the current interval; zero: none yet
	n     int       // events let through in it
	held  int64     // events held back since the last let through
}

// NewLimiter returns a limiter for one event per every on clock.
func NewLimiter(clock Clock, every time.Duration) *Limiter {
	return NewBurstLimiter(clock, every, 1)
}

// NewBurstLimiter returns a limiter for burst events per every on clock.
func NewBurstLimiter(clock Clock, every time.Duration, burst int) *Limiter {
	return &Limiter{clock: clock, every: every, burst: max(burst, 1)}
}

// Allow reports whether this event may go through and, if so, how many
// were held back since the last one that did.
func (l *Limiter) Allow() (ok bool, held int64) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.start.IsZero() || now.Sub(l.start) >= l.every {
		l.start, l.n = now, 0
	}
	if l.n >= l.burst {
		l.held++
		return false, 0
	}
	l.n++
	held, l.held = l.held, 0
	return true, held
}
