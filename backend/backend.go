package backend

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
)

// ID identifies a backend; 0 means "no backend".
type ID uint16

// State is where a backend's standing session is in its life.
type State int32

const (
	// StateConnecting: connection made (or being made), CLIENT_HELLO sent,
	// waiting for SERVER_HELLO.
	StateConnecting State = iota
	// StateOK: SERVER_HELLO received; the backend takes traffic.
	StateOK
	// StateFaulted: the session was torn down; a reconnect is scheduled.
	StateFaulted
	// StateRemoved: the socket is gone from the directory; nothing is
	// scheduled until a scan finds it again.
	StateRemoved
	// StateStopped: the balancer is shutting down.
	StateStopped
)

var stateNames = [...]string{"connecting", "ok", "faulted", "removed", "stopped"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "invalid"
}

// Admin is the operator's setting for a backend, independent of its
// session state.
type Admin int32

const (
	// AdminEnabled: the backend takes new remotes and serves its own.
	AdminEnabled Admin = iota
	// AdminDisabled: no new remotes, and its remotes are served by
	// backups until it is enabled again (like ipvsadm weight 0 plus
	// quiescing).
	AdminDisabled
	// AdminDraining: no new remotes; its remotes stay until they expire
	// or it is enabled.
	AdminDraining
)

var adminNames = [...]string{"enabled", "disabled", "draining"}

func (a Admin) String() string {
	if a >= 0 && int(a) < len(adminNames) {
		return adminNames[a]
	}
	return "invalid"
}

// ParseAdmin parses an Admin's String.
func ParseAdmin(s string) (Admin, bool) {
	for i, n := range adminNames {
		if n == s {
			return Admin(i), true
		}
	}
	return 0, false
}

// Backend is one backend process, reached through one socket path. Its
// standing session is run by one goroutine (run), which alone changes the
// session state; the packet path reads what it needs through atomics and
// the queue.
type Backend struct {
	id   ID
	path string
	set  *Set
	log  zerolog.Logger

	// Read by the packet path.
	ok      atomic.Bool  // the session is up: state is StateOK
	removed atomic.Bool  // state is StateRemoved
	admin   atomic.Int32 // an Admin, set by the operator
	q       *queue
	stats   counters

	// Published for readers of Stats; written only by run.
	state atomic.Int32
	since atomic.Int64 // unix nanoseconds
	delay atomic.Int64 // next reconnect delay

	// hbOutstanding is set by run when it sends CLIENT_HEARTBEAT and
	// cleared by the reader when SERVER_HEARTBEAT arrives.
	hbOutstanding atomic.Bool

	events chan event

	// load is placement's record of the backend: weight, slowness and
	// the figures of its queries, which the UDP proxy counts.
	load placement.Load

	// cur is the session Flush writes to; set and cleared by run.
	cur atomic.Pointer[session]

	// Owned by run.
	sess       *session
	gen        uint64
	hbSentAt   time.Time
	connectT   *timeouts.Timeout
	hbSendT    *timeouts.Timeout
	hbWaitT    *timeouts.Timeout
	reconnectT *timeouts.Timeout

	// down is why the session ends, for its Down event; set by fault.
	down Fault

	// probe is the health check by DNS (see probe.go).
	probe prober

	// cancel ends run; guarded by the Set's mu.
	cancel context.CancelFunc

	// attemptLog lets one connect attempt in each ReconnectMax log at
	// its records' levels; quiet is set for the others, whose records
	// go to debug level (see logAt). held counts the attempts kept
	// quiet since the last one logged; owned by run.
	attemptLog *timeouts.Limiter
	quiet      atomic.Bool
	held       int64
	tried      bool // connect has run; owned by run

	// epoch is the epoch of the backend's data (see Epoch); up is set
	// by run at its first session.
	epoch atomic.Uint32
	up    bool
}

type eventKind uint8

