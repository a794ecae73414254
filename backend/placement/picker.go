package placement

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/timeouts"
)

// Backend is what placement reads of a backend: *backend.Backend is one.
// K is the type of its ID.
type Backend[K ~uint16] interface {
	comparable
	ID() K
	// OK: its session is up. Available: ok and enabled. Eligible:
	// available and not avoided for a stall (Load.Avoided), so it may
	// be given new remotes.
	OK() bool
	Available() bool
	Eligible() bool
	// QueueWait is how long, at now (unix nanoseconds), its session
	// has taken nothing of what is queued for it; Unread, the bytes it
	// has sent that are not read yet.
	QueueWait(now int64) time.Duration
	Unread() int
	Load() *Load
	Logger() *zerolog.Logger // with the backend's be_id and be_path
}

// Backends lists the backends placement chooses among: *backend.Set
// does.
type Backends[K ~uint16, B Backend[K]] interface {
	// All returns every backend in ID order; the slice is not
	// modified.
	All() []B
	// Get returns the backend with the given ID, or the zero B.
	Get(id K) B
}

// Config configures a Picker. Clock is required.
type Config struct {
	Policy Policy
	Log    zerolog.Logger
	Clock  timeouts.Clock
}

// repeatLogInterval spaces out "no backends available" errors.
const repeatLogInterval = 5 * time.Second

// Picker chooses backends for remotes by its Policy, and finds slow
// ones. It is safe for concurrent use.
type Picker[K ~uint16, B Backend[K]] struct {
	backends Backends[K, B]
	policy   Policy
	log      zerolog.Logger

	last    atomic.Uint32 // ID most recently chosen by Pick
	mu      sync.Mutex    // guards the Loads' credit and slowness-check state
	noneLog *timeouts.Limiter
}

// New returns a Picker over backends.
func New[K ~uint16, B Backend[K]](backends Backends[K, B], cfg Config) *Picker[K, B] {
	return &Picker[K, B]{backends: backends, policy: cfg.Policy, log: cfg.Log,
		noneLog: timeouts.NewLimiter(cfg.Clock, repeatLogInterval)}
}

// Policy returns the Picker's policy.
func (p *Picker[K, B]) Policy() Policy { return p.policy }

// Weight returns backend id's weight (DefaultWeight if it is unknown).
func (p *Picker[K, B]) Weight(id K) int {
	var none B
	if b := p.backends.Get(id); b != none {
		return b.Load().Weight()
	}
	return DefaultWeight
}

// Pick chooses a backend for a new assignment among the eligible ones
// (ok and enabled), by the policy; primaries gives the remotes each
// backend is the primary of (it is only read, during the call). It
// returns 0 when none is eligible, and then logs "no backends available"
// (at most once per 5 s).
//
// PolicyRoundRobin is the original's: round-robin in ID order, starting
// after the one chosen last; when the weights differ, smooth weighted
// round-robin (each backend chosen in proportion to its weight, evenly
// interleaved). PolicyLeastLoaded chooses the backend with the fewest
// queries outstanding per unit of weight, then the fewest remotes per
// unit of weight, then the lowest ID; a backend found slow (CheckSlow)
// is passed over while another is eligible.
func (p *Picker[K, B]) Pick(primaries map[K]int) K {
	list := p.backends.All()
	var b B
	var found bool
	switch {
	case p.policy == PolicyLeastLoaded:
		b, found = leastLoaded(list, primaries)
	case !sameWeights(list):
		b, found = p.weightedRoundRobin(list)
	default:
		last := K(p.last.Load())
		start, _ := slices.BinarySearchFunc(list, last+1, func(b B, id K) int { return int(b.ID()) - int(id) })
		for i := range list {
			if c := list[(start+i)%len(list)]; c.Eligible() {
				b, found = c, true
				break
			}
		}
	}
	if found {
		p.last.Store(uint32(b.ID()))
		return b.ID()
	}
	if ok, held := p.noneLog.Allow(); ok {
		p.log.Error().Int64("suppressed", held).Msg("no backends available")
	}
	return 0
}

// sameWeights reports whether the eligible backends are weighted alike.
func sameWeights[K ~uint16, B Backend[K]](list []B) bool {
	w := 0
	for _, b := range list {
		if b.Eligible() {
			if bw := b.Load().Weight(); w != 0 && bw != w {
				return false
			} else {
				w = bw
			}
		}
	}
	return true
}

// weightedRoundRobin is nginx's smooth weighted round-robin: each
// eligible backend's credit grows by its weight, the one with the most
// is chosen and pays the total.
func (p *Picker[K, B]) weightedRoundRobin(list []B) (best B, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var bestLoad *Load
	total := int64(0)
	for _, b := range list {
		if !b.Eligible() {
			continue
		}
		l := b.Load()
		w := int64(l.Weight())
		l.credit += w
		total += w
		if bestLoad == nil || l.credit > bestLoad.credit {
			best, bestLoad = b, l
		}
	}
	if bestLoad != nil {
		bestLoad.credit -= total
	}
	return best, bestLoad != nil
}

// leastLoaded is PolicyLeastLoaded's choice.
func leastLoaded[K ~uint16, B Backend[K]](list []B, primaries map[K]int) (best B, found bool) {
	var bestSlow bool
	var bestOut, bestRem, bestW int64
	for _, b := range list {
		if !b.Eligible() {
			continue
		}
		l := b.Load()
		slow, out, rem, w := l.Slow(), l.Outstanding(), int64(primaries[b.ID()]), int64(l.Weight())
		// Compare out/w and rem/w without dividing.
		better := !found ||
			bestSlow && !slow ||
			bestSlow == slow && (out*bestW < bestOut*w || out*bestW == bestOut*w && rem*bestW < bestRem*w)
		if better {
			best, found, bestSlow, bestOut, bestRem, bestW = b, true, slow, out, rem, w
		}
	}
	return best, found
}

// EligibleIDs returns the IDs of the backends that may be given new
// remotes now, in ID order.
func (p *Picker[K, B]) EligibleIDs() []K {
	var ids []K
	for _, b := range p.backends.All() {
		if b.Eligible() {
			ids = append(ids, b.ID())
		}
	}
	return ids
}

// HashID chooses among the eligible backends, in ID order, by h (the
// source hash of a client the remotes table cannot pin): the same h
// gives the same backend while that set stays the same. 0 when none is
// eligible.
func (p *Picker[K, B]) HashID(h uint32) K {
	list := p.backends.All()
	n := 0
	for _, b := range list {
		if b.Eligible() {
			n++
		}
	}
	if n == 0 {
		return 0
	}
	k := int(h % uint32(n))
	for _, b := range list {
		if b.Eligible() {
			if k == 0 {
				return b.ID()
			}
			k--
		}
	}
	return 0
}
