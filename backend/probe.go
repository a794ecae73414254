package backend

import (
	"cmp"
	"encoding/binary"
	"math/rand/v2"
	"sync"
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

// pendingProbe is a probe sent and not yet answered.
type pendingProbe struct {
	id uint16    // its DNS ID
	at time.Time // when it was sent
}

// prober is a backend's health check by DNS: every ProbeInterval while
// the backend is ok, run sends the configured query in an INBOUND_UDP
// frame from the reserved source address; the session's reader takes
// the answers (OUTBOUND_UDP frames to that address) off the reply path
// and matches them to the probes by DNS ID. A backend with no answer for
// ProbeTimeout is faulted.
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

	// pending is shared by run, which adds probes and expires them, and
	// the session's reader, which takes them out as answers come.
	mu      sync.Mutex
	pending []pendingProbe // oldest first; at most cap(pending)

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
	p.mu.Lock()
	p.failed.Add(uint64(len(p.pending)))
	p.pending = p.pending[:0]
	p.mu.Unlock()
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
	case evProbeAnswer:
		// Counted here, once the wait is renewed, so that whoever sees
		// the count knows the timer has moved; an answer from a session
		// already ended still counts.
		if ev.gen == b.gen && st == StateOK {
			p.waitT.Set(p.timeout)
		}
		p.answered.Add(1)
	}
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
	p.mu.Lock()
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
	p.mu.Unlock()
	p.sent.Add(1)

	p.frame = protocol.AppendUDP(p.frame[:0], protocol.FrameInboundUDP, p.ip, p.port, p.query)
	binary.BigEndian.PutUint16(p.frame[protocol.UDPHeaderLen:], p.id)
	// A control frame: it is written at once and never expires. One that
	// cannot be queued (the queue is stuck) has failed.
	if b.q.push(p.frame, true, 0) != pushed {
		p.mu.Lock()
		if n := len(p.pending); n > 0 && p.pending[n-1].id == p.id {
			p.pending = p.pending[:n-1]
			p.failed.Add(1)
		}
		p.mu.Unlock()
		return
	}
	if e := b.log.Trace(); e != nil {
		e.Uint16("id", p.id).Uint16("port", p.port).Msg("DNS probe sent")
	}
}

// probeAnswer takes an OUTBOUND_UDP frame addressed to the reserved
// source: the backend's answer to a probe, never for a client. A DNS
// response whose ID is a waiting probe's answers it, whatever its RCODE
// (a handler that refuses is alive); anything else is dropped.
func (s *session) probeAnswer(f *protocol.Frame) {
	b := s.b
	p := &b.probe
	if len(f.Data) < protocol.DNSHeaderLen || f.Data[2]&0x80 == 0 { // QR: a response
		if e := b.log.Trace(); e != nil {
			e.Int("data_len", len(f.Data)).Msg("not a DNS response to a probe (dropped)")
		}
		return
	}
	id := binary.BigEndian.Uint16(f.Data)
	var sentAt time.Time
	p.mu.Lock()
	for i, q := range p.pending {
		if q.id == id {
			sentAt = q.at
			p.pending = append(p.pending[:i], p.pending[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	if sentAt.IsZero() {
		if e := b.log.Trace(); e != nil {
			e.Uint16("id", id).Msg("answer to no waiting DNS probe (dropped)")
		}
		return
	}
	rtt := b.set.cfg.Timeouts.Clock().Now().Sub(sentAt)
	p.rtt.Store(int64(rtt))
	if e := b.log.Trace(); e != nil {
		e.Uint16("id", id).Dur("rtt", rtt).Uint8("rcode", f.Data[3]&0x0f).Msg("DNS probe answered")
	}
	select {
	case <-s.closing: // run is closing the session: count it here
		p.answered.Add(1)
	case b.events <- event{kind: evProbeAnswer, gen: s.gen}:
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
