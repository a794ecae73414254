package udpproxy

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Readers with the load: of an address's readers (-r), only as many are
// given datagrams as its traffic needs. At a moderate rate one reader
// wakes for several datagrams at a time; spread over more, each wakes for
// fewer, and the same traffic costs more CPU in system calls and
// wake-ups. So the steering (SteerByID) starts an address on one reader,
// and every ReaderCheckInterval the readers' work decides: when one of
// the readers given datagrams reads full batches (batchLen datagrams:
// it is falling behind), twice as many are given them, up to all; when
// none does, and their busy time would keep half as many under
// readerBusyLow busy each, half as many. The others stay in recvmmsg,
// costing nothing, and still read anything queued for them.

// ReaderCheckInterval is how often the readers' load is looked at.
const ReaderCheckInterval = 500 * time.Millisecond

const (
	// readerFullShare: a reader that read at least this share of its
	// batches full is saturated.
	readerFullShare = 0.25
	// readerBusyLow: fewer readers are given datagrams when the work
	// would keep each under this share of its time busy.
	readerBusyLow = 0.5
)

// readerGroup is the readers of one address: those it may steer to
// (retired ones are not), the first being the group's in the kernel's
// order, and how many are given datagrams.
type readerGroup struct {
	addr   netip.AddrPort
	ls     []*listener
	active atomic.Int32
	last   []readerLoad // at the last check
	at     time.Time
}

// readerLoad is a reader's work so far: reads, those that were full,
// and the time spent handling them. The time is the machine's, not the
// proxy's clock: it measures work, not a timeout.
type readerLoad struct {
	reads, full uint64
	busy        time.Duration
}

func (l *listener) load() readerLoad {
	return readerLoad{reads: l.reads.Load(), full: l.fullReads.Load(), busy: time.Duration(l.busy.Load())}
}

// nextActive returns how many of n readers to give datagrams, active of
// them having done work (each one's since the last check) over elapsed.
func nextActive(active, n int, work []readerLoad, elapsed time.Duration) int {
	var busy time.Duration
	for _, w := range work[:active] {
		if w.reads > 0 && float64(w.full) >= readerFullShare*float64(w.reads) {
			return min(n, 2*active)
		}
		busy += w.busy
	}
	half := (active + 1) / 2
	if active > 1 && elapsed > 0 && float64(busy) < readerBusyLow*float64(half)*float64(elapsed) {
		return half
	}
	return active
}

// SteerReaders has the proxy steer each address's datagrams (SteerByID)
// from Start on: with adapt, to as many of its readers as the load
// needs, from one (see readers.go); without, to all of them. Until
// Start the steering stays as it was: a process taking over from
// another leaves its new sockets, which only it reads, out until it
// reads them. The sockets of an address must be in the order of its
// SO_REUSEPORT group, retired ones last. Call it before Start.
func (p *Proxy) SteerReaders(adapt bool) { p.steering, p.adapt = true, adapt }

// group puts the readers of each address, but the retired, in a group
// of their own, all given datagrams. New and Retire call it.
func (p *Proxy) group() {
	p.groups = nil
	for _, l := range p.ls {
		if l.retired {
			continue
		}
		i := slices.IndexFunc(p.groups, func(g *readerGroup) bool { return g.addr == l.addr })
		if i < 0 {
			i = len(p.groups)
			p.groups = append(p.groups, &readerGroup{addr: l.addr})
		}
		g := p.groups[i]
		g.ls = append(g.ls, l)
		g.active.Store(int32(len(g.ls)))
	}
}

// startReaders, with SteerReaders, steers each address to one reader
// and starts the checks (adapt), or to all of them.
func (p *Proxy) startReaders() {
	if !p.steering {
		return
	}
	for _, g := range p.groups {
		if len(g.ls) > 1 {
			n := len(g.ls)
			if p.adapt {
				n = 1
			}
			p.steer(g, n)
		}
		g.at = time.Now()
		g.last = p.loads(g)
	}
	if p.adapt {
		p.readersT.Set(ReaderCheckInterval)
	}
}

func (p *Proxy) loads(g *readerGroup) []readerLoad {
	out := make([]readerLoad, len(g.ls))
	for i, l := range g.ls {
		out[i] = l.load()
	}
	return out
}

// steer gives g's datagrams to its first n readers. A failure (not
// expected where steering worked at start) is logged, and the checks
// stop: the kernel goes on steering as it last did.
func (p *Proxy) steer(g *readerGroup, n int) {
	if err := SteerByID(g.ls[0].conn, n); err != nil {
		if ok, _ := p.steerLog.Allow(); ok {
			p.log.Error().Err(err).Stringer("address", g.addr).Msg("cannot steer datagrams to readers: readers no longer follow the load")
		}
		p.adapt = false
		return
	}
	if int(g.active.Load()) != n {
		if ok, held := p.steerLog.Allow(); ok {
			p.log.Info().Stringer("address", g.addr).Int("readers", n).Int("of", len(g.ls)).Int64("suppressed", held).
				Msg("UDP readers given datagrams")
		}
	}
	g.active.Store(int32(n))
}

// readersTick is the readers' check timer: it posts to resendLoop.
func (p *Proxy) readersTick() { post(p.readersCheck) }

// checkReaders is the readers' check, on resendLoop.
func (p *Proxy) checkReaders() {
	defer p.readerChecks.Add(1)
	defer p.readersT.Again(ReaderCheckInterval)
	now := time.Now()
	for _, g := range p.groups {
		cur := p.loads(g)
		work := make([]readerLoad, len(cur))
		reset := false
		for i := range cur {
			work[i] = readerLoad{reads: cur[i].reads - g.last[i].reads, full: cur[i].full - g.last[i].full, busy: cur[i].busy - g.last[i].busy}
			reset = reset || cur[i].reads < g.last[i].reads
		}
		elapsed := now.Sub(g.at)
		g.last, g.at = cur, now
		if !p.adapt || len(g.ls) < 2 || reset { // reset: the counters were set back to zero
			continue
		}
		k := int(g.active.Load())
		if n := nextActive(k, len(g.ls), work, elapsed); n != k {
			p.steer(g, n)
		}
	}
}
