package placement

import (
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/timeouts"
)

// Stall detection. A backend is stalled when the queries sent to it go
// unanswered past its threshold while it answers none of them, or when
// its session has taken nothing of what is queued for it for as long.
// The threshold is StallFactor times the backend's moving average answer
// time, at least the floor (DefaultStallFloor, -A) and at most
// MaxStallThreshold; before it has answered anything, MaxStallThreshold.
const (
	DefaultStallFloor = 250 * time.Millisecond
	// MaxStallThreshold caps the threshold below the age at which the UDP
	// proxy forgets a query (1 s), so that a stalled backend's queries
	// are still on record to be sent again.
	MaxStallThreshold = 800 * time.Millisecond
	StallFactor       = 8
	// DefaultStallHold is the least time a backend stays stalled: it
	// ends when the backend has answered again, at least this long after
	// the stall began, and has caught up: its answers to the queries it
	// held (which went elsewhere) have stopped coming for a threshold,
	// so that its clients do not come home to wait behind its backlog.
	DefaultStallHold = time.Second
	// StallCheckInterval is how often the UDP proxy checks.
	StallCheckInterval = 50 * time.Millisecond
	// A backend that answers nothing while stalled is tried again (no
	// longer avoided) after the hold, then after twice, four and eight
	// times the hold: a backend that stopped answering one query it
	// could not parse, with nothing else sent to it, comes back.
	maxTrialShift = 3
)

// StallConfig configures a [Stalls].
type StallConfig struct {
	Floor time.Duration // the threshold's floor; 0 turns detection off
	Hold  time.Duration // 0: DefaultStallHold
	Log   zerolog.Logger
	Clock timeouts.Clock
}

// Stalls finds the backends that stopped answering. Its Check is called
// by one goroutine (the UDP proxy's, which owns the queries in flight),
// every StallCheckInterval; the state it keeps in each backend's Load
// beyond the published atomics is that goroutine's own.
type Stalls[K ~uint16, B Backend[K]] struct {
	cfg        StallConfig
	backends   Backends[K, B]
	nowhereLog *timeouts.Limiter
	last       int64 // the last check's time
}

// lateCheck: a check this much later than the one before it finds bbal
// itself starved of CPU (or paused), its view of the answers behind: it
// begins no stall.
const lateCheck = 3 * StallCheckInterval

// NewStalls returns the stall detector of backends.
func NewStalls[K ~uint16, B Backend[K]](backends Backends[K, B], cfg StallConfig) *Stalls[K, B] {
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultStallHold
	}
	return &Stalls[K, B]{cfg: cfg, backends: backends, nowhereLog: timeouts.NewLimiter(cfg.Clock, repeatLogInterval)}
}

// Enabled reports whether stalls are detected at all.
func (s *Stalls[K, B]) Enabled() bool { return s.cfg.Floor > 0 }

// Stall is a backend found stalled by Check.
type Stall[B any] struct {
	Backend     B
	Silent      time.Duration // how long it had answered nothing
	Threshold   time.Duration
	Outstanding int64
	QueueWait   time.Duration // how long its session had taken nothing queued
	Avoided     bool          // its clients go elsewhere: another backend is available
	// Again: it was stalled before, and has answered nothing since its
	// trial began: the queries of the trial came to a backend already
	// hung, and none of them is the suspect of its stall.
	Again bool
}

