package placement

import (
	"slices"
	"time"
)

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
func (p *Picker[K, B]) CheckSlow() []K {
	if p.policy != PolicyLeastLoaded {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	type measure struct {
		b   B
		lat time.Duration
	}
	var ms []measure
	list := p.backends.All()
	for _, b := range list {
		l := b.Load()
		samples, unans := l.samples.Load(), l.unanswered.Load()
		newSamples, newUnans := samples-l.slowSamples, unans-l.slowUnanswered
		l.slowSamples, l.slowUnanswered = samples, unans
		if !b.OK() {
			continue
		}
		switch {
		case newSamples > 0:
			ms = append(ms, measure{b, l.Latency()})
		case newUnans > 0:
			ms = append(ms, measure{b, unansweredLatency})
		case l.Slow():
			if l.slowUnmeasured++; l.slowUnmeasured >= slowForget {
				setSlow(b, false, 0, 0)
			}
		}
	}
	var slow []K
	for _, b := range list {
		if b.OK() && b.Load().Slow() && !slices.ContainsFunc(ms, func(m measure) bool { return m.b == b }) {
			slow = append(slow, b.ID()) // still slow, unmeasured
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
			setSlow(m.b, false, m.lat, 0)
			continue
		}
		slices.Sort(peers)
		median := peers[len(peers)/2]
		isSlow := m.lat > slowFactor*median && m.lat-median > slowFloor
		setSlow(m.b, isSlow, m.lat, median)
		m.b.Load().slowUnmeasured = 0
		if isSlow {
			slow = append(slow, m.b.ID())
		}
	}
	return slow
}

// setSlow marks b slow or not, logging the change.
func setSlow[K ~uint16, B Backend[K]](b B, slow bool, lat, peers time.Duration) {
	if b.Load().slow.Swap(slow) == slow {
		return
	}
	if slow {
		b.Logger().Warn().Float64("latency_ms", ms(lat)).Float64("peers_latency_ms", ms(peers)).
			Msg("backend answering far slower than its peers: shedding remotes")
	} else {
		b.Logger().Info().Msg("backend no longer slow")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
