package placement

import (
	"sync/atomic"
	"time"
)

// Weights scale each backend's share of remotes (like ipvsadm -w).
const (
	DefaultWeight = 1
	MaxWeight     = 1000
)

// latencyShift sets the moving average's weight of a new sample: 1/8.
const latencyShift = 3

// Load is what placement knows of one backend: its weight, whether it
// was found slow, and the figures of its queries that the UDP proxy,
// which owns the queries in flight, counts (sent, answered, forgotten
// unanswered or evicted, moved to another backend) with a moving average
// of its answer times. Each backend holds its own (a field of
// backend.Backend), so that the packet path reaches it without a lookup.
// The zero Load weighs DefaultWeight and has counted nothing.
//
// The queries outstanding are those sent less those answered, forgotten
// or moved: sent is written by the UDP readers, the rest by the session
// readers and the timers, each on a cache line of its own, so that the
// two sides do not contend for one.
type Load struct {
	sent       atomic.Uint64 // queries sent and recorded in flight
	_          [56]byte
	answered   atomic.Uint64 // queries answered
	unanswered atomic.Uint64 // queries forgotten unanswered (after about 1 s)
	evicted    atomic.Uint64 // queries forgotten to make room for others
	resent     atomic.Uint64 // queries of this backend sent again to another after it died
	latency    atomic.Int64  // nanoseconds, moving average of answer times
	samples    atomic.Uint64 // answers measured (never reset: slowness checks compare it)
	weight     atomic.Int32  // less DefaultWeight, so that the zero Load has the default
	slow       atomic.Bool   // answering far slower than its peers (see Picker.CheckSlow)
	lastReply  atomic.Int64  // unix nanoseconds: the last answer frame, matched to a query or not

	// Stalls (stall.go), written by the Stalls checker.
	stalled      atomic.Bool   // answering nothing: see Stalls
	avoided      atomic.Bool   // stalled, and another backend is available: placement passes over it
	stallSince   atomic.Int64  // unix nanoseconds: when the stall began
	stalls       atomic.Uint64 // stalls begun
	stalledNanos atomic.Int64  // time spent in ended stalls
	stalledSent  atomic.Uint64 // queries sent while stalled, for want of a better backend
	silenceMax   atomic.Int64  // nanoseconds: the longest silence seen with queries waiting, not stalled

	// The Picker's own, under its lock: smooth weighted round-robin's
	// credit; samples and unanswered at the last slowness check, and the
	// checks since a slow backend was last measured.
	credit                      int64
	slowSamples, slowUnanswered uint64
	slowUnmeasured              int

	// The Stalls checker's own: when it last saw nothing outstanding,
	// the trials since the backend last answered, and when the last
	// began.
	quietAt, trialAt int64
	trials           int
}

// QueriesSent records n queries sent on to the backend, now waiting for
// an answer. (The UDP reader counts a batch's at once.)
func (l *Load) QueriesSent(n int) {
	l.sent.Add(uint64(n))
	if l.stalled.Load() {
		l.stalledSent.Add(uint64(n))
	}
}

// Replied records that the backend sent answers at now (unix
// nanoseconds), whether they matched queries on record or not: it is
// answering. (A session's reader records each read's once.)
func (l *Load) Replied(now int64) { l.lastReply.Store(now) }

// QueriesAnswered records n answers to the backend's queries, of which
// measured were the backend's own time (not so for a query sent again
// after its first backend died), taking rtt on average. (A session's
// reader counts the answers of one read at once.)
func (l *Load) QueriesAnswered(n, measured int, rtt time.Duration) {
	l.answered.Add(uint64(n))
	if measured == 0 {
		return
	}
	old := l.latency.Load()
	if l.samples.Add(uint64(measured)) == uint64(measured) {
		l.latency.Store(int64(rtt))
		return
	}
	l.latency.Store(old + (int64(rtt)-old)>>latencyShift)
}

