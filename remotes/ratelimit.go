package remotes

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Rate is a per-client limit on UDP queries (-q QPS[/BURST[/SLIP]]): each
// remote may send QPS a second, and BURST at once after a quiet spell.
// It is kept as the generic cell rate algorithm (GCRA): one word per
// remote, the time at which its next query would be on schedule,
// updated with one compare-and-swap in the record the packet path
// already looked up. Slip (RRL's): of the queries over the limit, every
// SLIP-th is answered with an empty truncated answer (TC) instead of
// dropped, so that a real client retries over TCP while a spoofed flood
// gains nothing; 0 never slips.
type Rate struct {
	QPS   float64
	Burst int
	Slip  int
	// interval is nanoseconds per query; slack how far ahead of
	// schedule a remote may be: (Burst-1) intervals.
	interval, slack int64
}

// DefaultSlip is RRL's default: every second query over the limit is
// answered truncated.
const DefaultSlip = 2

// Bounds of -q.
const (
	MaxRateQPS   = 1e7
	MaxRateBurst = 1 << 20
	MaxRateSlip  = 100
)

// ParseRate parses -q's QPS[/BURST[/SLIP]]. BURST defaults to QPS
// (rounded up: a second's worth), SLIP to DefaultSlip.
func ParseRate(v string) (Rate, error) {
	bad := func() (Rate, error) {
		return Rate{}, fmt.Errorf("invalid -q %q (want QPS[/BURST[/SLIP]], e.g. 100 or 100/200/2: QPS above 0 up to %.0f, BURST 1 to %d, SLIP 0 to %d)",
			v, float64(MaxRateQPS), MaxRateBurst, MaxRateSlip)
	}
	parts := strings.Split(v, "/")
	if len(parts) > 3 {
		return bad()
	}
	qps, err := strconv.ParseFloat(parts[0], 64)
	if err != nil || !(qps > 0) || qps > MaxRateQPS || math.IsInf(qps, 0) {
		return bad()
	}
	r := Rate{QPS: qps, Burst: int(math.Ceil(qps)), Slip: DefaultSlip}
	if len(parts) > 1 {
		if r.Burst, err = strconv.Atoi(parts[1]); err != nil || r.Burst < 1 || r.Burst > MaxRateBurst {
			return bad()
		}
	}
	if len(parts) > 2 {
		if r.Slip, err = strconv.Atoi(parts[2]); err != nil || r.Slip < 0 || r.Slip > MaxRateSlip {
			return bad()
		}
	}
	return r.init(), nil
}

// NewRate returns the limit of qps with burst and slip.
func NewRate(qps float64, burst, slip int) Rate {
	return Rate{QPS: qps, Burst: max(burst, 1), Slip: slip}.init()
}

func (r Rate) init() Rate {
	r.interval = max(int64(float64(time.Second)/r.QPS), 1)
	r.slack = int64(r.Burst-1) * r.interval
	return r
}

// String is the limit as -q takes it.
func (r Rate) String() string {
	return strconv.FormatFloat(r.QPS, 'g', -1, 64) + "/" + strconv.Itoa(r.Burst) + "/" + strconv.Itoa(r.Slip)
}

// Admit reports whether a query from r at now (unix nanoseconds) is
// within rate. One over it is counted, and its number among them is
// returned, for the slip. The record shared by clients the full table
// cannot pin is never limited: it stands for many.
func (r *Remote) Admit(rate *Rate, now int64) (ok bool, over uint64) {
	if r.shared {
		return true, 0
	}
	for {
		tat := r.tat.Load()
		if tat-now > rate.slack {
			r.overAt.Store(now)
			return false, r.limited.Add(1)
		}
		if r.tat.CompareAndSwap(tat, max(tat, now)+rate.interval) {
			return true, 0
		}
	}
}

// LimitedFor is how long after a query over the limit a remote is shown
// limited.
const LimitedFor = time.Second

// Limited reports whether the remote had a query over the limit within
// LimitedFor of now.
func (in Info) Limited(now time.Time) bool {
	return !in.LastLimited.IsZero() && now.Sub(in.LastLimited) < LimitedFor
}
