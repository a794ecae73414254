package backend

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// What the UDP path measures of each backend's answers, for load-aware
// placement without an agent: the queries sent and not yet answered, and
// a moving average of the time to answer. The UDP proxy matches answers
// to queries and reports here.

// Weights scale each backend's share of remotes (like ipvsadm -w).
const (
	DefaultWeight = 1
	MaxWeight     = 1000
)

// latencyShift sets the moving average's weight of a new sample: 1/8.
const latencyShift = 3

// The queries outstanding are those sent less those answered, forgotten
// or moved: sent is written by the UDP readers, the rest by the session
// readers and the timers, each on a cache line of its own, so that the
// two sides do not contend for one.
type load struct {
	sent       atomic.Uint64 // queries sent and recorded in flight
	_          [56]byte
	answered   atomic.Uint64 // queries answered
	unanswered atomic.Uint64 // queries forgotten unanswered (after about 1 s)
	evicted    atomic.Uint64 // queries forgotten to make room for others
	resent     atomic.Uint64 // queries of this backend sent again to another after it died
	latency    atomic.Int64  // nanoseconds, moving average of answer times
	samples    atomic.Uint64 // answers measured (never reset: slowness checks compare it)
	weight     atomic.Int32
	slow       atomic.Bool // answering far slower than its peers (see Set.CheckSlow)
	// samples and unanswered at the last check, and the checks since a
	// slow backend was last measured: Set.CheckSlow's own.
	slowSamples, slowUnanswered uint64
	slowUnmeasured              int
}

// QueriesSent records n queries sent on to the backend, now waiting for
// an answer. (The UDP reader counts a batch's at once.)
func (b *Backend) QueriesSent(n int) { b.load.sent.Add(uint64(n)) }