// Check looks at every backend at now (unix nanoseconds): it marks
// stalled those that stopped answering (not when bbal itself ran late,
// nor while the backend's answers wait unread in its socket) and returns
// them, ends the
// stalls of those that answer again (at least the hold after the stall
// began) or are due a trial, and has placement avoid the stalled ones
// while some available backend is not stalled.
func (s *Stalls[K, B]) Check(now int64) (began []Stall[B]) {
	if !s.Enabled() {
		return nil
	}
	late := s.last != 0 && now-s.last > int64(lateCheck)
	s.last = now
	list := s.backends.All()
	for _, b := range list {
		l := b.Load()
		if !b.OK() {
			if l.stalled.Load() {
				s.end(b, now, "session down")
			}
			l.quietAt, l.trials = now, 0
			continue
		}
		out := l.Outstanding()
		if out == 0 || l.quietAt == 0 {
			l.quietAt = now // nothing waits, or first seen: the silence counts from here
		}
		last := l.lastReply.Load()
		thr := s.threshold(l)
		qw := b.QueueWait(now)
		if !l.stalled.Load() {
			if l.trials > 0 && last > l.trialAt {
				l.trials = 0 // answered since its trial began
			}
			silent := time.Duration(now - max(last, l.quietAt))
			// Silent with queries waiting, and nothing of the backend's
			// waiting to be read: bbal has not merely fallen behind.
			if !late && (out > 0 && silent > thr && b.Unread() == 0 || qw > thr) {
				l.stallSince.Store(now)
				l.stalled.Store(true)
				l.stalls.Add(1)
				began = append(began, Stall[B]{Backend: b, Silent: silent, Threshold: thr, Outstanding: out, QueueWait: qw,
					Again: l.trials > 0})
			} else if out > 0 && int64(silent) > l.silenceMax.Load() {
				l.silenceMax.Store(int64(silent))
			}
			continue
		}
		// An answer at the stall's own instant came after it: the last
		// one before it was older than the threshold.
		since := l.stallSince.Load()
		switch {
		case last >= since && now-since >= int64(s.cfg.Hold) && now-last >= int64(thr) && qw <= thr:
			// It answered since the stall began, and its answers to
			// the queries it held have stopped coming: caught up.
			l.trials = 0
			s.end(b, now, "answering again")
		case last < since && now-since >= int64(s.cfg.Hold)<<min(l.trials, maxTrialShift):
			// Nothing answered since the stall began: a trial.
			l.trials++
			l.trialAt, l.quietAt = now, now
			s.end(b, now, "trial")
		}
	}
	s.avoid(list)
	for i := range began {
		began[i].Avoided = began[i].Backend.Load().Avoided()
	}
	return began
}

// avoid has placement pass over the stalled backends while an available
// one is not stalled; when none is, the stalled ones go on being sent
// to: there is nowhere better.
func (s *Stalls[K, B]) avoid(list []B) {
	good, stalled := false, 0
	for _, b := range list {
		if b.Load().Stalled() {
			stalled++
		} else if b.Available() {
			good = true
		}
	}
	for _, b := range list {
		l := b.Load()
		l.avoided.Store(good && l.Stalled())
	}
	if !good && stalled > 0 {
		if ok, held := s.nowhereLog.Allow(); ok {
			s.cfg.Log.Warn().Int("stalled", stalled).Int64("suppressed", held).
				Msg("every available backend is stalled: sending to the stalled ones")
		}
	}
}

// threshold is how long l's backend may leave its queries unanswered
// before it is stalled.
func (s *Stalls[K, B]) threshold(l *Load) time.Duration {
	ceiling := max(MaxStallThreshold, s.cfg.Floor)
	if l.samples.Load() == 0 {
		return ceiling
	}
	return min(max(StallFactor*l.Latency(), s.cfg.Floor), ceiling)
}

// end ends b's stall at now, for why.
func (s *Stalls[K, B]) end(b B, now int64, why string) {
	l := b.Load()
	d := time.Duration(now - l.stallSince.Load())
	l.stalledNanos.Add(int64(d))
	l.avoided.Store(false)
	l.stalled.Store(false)
	switch why {
	case "trial":
		b.Logger().Warn().Float64("stalled_ms", ms(d)).Int("trials", l.trials).
			Msg("stalled backend answered nothing: trying it again")
	case "session down":
		b.Logger().Info().Float64("stalled_ms", ms(d)).Msg("stalled backend's session ended")
	default:
		b.Logger().Info().Float64("stalled_ms", ms(d)).Msg("backend answering again: no longer stalled")
	}
}
