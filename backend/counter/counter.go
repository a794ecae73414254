// Package counter declares a package's plain counts once: a [Table] of
// them drives the owner's snapshot (its Stats), its reset and, through
// the debug API, its metrics. The snapshot's counts are a struct of
// their own (Counts), with their JSON names, that the debug API's types
// embed. A new count is a line of the table and a field of Counts. The
// hot paths keep updating the atomics directly; the table only says
// where they are. It sits under backend, the first of the packages that
// use it (udpproxy and tcpproxy use it too), as the project keeps its top
// level to the packages it is made of.
package counter

import "sync/atomic"

// Counter is one plain count of an owner O, carried in its snapshot S:
// the metric that shows it, where its value lives, and where S carries
// it.
type Counter[O, S any] struct {
	Metric string // the metric's name
	Help   string // the metric's help; the same for the counts that share a metric
	// Reason is the metric's reason label, for counts that share one
	// metric; "" for none.
	Reason string
	Field  func(*O) *atomic.Uint64
	Stat   func(*S) *uint64
}

// Value returns the count's value in s.
func (c Counter[O, S]) Value(s *S) uint64 { return *c.Stat(s) }

// Table is the one list of an owner's plain counts.
type Table[O, S any] []Counter[O, S]

// Load copies the counts of o into s.
func (t Table[O, S]) Load(o *O, s *S) {
	for _, c := range t {
		*c.Stat(s) = c.Field(o).Load()
	}
}

// Reset sets the counts of o back to zero.
func (t Table[O, S]) Reset(o *O) {
	for _, c := range t {
		c.Field(o).Store(0)
	}
}

// Fields returns where the counts of o live, in the table's order.
func (t Table[O, S]) Fields(o *O) []*atomic.Uint64 {
	out := make([]*atomic.Uint64, len(t))
	for i, c := range t {
		out[i] = c.Field(o)
	}
	return out
}