const (
	evConnectTimeout eventKind = iota // connectT fired
	evHeartbeatDue                    // hbSendT fired
	evHeartbeatLate                   // hbWaitT fired
	evReconnect                       // reconnectT fired
	evReturned                        // a scan found the removed socket again
	evGone                            // a scan found the socket gone
	evHello                           // the reader saw SERVER_HELLO
	evHeartbeatReply                  // the reader saw SERVER_HEARTBEAT
	evFault                           // the reader or writer failed
	evTCPTimeout                      // a TCP proxy session got no INBOUND_TCP_OK
	evProbeDue                        // probe.sendT fired
	evProbeLate                       // probe.waitT fired
)

type event struct {
	kind   eventKind
	gen    uint64 // session generation, for events from a session
	reason Reason
	err    error
}

// eventQueueLen bounds the events waiting for run. Each source posts at
// most a few before run reacts (a session's reader and writer stop after a
// fault; each timer posts once per arming), so it never fills in practice;
// posts that would block are dropped rather than stall the poster.
const eventQueueLen = 32

func newBackend(s *Set, id ID, path string) *Backend {
	b := &Backend{
		id:     id,
		path:   path,
		set:    s,
		log:    s.log.With().Uint16("be_id", uint16(id)).Str("be_path", EscapePath(path)).Logger(),
		q:      newQueue(s.cfg.QueueBytes, s.cfg.QueueFrames, int64(s.cfg.QueueAge)),
		events: make(chan event, eventQueueLen),
	}
	b.attemptLog = timeouts.NewLimiter(s.cfg.Timeouts.Clock(), s.cfg.ReconnectMax)
	name := "backend " + itoa(int(id)) + " "
	ts := s.cfg.Timeouts
	b.connectT = ts.NewTimeout(name+"connect", func() { b.post(event{kind: evConnectTimeout}) })
	b.hbSendT = ts.NewTimeout(name+"heartbeat", func() { b.post(event{kind: evHeartbeatDue}) })
	b.hbWaitT = ts.NewTimeout(name+"heartbeat reply", func() { b.post(event{kind: evHeartbeatLate}) })
	b.reconnectT = ts.NewTimeout(name+"reconnect", func() { b.post(event{kind: evReconnect}) })
	b.initProbe(name)
	b.epoch.Store(s.epochs.Add(1))
	b.setState(StateConnecting)
	return b
}

// Epoch returns the epoch of the backend's data: unique among the
// Set's backends, and new each time the backend's session is
// established after its first (it came back from a fault or removal,
// and what it serves may have changed). An answer cache keeps each
// backend's answers under its epoch.
func (b *Backend) Epoch() uint32 { return b.epoch.Load() }

// ID returns the backend's ID.
func (b *Backend) ID() ID { return b.id }

// Path returns the backend's socket path.
func (b *Backend) Path() string { return b.path }

// OK reports whether the backend's session is up (SERVER_HELLO received,
// not faulted since). Whether it takes traffic also depends on its Admin
// setting: see Serving and Eligible.
func (b *Backend) OK() bool { return b.ok.Load() }

// Serving reports whether the backend serves the remotes assigned to it:
// ok, not disabled, and not avoided for a stall (placement.Load.Avoided).
func (b *Backend) Serving() bool {
	return b.ok.Load() && Admin(b.admin.Load()) != AdminDisabled && !b.load.Avoided()
}

// Eligible reports whether the backend may be given new remotes: ok,
// enabled and not avoided for a stall.
func (b *Backend) Eligible() bool { return b.Available() && !b.load.Avoided() }

// Available reports whether the backend may be given new remotes but for
// a stall: ok and enabled.
func (b *Backend) Available() bool { return b.ok.Load() && Admin(b.admin.Load()) == AdminEnabled }

