package udpproxy

import (
	"time"

	"github.com/bbal/bbal/backend"
)

// The backends' load (placement.Load, see [backend.Backend.Load]) is
// counted here, and only here, from what becomes of the queries in
// flight: sent on (by the readers, a batch at a time), answered (by the
// reply batches, a read at a time), forgotten unanswered or evicted
// from a full bucket (by put and the sweep), or moved to another
// backend after theirs died (by resend).

// countSent records n queries sent on to be.
func countSent(be *backend.Backend, n int) { be.Load().QueriesSent(n) }

// countAnswered records n answers from be, measured of them its own
// time, taking rtt on average.
func countAnswered(be *backend.Backend, n, measured int, rtt time.Duration) {
	be.Load().QueriesAnswered(n, measured, rtt)
}

// countForgotten records copies of a query of be given up on, unanswered
// or evicted.
func countForgotten(be *backend.Backend, copies int, evicted bool) {
	l := be.Load()
	for range copies {
		l.QueryForgotten(evicted)
	}
}

// countMoved records the copies of a query of from sent again, as one,
// to to.
func countMoved(from *backend.Backend, copies int, to *backend.Backend) {
	l := from.Load()
	for range copies {
		l.QueryMoved()
	}
	to.Load().QueriesSent(1)
}