// QueriesAnswered records n answers to the backend's queries, of which
// measured were the backend's own time (not so for a query sent again
// after its first backend died), taking rtt on average. (A session's
// reader counts the answers of one read at once.)
func (b *Backend) QueriesAnswered(n, measured int, rtt time.Duration) {
	l := &b.load
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
func (b *Backend) QueryForgotten(evicted bool) {
	if evicted {
		b.load.evicted.Add(1)
	} else {
		b.load.unanswered.Add(1)
	}
}

// QueryMoved records a query of the backend sent again to another
// backend (which counts it as sent) after this one died.
func (b *Backend) QueryMoved() { b.load.resent.Add(1) }

// Outstanding returns the number of queries waiting for an answer.
func (b *Backend) Outstanding() int64 {
	l := &b.load
	done := l.answered.Load() + l.unanswered.Load() + l.evicted.Load() + l.resent.Load()
	return max(int64(l.sent.Load()-done), 0)
}

// Latency returns the moving average of the backend's answer times (0
// before the first answer).
func (b *Backend) Latency() time.Duration { return time.Duration(b.load.latency.Load()) }

// Weight returns the backend's weight.
func (b *Backend) Weight() int { return int(b.load.weight.Load()) }

// SetWeight sets the backend's weight, 1 to MaxWeight: its share of
// remotes relative to the others'.
func (b *Backend) SetWeight(w int) bool {
	if w < 1 || w > MaxWeight {
		return false
	}
	if old := b.load.weight.Swap(int32(w)); old != int32(w) {
		b.log.Info().Int("weight", w).Int("old_weight", int(old)).Msg("backend weight changed")
	}
	return true
}

// Slow reports whether the backend was found answering far slower than
// its peers at the last check.
func (b *Backend) Slow() bool { return b.load.slow.Load() }

// Policy chooses the backend of a new remote (see Set.Pick).
type Policy uint8

const (
	PolicyRoundRobin  Policy = iota // the original's round-robin in ID order
	PolicyLeastLoaded               // fewest outstanding queries, fewest remotes; slow ones last
)

func (p Policy) String() string {
	if p == PolicyLeastLoaded {
		return "least-loaded"
	}
	return "rr"
}

// ParsePolicy parses a policy's name, as String gives it.
func ParsePolicy(s string) (Policy, bool) {
	switch s {
	case "rr":
		return PolicyRoundRobin, true
	case "least-loaded":
		return PolicyLeastLoaded, true
	}
	return 0, false
}

// A backend is slow when its answers take more than slowFactor times the
// median of its peers', and slowFloor more. A backend that answered
// nothing since the last check but let queries go unanswered counts as
// taking the whole FlightAge.
const (
	slowFactor = 4
	slowFloor  = 5 * time.Millisecond
	// unansweredLatency stands in for the latency of a backend that
	// answered nothing while queries went unanswered.
	unansweredLatency = time.Second
	// slowForget is how many checks a slow backend stays slow with
	// nothing measured (its clients quiet, or all moved away) before it
	// is given another chance.
	slowForget = 4
)

// CheckSlow finds, among the ok backends measured since the last check,
// those answering far slower than their peers (marking them slow, which
// Pick then passes over under PolicyLeastLoaded), and returns the IDs of
// the backends marked slow. A slow backend with nothing measured stays
// slow for slowForget checks, then is given another chance. Under
// PolicyRoundRobin it does nothing.
func (s *Set) CheckSlow() []ID {
	if s.cfg.Policy != PolicyLeastLoaded {
		return nil
	}
	s.pickMu.Lock()
	defer s.pickMu.Unlock()
	type measure struct {
		b   *Backend
		lat time.Duration
	}
	var ms []measure
	for _, b := range s.All() {
		l := &b.load
		samples, unans := l.samples.Load(), l.unanswered.Load()
		newSamples, newUnans := samples-l.slowSamples, unans-l.slowUnanswered
		l.slowSamples, l.slowUnanswered = samples, unans
		if !b.OK() {
			continue
		}
		switch {
		case newSamples > 0:
			ms = append(ms, measure{b, b.Latency()})
		case newUnans > 0:
			ms = append(ms, measure{b, unansweredLatency})
		case b.Slow():
			if l.slowUnmeasured++; l.slowUnmeasured >= slowForget {
				b.setSlow(false, 0, 0)
			}
		}
	}
	var slow []ID
	for _, b := range s.All() {
		if b.OK() && b.Slow() && !slices.ContainsFunc(ms, func(m measure) bool { return m.b == b }) {
			slow = append(slow, b.id) // still slow, unmeasured
		}
	}
	for i, m := range ms {
		peers := make([]time.Duration, 0, len(ms)-1)
		for j, o := range ms {
			if j != i {
				peers = append(peers, o.lat)
			}
		}
		if len(peers) == 0 {
			m.b.setSlow(false, m.lat, 0)
			continue
		}
		slices.Sort(peers)
		median := peers[len(peers)/2]
		isSlow := m.lat > slowFactor*median && m.lat-median > slowFloor
		m.b.setSlow(isSlow, m.lat, median)
		m.b.load.slowUnmeasured = 0
		if isSlow {
			slow = append(slow, m.b.id)
		}
	}
	return slow
}

func (b *Backend) setSlow(slow bool, lat, peers time.Duration) {
	if b.load.slow.Swap(slow) == slow {
		return
	}
	if slow {
		b.log.Warn().Float64("latency_ms", ms(lat)).Float64("peers_latency_ms", ms(peers)).
			Msg("backend answering far slower than its peers: shedding remotes")
	} else {
		b.log.Info().Msg("backend no longer slow")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Weight returns backend id's weight (DefaultWeight if it is unknown).
func (s *Set) Weight(id ID) int {
	if b := s.Get(id); b != nil {
		return b.Weight()
	}
	return DefaultWeight
}

// Logger returns the backend's logger (with its be_id and be_path).
func (b *Backend) Logger() *zerolog.Logger { return &b.log }