// Unread returns the bytes the backend has sent on its standing session
// that bbal has not read yet (the socket's receive queue): a backend with
// answers waiting there is answering, whatever bbal has seen of them.
func (b *Backend) Unread() int {
	s := b.cur.Load()
	if s == nil {
		return 0
	}
	n := 0
	s.raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

// QueueWait returns how long, at now (unix nanoseconds), the session has
// not taken what is queued for it: 0 while it keeps reading.
func (b *Backend) QueueWait(now int64) time.Duration { return b.q.waiting(now) }

// Admin returns the operator's setting.
func (b *Backend) Admin() Admin { return Admin(b.admin.Load()) }

// SetAdmin changes the operator's setting and returns the previous one.
func (b *Backend) SetAdmin(a Admin) Admin { return Admin(b.admin.Swap(int32(a))) }

// Removed reports whether the backend's socket has gone from the
// directory.
func (b *Backend) Removed() bool { return b.removed.Load() }

// State returns the session state and when it was entered.
func (b *Backend) State() (State, time.Time) {
	return State(b.state.Load()), time.Unix(0, b.since.Load())
}

// post hands an event to run without ever blocking the caller.
func (b *Backend) post(ev event) {
	select {
	case b.events <- ev:
	default:
	}
}

// SendUDP queues an INBOUND_UDP frame, which the caller has built in
// frame (header included), received at now (unix nanoseconds). It reports
// whether the frame was queued; a refused frame is counted here as a
// stuck or down drop.
func (b *Backend) SendUDP(frame []byte, now int64) bool {
	switch b.q.push(frame, false, now) {
	case pushed:
		b.stats.udpFrames.Add(1)
		b.stats.udpBytes.Add(uint64(len(frame) - protocol.UDPHeaderLen))
		return true
	case pushStuck:
		b.stats.stuckDrops.Add(1)
		if e := b.log.Trace(); e != nil {
			e.Msg("stuck backend write queue")
		}
	default:
		b.stats.downDrops.Add(1)
	}
	return false
}

// SendUDPBatch queues INBOUND_UDP frames, back to back in frames, frame
// i ending at ends[i], at now, in one hold of the queue's lock: as many,
// from the first, as the queue accepts, each counted as SendUDP counts
// it. It returns how many were queued; the caller drops the rest. Like
// SendUDP, it does not write: Flush does.
func (b *Backend) SendUDPBatch(frames []byte, ends []int32, now int64) int {
	if len(ends) == 0 {
		return 0
	}
	n, res := b.q.pushBatch(frames, ends, now)
	if n > 0 {
		b.stats.udpFrames.Add(uint64(n))
		b.stats.udpBytes.Add(uint64(int(ends[n-1]) - n*protocol.UDPHeaderLen))
	}
	if rest := uint64(len(ends) - n); rest > 0 {
		if res == pushStuck {
			b.stats.stuckDrops.Add(rest)
			if e := b.log.Trace(); e != nil {
				e.Msg("stuck backend write queue")
			}
		} else {
			b.stats.downDrops.Add(rest)
		}
	}
	return n
}

// DialTCP opens a TCP proxy session's connection to the backend's socket.
// The caller sends INBOUND_TCP on it and must call TCPDone once the
// session ends.
func (b *Backend) DialTCP(ctx context.Context) (*net.UnixConn, error) {
	b.stats.tcpTotal.Add(1)
	b.stats.tcpActive.Add(1)
	c, err := dialUnix(ctx, b.path)
	if err != nil {
		b.stats.tcpErrors.Add(1)
		return nil, err
	}
	return c, nil
}

// TCPDone records the end of a TCP proxy session started with DialTCP.
func (b *Backend) TCPDone() { b.stats.tcpActive.Add(-1) }

// FaultTCPTimeout faults the backend because a TCP proxy session got no
// INBOUND_TCP_OK in time.
func (b *Backend) FaultTCPTimeout() { b.post(event{kind: evTCPTimeout}) }

func dialUnix(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// Stats returns a snapshot of the backend's state and counters.
func (b *Backend) Stats() Stats {
	st, since := b.State()
	qb, qf := b.q.length()
	s := Stats{
		ID: b.id, Path: b.path, State: st, Since: since,
		OK: b.ok.Load(), Removed: b.removed.Load(), Admin: b.Admin(),
		ReconnectDelay: time.Duration(b.delay.Load()),
		QueuedBytes:    qb,
		QueuedFrames:   qf,
		TCPActive:      b.stats.tcpActive.Load(),
		HeartbeatRTT:   time.Duration(b.stats.heartbeatRTT.Load()),
		Probes:         b.probe.stats(),
		Faults:         map[string]uint64{},
	}
	counterTable.Load(&b.stats, &s.Counts)
	s.Figures = b.load.Figures(b.set.cfg.Timeouts.Clock().Now())
	for r := range numReasons {
		if n := b.stats.faults[r].Load(); n > 0 {
			s.Faults[r.String()] = n
		}
	}
	return s
}

// ResetCounters sets the backend's counters back to zero. The gauges
// (active TCP sessions, queue, heartbeat round trip) are left alone.
func (b *Backend) ResetCounters() {
	b.stats.reset()
	b.load.ResetCounters()
	b.probe.resetCounters()
}

// setState is the one place the session state changes.
func (b *Backend) setState(s State) {
	old := State(b.state.Load())
	b.state.Store(int32(s))
	b.since.Store(b.set.cfg.Timeouts.Clock().Now().UnixNano())
	b.ok.Store(s == StateOK)
	b.removed.Store(s == StateRemoved)
	if old == StateOK && s != StateOK {
		b.set.wentDown(b, b.down)
	}
	if e := b.log.Debug(); e != nil && old != s {
		e.Str("from", old.String()).Str("to", s.String()).Msg("backend state change")
	}
	b.set.stateChanged()
}

// run is the backend's goroutine: it owns the standing session and its
// state, and reacts to events from the timers, the session's reader and
// writer, the directory scan and the TCP proxies.
func (b *Backend) run(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	// The first attempt is immediate; failures after it wait.
	b.delay.Store(int64(b.set.cfg.ReconnectMin))
	b.connect(ctx)
	for {
		select {
		case <-ctx.Done():
			b.closeSession()
			b.clearTimers()
			b.reconnectT.Clear()
			b.setState(StateStopped)
			return
		case ev := <-b.events:
			b.handle(ctx, ev)
		case a := <-b.probe.answers: // nil, never ready, when probes are off
			b.probeAnswered(a)
		}
	}
}

func (b *Backend) handle(ctx context.Context, ev event) {
	st := State(b.state.Load())
	switch ev.kind {
	case evReconnect:
		if st == StateFaulted && !b.armed(b.reconnectT) {
			b.connect(ctx)
		}
	case evReturned:
		if st == StateRemoved {
			if ok, held := b.set.churnLog.Allow(); ok {
				b.log.Info().Int64("suppressed", held).Msg("backend socket returned")
			}
			b.delay.Store(int64(b.set.cfg.ReconnectMin))
			b.connect(ctx)
		}
	case evGone:
		// The reconnect would fail with ENOENT: act on it now. The
		// socket may be back since the scan, and then the reconnect
		// stands.
		if st != StateFaulted {
			break
		}
		if fi, err := os.Stat(b.path); errors.Is(err, syscall.ENOENT) || err == nil && fi.Mode().Type() != fs.ModeSocket {
			b.socketRemoved()
		}
	case evConnectTimeout:
		if st == StateConnecting && !b.armed(b.connectT) {
			b.logAt(zerolog.WarnLevel).Msg("timed out connecting to backend")
			b.fault(ReasonConnectTimeout, nil)
		}
	case evHeartbeatDue:
		if st == StateOK && !b.armed(b.hbSendT) {
			b.sendHeartbeat()
		}
	case evHeartbeatLate:
		if st == StateOK && !b.armed(b.hbWaitT) {
			b.logAt(zerolog.ErrorLevel).Msg("no heartbeat from backend (aborting connection)")
			b.fault(ReasonHeartbeatTimeout, nil)
		}
	case evTCPTimeout:
		if st == StateOK || st == StateConnecting {
			b.fault(ReasonTCPOKTimeout, nil)
		}
	case evHello:
		if ev.gen == b.gen && st == StateConnecting {
			b.established()
		}
	case evHeartbeatReply:
		if ev.gen == b.gen && st == StateOK {
			b.hbWaitT.Clear()
			rtt := b.set.cfg.Timeouts.Clock().Now().Sub(b.hbSentAt)
			b.stats.heartbeatRTT.Store(int64(rtt))
			b.stats.heartbeats.Add(1)
			if e := b.log.Trace(); e != nil {
				e.Dur("rtt", rtt).Msg("received heartbeat reply")
			}
			b.hbSendT.Set(b.set.cfg.HeartbeatInterval)
		}
	case evFault:
		if ev.gen == b.gen && (st == StateConnecting || st == StateOK) {
			b.fault(ev.reason, ev.err)
		}
	case evProbeDue, evProbeLate:
		b.handleProbe(ev, st)
	}
}

func (b *Backend) armed(t *timeouts.Timeout) bool {
	_, armed := t.Armed()
	return armed
}

// connect makes one attempt at the standing session. The first attempt
// of a backend, and one in each ReconnectMax after it, log their records
// at their levels; the records of the others go to debug level, so that
// a backend that keeps failing logs its failure when it starts and then
// about once per back-off cap, whatever the cause.
func (b *Backend) connect(ctx context.Context) {
	ok, held := b.attemptLog.Allow()
	b.quiet.Store(!ok)
	if ok {
		b.held = held
	}
	if b.tried {
		b.logAt(zerolog.InfoLevel).Msg("connecting to backend")
	}
	b.tried = true
	b.setState(StateConnecting)
	b.stats.connectAttempts.Add(1)
	c, err := dialUnix(ctx, b.path)
	if err != nil {
		b.stats.connectErrors.Add(1)
		if errors.Is(err, syscall.ENOENT) {
			b.socketRemoved()
			return
		}
		if ctx.Err() != nil {
			return
		}
		b.connectFailed(err)
		b.setState(StateFaulted)
		b.scheduleReconnect()
		return
	}
	b.logAt(zerolog.InfoLevel).Msg("backend socket connected")
	b.gen++
	b.hbOutstanding.Store(false)
	// The timeout runs from before the hello is sent, so that whoever
	// sees the hello knows the timeout is armed.
	b.connectT.Set(b.set.cfg.ConnectTimeout)
	b.q.reset(queueControl)
	sess, err := startSession(b, c, b.gen)
	if err != nil {
		c.Close()
		b.fault(ReasonWriteError, err)
		return
	}
	b.sess = sess
	b.cur.Store(sess)
	b.q.push(protocol.AppendType(nil, protocol.FrameClientHello), true, 0)
}

// socketRemoved marks the backend removed: its socket is gone, and
// nothing is tried until a scan finds it again.
func (b *Backend) socketRemoved() {
	b.reconnectT.Clear()
	b.setState(StateRemoved)
	if ok, held := b.set.churnLog.Allow(); ok {
		b.log.Warn().Int64("suppressed", held).Msg("backend socket removed")
	}
}

// established runs when SERVER_HELLO arrives.
func (b *Backend) established() {
	b.connectT.Clear()
	b.delay.Store(int64(b.set.cfg.ReconnectMin))
	b.hbSendT.Set(b.set.cfg.HeartbeatInterval)
	b.q.open()
	b.startProbes()
	if b.up {
		b.epoch.Store(b.set.epochs.Add(1))
	}
	b.up = true
	b.setState(StateOK)
	b.log.Info().Msg("backend socket established")
}

func (b *Backend) sendHeartbeat() {
	b.hbOutstanding.Store(true)
	b.hbSentAt = b.set.cfg.Timeouts.Clock().Now()
	// A heartbeat that cannot even be queued is as good as unanswered:
	// this wait faults a backend that never drains its queue.
	b.hbWaitT.Set(b.set.cfg.HeartbeatTimeout)
	if b.q.push(protocol.AppendType(nil, protocol.FrameClientHeartbeat), true, 0) == pushed {
		if e := b.log.Trace(); e != nil {
			e.Msg("heartbeat sent")
		}
	}
}

// fault tears the session down and schedules a reconnect.
func (b *Backend) fault(r Reason, err error) {
	b.ok.Store(false) // stop new traffic before anything else
	b.stats.faults[r].Add(1)
	was := State(b.state.Load())
	ev := b.logAt(zerolog.ErrorLevel).Str("reason", r.String()).Str("state", was.String()).
		Int64("suppressed", b.held)
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msg("backend faulted (reset and reconnect)")
	b.closeSession()
	b.clearTimers()
	b.down = faultOf(r, err)
	b.setState(StateFaulted)
	b.down = Fault{}
	b.scheduleReconnect()
}

func (b *Backend) clearTimers() {
	b.connectT.Clear()
	b.hbSendT.Clear()
	b.hbWaitT.Clear()
	b.stopProbes()
}

// closeSession closes the standing session, if any, and waits for its
// reader and writer to stop. Frames still queued are discarded and
// counted.
func (b *Backend) closeSession() {
	b.ok.Store(false)
	if b.sess == nil {
		return
	}
	b.cur.Store(nil)
	b.sess.close()
	b.sess = nil
	if n := b.q.reset(queueClosed); n > 0 {
		b.stats.discarded.Add(uint64(n))
	}
	b.logAt(zerolog.InfoLevel).Msg("backend socket closed")
}

// scheduleReconnect arms the reconnect timer with the current back-off
// delay, then grows the delay for the attempt after: 1 s, then 2 s more
// per failure, at most 32 s (with the default settings). A SERVER_HELLO
// sets it back to the minimum.
func (b *Backend) scheduleReconnect() {
	cfg := &b.set.cfg
	d := time.Duration(b.delay.Load())
	if e := b.log.Debug(); e != nil {
		e.Float64("delay_secs", d.Seconds()).Msg("reconnect triggered for backend")
	}
	b.reconnectT.Set(d)
	next := d + cfg.ReconnectStep
	if d == 0 {
		next = cfg.ReconnectMin
	}
	b.delay.Store(int64(min(next, cfg.ReconnectMax)))
}

// reply adds an OUTBOUND_UDP frame's data to the batch of replies to
// send on to clients; a frame that names no usable address is counted
// and dropped.
func (b *Backend) reply(f *protocol.Frame, replies ReplyBatch) {
	b.stats.outboundUDP.Add(1)
	b.stats.outboundBytes.Add(uint64(len(f.Data)))
	to, ok := f.AddrPort()
	if !ok || to.Port() == 0 || f.IP == 0 {
		b.stats.outboundErrors.Add(1)
		return
	}
	replies.Add(f.Data, to)
}

// Flush writes what is queued for the backend without blocking. The UDP
// reader calls it after each batch of datagrams, with the batch's time, so
// that a batch costs one write and no goroutine has to wake; what the
// socket does not take is left to the session's writer goroutine.
func (b *Backend) Flush(now int64) {
	s := b.cur.Load()
	if s == nil {
		return
	}
	bt, expired, ok := b.q.take(now)
	b.countExpired(expired)
	if !ok {
		return
	}
	if b.q.done(bt, s.writeNow(bt.bytes())) {
		b.q.wake()
	}
}

func (b *Backend) countExpired(n int) {
	if n > 0 {
		b.stats.expired.Add(uint64(n))
	}
}

// logAt starts a record at level, or at debug level when the connect
// attempt is quiet (see connect), unless its session has been ok for
// ReconnectMax: a long-lived session's end is news. It is safe from the
// session's goroutines.
func (b *Backend) logAt(level zerolog.Level) *zerolog.Event {
	if b.quiet.Load() {
		st, since := b.State()
		if st != StateOK || b.set.cfg.Timeouts.Clock().Now().Sub(since) < b.set.cfg.ReconnectMax {
			level = zerolog.DebugLevel
		}
	}
	return b.log.WithLevel(level)
}
