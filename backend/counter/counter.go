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
	Field  func(*O) Value
	Stat   func(*S) *uint64
}

// Value is where a count lives: an *atomic.Uint64, or a *Striped for
// one that several goroutines add to on a hot path.
type Value interface {
	Load() uint64
	Store(uint64)
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

// Stripes is the number of a Striped count's stripes: as many as the UDP
// proxy has sockets at most, so that each reader's part is its own.
const Stripes = 256

// Striped is a count that several goroutines add to at once, each to a
// stripe of its own on a cache line of its own (a UDP reader to that of
// its socket's number), so that they do not contend for one line; it is
// summed when read.
type Striped struct {
	s [Stripes]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

// Add adds n to stripe i (taken modulo Stripes).
func (c *Striped) Add(i int, n uint64) { c.s[i%Stripes].n.Add(n) }

// Load returns the sum of the stripes.
func (c *Striped) Load() uint64 {
	var sum uint64
	for i := range c.s {
		sum += c.s[i].n.Load()
	}
	return sum
}

// Stripe returns stripe i's part of the count.
func (c *Striped) Stripe(i int) uint64 { return c.s[i%Stripes].n.Load() }

// Store sets the count to v (v in the first stripe, the others 0).
func (c *Striped) Store(v uint64) {
	for i := range c.s {
		c.s[i].n.Store(0)
	}
	c.s[0].n.Store(v)
}
