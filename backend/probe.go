package backend

import (
	"cmp"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
)

// Defaults for the probe settings of Config, used when Probe is set.
const (
	DefaultProbeInterval = 5 * time.Second
	DefaultProbeTimeout  = 15 * time.Second
)

// ProbeStats are a backend's DNS health-check counters. Every probe sent
// is, in the end, answered or failed: Sent = Answered + Failed + the
// probes still waiting for an answer.
type ProbeStats struct {
	Enabled  bool   // the Set probes its backends
	Sent     uint64 // probes sent, or tried
	Answered uint64 // probes answered by a DNS response with their ID
	// Failed counts the probes that could not be queued, that had no
	// answer within ProbeTimeout, or that were still waiting when the
	// session ended.
	Failed uint64
	RTT    time.Duration // round trip of the last answered probe
}

// probeAnswer is what the session's reader tells run of an answer to a
// probe: its session, DNS ID and RCODE, and when it came.
type probeAnswer struct {
	gen   uint64
	id    uint16
	rcode uint8
	at    time.Time
}

// pendingProbe is a probe sent and not yet answered.
type pendingProbe struct {
	id uint16    // its DNS ID
	at time.Time // when it was sent
}

// prober is a backend's health check by DNS: every ProbeInterval while
// the backend is ok, run sends the configured query in an INBOUND_UDP
// frame from the reserved source address; the session's reader takes
// the answers (OUTBOUND_UDP frames to that address) off the reply path
// and posts each one's DNS ID and receive time to run on answers, which
// run matches to the waiting probes. A backend with no answer for
// ProbeTimeout is faulted.
//
// Every probe sent leaves pending exactly once, in run: answered,
// failed, or failed with its session (stopProbes). An answer that comes
// while run closes the session is dropped by the reader, and one still
// queued when the session has ended is dropped by run: either way its
// probe counts as failed, never both.
//
// The answers have their own channel rather than the backend's events:
// a backend may send any number of responses to the reserved address,
// and they must not crowd out the timers' events, which are dropped
// when the events queue is full. The reader waits for room instead.
type prober struct {
	// ip is the reserved source address as the protocol carries it, and
	// on says whether probes are sent at all: the reader compares a
	// reply's destination with ip, and looks at on only when they match.
	ip uint32
	on bool

	query    []byte // the configured query; each probe gets its own ID
	interval time.Duration
	timeout  time.Duration

	// Owned by run.
	sendT *timeouts.Timeout // the next probe is due
	waitT *timeouts.Timeout // no answer for ProbeTimeout
	frame []byte            // the probe being sent
	id    uint16            // the last probe's DNS ID
	port  uint16            // the last probe's source port

	pending []pendingProbe // oldest first; at most cap(pending)

	// answers carries the session reader's probeAnswers to run; nil
	// when probes are off.
	answers chan probeAnswer

	// Written by run, read by Stats.
	sent, answered, failed atomic.Uint64
	rtt                    atomic.Int64 // nanoseconds
}

// setProbeDefaults fills in the probe durations when probes are on, and
// checks what the caller must get right.
func (c *Config) setProbeDefaults() {
	if len(c.Probe) == 0 {
		return
	}
	if !c.ProbeSource.Is4() {
		panic("backend: Config.Probe needs an IPv4 ProbeSource")
	}
	if len(c.Probe) < protocol.DNSHeaderLen || len(c.Probe) > protocol.MaxData {
		panic("backend: Config.Probe is not a DNS query")
	}
	c.ProbeInterval = cmp.Or(c.ProbeInterval, DefaultProbeInterval)
	c.ProbeTimeout = cmp.Or(c.ProbeTimeout, DefaultProbeTimeout)
}

// initProbe sets up b's prober from the Set's configuration.
func (b *Backend) initProbe(name string) {
	cfg := &b.set.cfg
	if len(cfg.Probe) == 0 {
		return
	}
	p := &b.probe
	p.ip, p.on = protocol.AddrToU32(cfg.ProbeSource), true
	p.query, p.interval, p.timeout = cfg.Probe, cfg.ProbeInterval, cfg.ProbeTimeout
	// Room for every probe that can be waiting within the timeout.
	p.pending = make([]pendingProbe, 0, int(p.timeout/p.interval)+2)
	p.answers = make(chan probeAnswer, cap(p.pending))
	p.id = uint16(rand.Uint32())
	p.sendT = cfg.Timeouts.NewTimeout(name+"probe", func() { b.post(event{kind: evProbeDue}) })
	p.waitT = cfg.Timeouts.NewTimeout(name+"probe answer", func() { b.post(event{kind: evProbeLate}) })
}

// startProbes runs when the backend becomes ok: the first probe goes out
// ProbeInterval later, and an answer must come within ProbeTimeout.
func (b *Backend) startProbes() {
	p := &b.probe
	if !p.on {
		return
	}
	p.sendT.Set(p.interval)
	p.waitT.Set(p.timeout)
}