// QueryForgotten records a query of the backend given up on: unanswered
// after about a second, or displaced from a full table (evicted).
func (l *Load) QueryForgotten(evicted bool) {
	if evicted {
		l.evicted.Add(1)
	} else {
		l.unanswered.Add(1)
	}
}

// QueryMoved records a query of the backend sent again to another
// backend (which counts it as sent) after this one died.
func (l *Load) QueryMoved() { l.resent.Add(1) }

// Outstanding returns the number of queries waiting for an answer.
func (l *Load) Outstanding() int64 {
	done := l.answered.Load() + l.unanswered.Load() + l.evicted.Load() + l.resent.Load()
	return max(int64(l.sent.Load()-done), 0)
}

// Latency returns the moving average of the backend's answer times (0
// before the first answer).
func (l *Load) Latency() time.Duration { return time.Duration(l.latency.Load()) }

// Weight returns the backend's weight.
func (l *Load) Weight() int { return int(l.weight.Load()) + DefaultWeight }

// SetWeight sets the backend's weight, 1 to MaxWeight: its share of
// remotes relative to the others'. It returns the weight before, and
// false (changing nothing) for a weight out of range.
func (l *Load) SetWeight(w int) (old int, ok bool) {
	if w < 1 || w > MaxWeight {
		return l.Weight(), false
	}
	return int(l.weight.Swap(int32(w-DefaultWeight))) + DefaultWeight, true
}

// Slow reports whether the backend was found answering far slower than
// its peers at the last check.
func (l *Load) Slow() bool { return l.slow.Load() }

// Stalled reports whether the backend was found to answer nothing (see
// Stalls).
func (l *Load) Stalled() bool { return l.stalled.Load() }

// Avoided reports whether placement passes over the backend for a stall:
// it is stalled and another is available.
func (l *Load) Avoided() bool { return l.avoided.Load() }

// Figures is a snapshot of a Load.
type Figures struct {
	Weight      int
	Slow        bool
	Outstanding int64
	Latency     time.Duration
	Answered    uint64
	Unanswered  uint64
	Evicted     uint64
	Resent      uint64
	// Stalls: whether the backend is stalled now and since when (zero
	// when not), whether placement avoids it, the stalls begun, the time
	// spent stalled and the queries sent while stalled.
	Stalled     bool
	StallSince  time.Time
	Avoided     bool
	Stalls      uint64
	StalledTime time.Duration
	StalledSent uint64
	// SilenceMax is the longest the backend was seen to answer nothing
	// with queries waiting, short of a stall, since the counters were
	// last reset: what -A must stay above.
	SilenceMax time.Duration
}

// Figures returns a snapshot of the Load at now.
func (l *Load) Figures(now time.Time) Figures {
	f := Figures{
		Weight: l.Weight(), Slow: l.Slow(), Outstanding: l.Outstanding(), Latency: l.Latency(),
		Answered: l.answered.Load(), Unanswered: l.unanswered.Load(), Evicted: l.evicted.Load(), Resent: l.resent.Load(),
		Stalled: l.Stalled(), Avoided: l.Avoided(), Stalls: l.stalls.Load(),
		StalledTime: time.Duration(l.stalledNanos.Load()), StalledSent: l.stalledSent.Load(),
		SilenceMax: time.Duration(l.silenceMax.Load()),
	}
	if f.Stalled {
		f.StallSince = time.Unix(0, l.stallSince.Load())
		f.StalledTime += max(now.Sub(f.StallSince), 0)
	}
	return f
}

// ResetCounters sets the counters of finished queries back to zero;
// what is sent less what is done stays: the queries outstanding. The
// weight, the latency, the slowness and a stall under way stay too.
func (l *Load) ResetCounters() {
	done := l.answered.Swap(0) + l.unanswered.Swap(0) + l.evicted.Swap(0) + l.resent.Swap(0)
	l.sent.Add(-done)
	l.stalls.Store(0)
	l.stalledNanos.Store(0)
	l.stalledSent.Store(0)
	l.silenceMax.Store(0)
}
