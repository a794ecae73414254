package udpproxy

import (
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
)

// DetectStalls has the proxy find the backends that stop answering
// (placement.Stalls) every placement.StallCheckInterval, with floor the
// least threshold (0: not at all) and hold the least stall. Call it
// before Start.
func (p *Proxy) DetectStalls(floor, hold time.Duration) {
	p.stalls = placement.NewStalls[backend.ID, *backend.Backend](p.backends,
		placement.StallConfig{Floor: floor, Hold: hold, Log: p.log, Clock: p.clock})
}

// stallTick is the stall check's timer: it posts to resendLoop, which
// checks.
func (p *Proxy) stallTick() {
	post(p.stallCheck)
	p.stallT.Again(placement.StallCheckInterval)
}

// post tells a goroutine waiting on ch, a channel of one, that its work
// is due, without waiting: a timer's callback must not block, and one
// post waiting is as good as two.
func post(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// checkStalls is resendLoop's stall check: each backend found stalled
// whose clients can go elsewhere has its unanswered queries sent to the
// backends they use now, as if it had died of a query: the suspect (the
// first it was given of those it left unanswered) is withheld, and a
// query seen at a stall or death before is quarantined. A backend
// stalled again after a trial, having answered nothing since, has no
// suspect: its trial's queries came to a backend already hung.
func (p *Proxy) checkStalls() {
	if p.stalls == nil {
		return
	}
	defer p.stallChecks.Add(1)
	for _, st := range p.stalls.Check(p.clock.Now().UnixNano()) {
		be := st.Backend
		var r moved
		if st.Avoided {
			mode := resendStall
			if st.Again {
				mode = resendStallAgain
			}
			r = p.moveQueries(be, backend.Fault{}, mode)
		}
		e := be.Logger().Warn().Float64("silent_ms", ms(st.Silent)).Float64("threshold_ms", ms(st.Threshold)).
			Int64("outstanding", st.Outstanding)
		if st.QueueWait > 0 {
			e = e.Float64("queue_wait_ms", ms(st.QueueWait))
		}
		e.Bool("avoided", st.Avoided).Bool("again", st.Again).Int("resent", r.moved).Int("not_resent", r.stuck).Int("withheld", r.held).
			Int("quarantined", r.quarantined).Msg("backend stopped answering: stalled")
	}
}

// StallChecks returns the number of stall checks done: a test on the
// fake clock waits for it to move after moving the clock.
func (p *Proxy) StallChecks() uint64 { return p.stallChecks.Load() }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