// stopProbes runs when the session ends: the timers stop, and probes
// still waiting will never be answered.
func (b *Backend) stopProbes() {
	p := &b.probe
	if !p.on {
		return
	}
	p.sendT.Clear()
	p.waitT.Clear()
	p.failed.Add(uint64(len(p.pending)))
	p.pending = p.pending[:0]
}

// handleProbe is run's part of the probes.
func (b *Backend) handleProbe(ev event, st State) {
	p := &b.probe
	switch ev.kind {
	case evProbeDue:
		if st == StateOK && !b.armed(p.sendT) {
			b.sendProbe()
			p.sendT.Set(p.interval)
		}
	case evProbeLate:
		if st == StateOK && !b.armed(p.waitT) {
			b.log.Error().Msg("no answer to DNS probes from backend (aborting connection)")
			b.fault(ReasonProbeTimeout, nil)
		}
	}
}

// probeAnswered is run's handling of an answer from the session's
// reader: it takes the waiting probe with the answer's DNS ID out of
// pending, renews the wait, then counts the answer, so that whoever
// sees the count knows the timer has moved. An answer from a session
// already ended is dropped, its probe failed with the session; so is
// one whose ID no probe waits for (given up, or never sent).
func (b *Backend) probeAnswered(a probeAnswer) {
	if a.gen != b.gen {
		return
	}
	p, id := &b.probe, a.id
	i := slices.IndexFunc(p.pending, func(q pendingProbe) bool { return q.id == id })
	if i < 0 {
		if e := b.log.Trace(); e != nil {
			e.Uint16("id", id).Msg("answer to no waiting DNS probe (dropped)")
		}
		return
	}
	rtt := a.at.Sub(p.pending[i].at)
	p.pending = slices.Delete(p.pending, i, i+1)
	p.rtt.Store(int64(rtt))
	if e := b.log.Trace(); e != nil {
		e.Uint16("id", id).Dur("rtt", rtt).Uint8("rcode", a.rcode).Msg("DNS probe answered")
	}
	if State(b.state.Load()) == StateOK {
		p.waitT.Set(p.timeout)
	}
	p.answered.Add(1)
}

// sendProbe queues one probe: the query with a new ID, from the reserved
// address and a new port. Probes older than ProbeTimeout are given up
// first.
func (b *Backend) sendProbe() {
	p := &b.probe
	now := b.set.cfg.Timeouts.Clock().Now()
	p.id++
	p.port++
	if p.port == 0 {
		p.port = 1
	}
	keep := p.pending[:0]
	for _, q := range p.pending {
		if now.Sub(q.at) < p.timeout {
			keep = append(keep, q)
		}
	}
	if len(keep) == cap(keep) { // cannot happen with a clock that moves on
		keep = append(keep[:0], keep[1:]...)
	}
	p.failed.Add(uint64(len(p.pending) - len(keep)))
	p.pending = append(keep, pendingProbe{id: p.id, at: now})
	p.sent.Add(1)

	p.frame = protocol.AppendUDP(p.frame[:0], protocol.FrameInboundUDP, p.ip, p.port, p.query)
	binary.BigEndian.PutUint16(p.frame[protocol.UDPHeaderLen:], p.id)
	// A control frame: it is written at once and never expires. One that
	// cannot be queued (the queue is stuck) has failed.
	if b.q.push(p.frame, true, 0) != pushed {
		p.pending = p.pending[:len(p.pending)-1]
		p.failed.Add(1)
		return
	}
	if e := b.log.Trace(); e != nil {
		e.Uint16("id", p.id).Uint16("port", p.port).Msg("DNS probe sent")
	}
}

// probeAnswer takes an OUTBOUND_UDP frame addressed to the reserved
// source: the backend's answer to a probe, never for a client. A DNS
// response answers the waiting probe with its ID, whatever its RCODE (a
// handler that refuses is alive): its ID and receive time go to run,
// which matches it. Anything else is dropped. While run is closing the
// session, the answer is dropped too: its probe is failed with the
// session.
func (s *session) probeAnswer(f *protocol.Frame) {
	b := s.b
	if len(f.Data) < protocol.DNSHeaderLen || f.Data[2]&0x80 == 0 { // QR: a response
		if e := b.log.Trace(); e != nil {
			e.Int("data_len", len(f.Data)).Msg("not a DNS response to a probe (dropped)")
		}
		return
	}
	a := probeAnswer{gen: s.gen, id: binary.BigEndian.Uint16(f.Data), rcode: f.Data[3] & 0x0f,
		at: b.set.cfg.Timeouts.Clock().Now()}
	select {
	case <-s.closing:
	case b.probe.answers <- a:
	}
}

// stats returns the probe counters.
func (p *prober) stats() ProbeStats {
	return ProbeStats{
		Enabled:  p.on,
		Sent:     p.sent.Load(),
		Answered: p.answered.Load(),
		Failed:   p.failed.Load(),
		RTT:      time.Duration(p.rtt.Load()),
	}
}

// resetCounters sets the probe counters back to zero; the round trip is
// a gauge and stays.
func (p *prober) resetCounters() {
	p.sent.Store(0)
	p.answered.Store(0)
	p.failed.Store(0)
}
