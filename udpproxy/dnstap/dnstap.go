package dnstap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dt "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/bbal/bbal/backend/counter"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
)

// DefaultQueueLen is the queue's length when Config.QueueLen is 0: at
// 100,000 queries a second (200,000 messages), 5 ms of a stalled
// writer, in 1.6 MB.
const DefaultQueueLen = 1024

// Timeouts of the collector's stream.
const (
	// WriteTimeout bounds a write (and the handshake's read) to a
	// socket: a collector that takes none of bbal's stream for this
	// long is taken for gone. Meanwhile the queue fills and messages
	// are dropped.
	WriteTimeout = 2 * time.Second
	// dialTimeout bounds a TCP connect.
	dialTimeout = 2 * time.Second
	// FlushDelay is the writer's period while messages come: it takes
	// what was queued in that time, and writes it to the collector at
	// once (or per 64 KiB), rather than waking and writing per message.
	// An idle writer is woken by the next message, and takes it
	// FlushDelay later.
	FlushDelay = time.Millisecond
	// FirstRetry is the delay of the first reconnect after a loss;
	// each failure doubles it, up to MaxRetry.
	FirstRetry = 100 * time.Millisecond
	MaxRetry   = 10 * time.Second
)

// Target is where the stream goes: Network "unix", "tcp" or "file".
type Target struct {
	Network string
	Addr    string
}

func (t Target) String() string { return t.Network + ":" + t.Addr }

// ParseTarget parses -D: unix:PATH, file:PATH or tcp:ADDR:PORT (an IPv6
// address in brackets).
func ParseTarget(s string) (Target, error) {
	netw, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" {
		return Target{}, fmt.Errorf("invalid -D %q (want unix:PATH, file:PATH or tcp:ADDR:PORT)", s)
	}
	switch netw {
	case "unix":
		// The limit of sun_path, with its NUL.
		if len(addr) > 107 {
			return Target{}, fmt.Errorf("invalid -D %q: a Unix socket path is at most 107 bytes", s)
		}
	case "file":
	case "tcp":
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return Target{}, fmt.Errorf("invalid -D %q: want tcp:ADDR:PORT with a numeric address, e.g. tcp:127.0.0.1:6000", s)
		}
	default:
		return Target{}, fmt.Errorf("invalid -D %q: unknown kind %q (want unix:PATH, file:PATH or tcp:ADDR:PORT)", s, netw)
	}
	return Target{Network: netw, Addr: addr}, nil
}

// Config configures a Writer.
type Config struct {
	Target   Target
	Identity string // dnstap identity: the host's name, as resolvers give it
	Version  string // dnstap version: bbal's
	QueueLen int    // DefaultQueueLen when 0
	Timeouts *timeouts.Set
	Log      zerolog.Logger
}

// slot is one queued message, of fixed size.
type slot struct {
	resp, self    bool
	client, local netip.AddrPort
	at            int64
	n             int
	msg           [protocol.MaxData]byte
}

// Writer streams messages to a collector. Open makes one.
type Writer struct {
	cfg      Config
	log      zerolog.Logger
	free     chan *slot
	queue    chan *slot
	retry    chan struct{} // the reconnect timer's posts to writeLoop
	flush    chan struct{} // the flush timer's
	wake     chan struct{} // put's, when the writer is idle
	hurry    chan struct{} // put's, when the queue is half full
	half     int
	idle     atomic.Bool // nothing queued at the last drain: the next put wakes the writer
	flushT   *timeouts.Timeout
	done     chan struct{}
	retryT   *timeouts.Timeout
	lostLog  *timeouts.Limiter
	failLog  *timeouts.Limiter
	wg       sync.WaitGroup
	once     sync.Once
	mu       sync.Mutex
	closer   io.Closer // the open stream's, for Close; nil when none
	closed   bool
	sent     atomic.Uint64
	full     atomic.Uint64
	gone     atomic.Uint64
	reconns  atomic.Uint64
	connErrs atomic.Uint64
}

// Open opens the target (a failure is returned: the collector must be
// there at start) and starts the writer goroutine.
func Open(cfg Config) (*Writer, error) {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	clock := cfg.Timeouts.Clock()
	w := &Writer{cfg: cfg, log: cfg.Log.With().Str("component", "dnstap").Str("target", cfg.Target.String()).Logger(),
		free: make(chan *slot, cfg.QueueLen), queue: make(chan *slot, cfg.QueueLen),
		retry: make(chan struct{}, 1), flush: make(chan struct{}, 1), wake: make(chan struct{}, 1), hurry: make(chan struct{}, 1), half: cfg.QueueLen / 2, done: make(chan struct{}),
		lostLog: timeouts.NewLimiter(clock, 5*time.Second), failLog: timeouts.NewLimiter(clock, 5*time.Second)}
	w.retryT = cfg.Timeouts.NewTimeout("dnstap reconnect", func() { post(w.retry) })
	w.flushT = cfg.Timeouts.NewTimeout("dnstap flush", func() { post(w.flush) })
	st, err := w.open()
	if err != nil {
		return nil, fmt.Errorf("dnstap %v: %w", cfg.Target, err)
	}
	slots := make([]slot, cfg.QueueLen)
	for i := range slots {
		w.free <- &slots[i]
	}
	w.log.Info().Msg("dnstap stream open")
	w.idle.Store(true)
	w.wg.Add(1)
	go w.writeLoop(st)
	return w, nil
}

// Query queues a CLIENT_QUERY; it never waits.
func (w *Writer) Query(client, local netip.AddrPort, msg []byte, at int64) {
	w.put(false, false, client, local, msg, at)
}

// Response queues a CLIENT_RESPONSE; it never waits.
func (w *Writer) Response(client, local netip.AddrPort, msg []byte, at int64, self bool) {
	w.put(true, self, client, local, msg, at)
}

func (w *Writer) put(resp, self bool, client, local netip.AddrPort, msg []byte, at int64) {
	var s *slot
	select {
	case s = <-w.free:
	default:
		w.full.Add(1)
		return
	}
	s.resp, s.self, s.client, s.local, s.at = resp, self, client, local, at
	s.n = copy(s.msg[:], msg)
	w.queue <- s // never blocks: it holds every slot
	if w.idle.Load() && w.idle.CompareAndSwap(true, false) {
		post(w.wake)
	} else if len(w.queue) >= w.half {
		post(w.hurry) // a full channel costs no lock
	}
}

// stream is an open stream to the collector: after the Frame Streams
// handshake (framestream's), bbal writes the data frames itself, each
// its 4-byte length and the message, through a buffer of its own.
type stream struct {
	fw     *framestream.Writer
	bw     *bufio.Writer
	closer io.Closer
}

// bufSize is the stream's write buffer: what is written to the
// collector in one system call at most.
const bufSize = 64 << 10

// open connects (or opens the file) and writes the stream's start.
func (w *Writer) open() (*stream, error) {
	t := w.cfg.Target
	ct := [][]byte{[]byte("protobuf:dnstap.Dnstap")}
	if t.Network == "file" {
		f, err := os.OpenFile(t.Addr, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, err
		}
		if !w.setCloser(f) {
			f.Close()
			return nil, net.ErrClosed
		}
		fw, err := framestream.NewWriter(f, &framestream.WriterOptions{ContentTypes: ct})
		if err != nil {
			f.Close()
			w.setCloser(nil)
			return nil, err
		}
		return &stream{fw: fw, bw: bufio.NewWriterSize(f, bufSize), closer: f}, nil
	}
	c, err := net.DialTimeout(t.Network, t.Addr, dialTimeout)
	if err != nil {
		return nil, err
	}
	if !w.setCloser(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	fw, err := framestream.NewWriter(c, &framestream.WriterOptions{ContentTypes: ct, Bidirectional: true, Timeout: WriteTimeout})
	if err != nil {
		c.Close()
		w.setCloser(nil)
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return &stream{fw: fw, bw: bufio.NewWriterSize(deadlineWriter{c}, bufSize), closer: c}, nil
}

// deadlineWriter gives each write to a collector's socket WriteTimeout.
type deadlineWriter struct{ c net.Conn }

func (d deadlineWriter) Write(b []byte) (int, error) {
	d.c.SetWriteDeadline(time.Now().Add(WriteTimeout))
	return d.c.Write(b)
}

// setCloser records what Close must close; false once closed.
func (w *Writer) setCloser(c io.Closer) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.closer = c
	return true
}

// post is a timer's callback: it only tells writeLoop.
func post(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// writeLoop is the goroutine that owns the stream: it drains the queue
// every FlushDelay while messages come (at once when it is half full),
// writing them to the collector, and reconnects when the stream is
// lost.
func (w *Writer) writeLoop(st *stream) {
	defer w.wg.Done()
	var enc encoder
	enc.init(w.cfg.Identity, w.cfg.Version)
	delay := FirstRetry
	pending := uint64(0) // messages in st.bw since its last flush
	// flush writes st.bw to the collector, counting its messages sent;
	// or else lost, with the stream.
	flush := func() bool {
		if err := st.bw.Flush(); err != nil {
			w.gone.Add(pending)
			pending = 0
			w.lost(st, err)
			st = nil
			if !w.stopping() {
				w.retryT.Set(delay)
			}
			return false
		}
		w.sent.Add(pending)
		pending = 0
		return true
	}
	// write puts one message in st.bw, flushing first if it is full.
	write := func(s *slot) {
		if st == nil {
			w.gone.Add(1)
			w.free <- s
			return
		}
		b := enc.encode(s)
		w.free <- s
		if st.bw.Available() < len(b) && !flush() {
			w.gone.Add(1)
			return
		}
		st.bw.Write(b) // it fits: no write to the collector, and no error
		pending++
	}
	// drain writes what is queued and flushes it.
	drain := func() {
		n := 0
		for len(w.queue) > 0 {
			write(<-w.queue) // only writeLoop receives: it does not block
			n++
		}
		if st != nil && pending > 0 {
			flush()
		}
		w.rest(n)
	}
	for {
		select {
		case <-w.done:
			// A file takes what is queued, and the stream's end
			// (STOP); a collector's socket is closed already.
			if st != nil && w.cfg.Target.Network == "file" {
				for len(w.queue) > 0 {
					write(<-w.queue)
				}
				if st != nil && flush() {
					st.fw.Close()
				}
			}
			return
		case <-w.retry:
			if st != nil {
				continue
			}
			var err error
			if st, err = w.open(); err != nil {
				if w.stopping() {
					return
				}
				w.connErrs.Add(1)
				delay = min(2*delay, MaxRetry)
				if ok, held := w.failLog.Allow(); ok {
					w.log.Warn().Err(err).Dur("retry_in", delay).Int64("suppressed", held).Msg("dnstap reconnect failed")
				}
				w.retryT.Set(delay)
				continue
			}
			delay = FirstRetry
			w.reconns.Add(1)
			w.log.Info().Msg("dnstap stream reconnected")
		case <-w.wake:
			w.flushT.Set(FlushDelay)
		case <-w.flush:
			drain()
		case <-w.hurry:
			drain()
		}
	}
}

// rest arms the next drain after one that took n messages; after an
// empty one the writer is idle, until put wakes it (or a message came
// in meanwhile).
func (w *Writer) rest(n int) {
	if n > 0 {
		w.flushT.Set(FlushDelay)
		return
	}
	w.idle.Store(true)
	if len(w.queue) > 0 && w.idle.CompareAndSwap(true, false) {
		w.flushT.Set(FlushDelay)
	}
}

// stopping reports whether Close was called.
func (w *Writer) stopping() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// lost closes a stream that failed.
func (w *Writer) lost(st *stream, err error) {
	st.closer.Close()
	w.setCloser(nil)
	if errors.Is(err, net.ErrClosed) {
		return // Close
	}
	if ok, held := w.lostLog.Allow(); ok {
		w.log.Warn().Err(err).Int64("suppressed", held).Msg("dnstap collector lost; dropping messages until it is back")
	}
}

// Close stops the writer. A file is written what was queued, and the
// stream's end; a collector's socket is closed at once (what was queued
// for it, at most FlushDelay's messages, is lost), so that Close never
// waits on a collector that takes nothing.
func (w *Writer) Close() {
	w.once.Do(func() {
		w.retryT.Clear()
		w.flushT.Clear()
		w.mu.Lock()
		w.closed = true
		c := w.closer
		w.mu.Unlock()
		close(w.done)
		if c != nil && w.cfg.Target.Network != "file" {
			// A blocked write is released now; a file's last
			// frames are flushed first.
			c.Close()
		}
	})
	w.wg.Wait()
	w.mu.Lock()
	if w.closer != nil {
		w.closer.Close()
		w.closer = nil
	}
	w.mu.Unlock()
}

// encoder turns slots into Frame Streams data frames of dnstap
// protobuf, reusing its buffers. It writes the few fields of dnstap.proto
// bbal sets with protowire, the protobuf module's own wire encoding:
// a tenth of what proto.Marshal of golang-dnstap's structs costs.
type encoder struct {
	head []byte // the Dnstap's identity and version, encoded
	self []byte // its extra, encoded, for bbal's own answers
	msg  []byte // the Message, encoded
	buf  []byte // the frame
}

// The field numbers of dnstap.proto.
const (
	fIdentity, fVersion, fExtra, fMessage, fType = 1, 2, 3, 14, 15

	mType, mFamily, mProtocol, mQueryAddress, mResponseAddress = 1, 2, 3, 4, 5
	mQueryPort, mResponsePort, mQueryTimeSec, mQueryTimeNsec   = 6, 7, 8, 9
	mQueryMessage, mResponseTimeSec, mResponseTimeNsec         = 10, 12, 13
	mResponseMessage                                           = 14
)

func (e *encoder) init(identity, version string) {
	if identity != "" {
		e.head = protowire.AppendTag(e.head, fIdentity, protowire.BytesType)
		e.head = protowire.AppendString(e.head, identity)
	}
	if version != "" {
		e.head = protowire.AppendTag(e.head, fVersion, protowire.BytesType)
		e.head = protowire.AppendString(e.head, version)
	}
	e.self = protowire.AppendTag(nil, fExtra, protowire.BytesType)
	e.self = protowire.AppendString(e.self, "bbal:self")
	e.msg = make([]byte, 0, 2*protocol.MaxData)
	e.buf = make([]byte, 0, 2*protocol.MaxData+len(e.head)+len(e.self)+16)
}

func appendVarint(b []byte, field protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, field, protowire.VarintType), v)
}

func appendBytes(b []byte, field protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, field, protowire.BytesType), v)
}

func appendAddr(b []byte, field protowire.Number, a netip.Addr) []byte {
	if a.Is4() {
		a4 := a.As4()
		return appendBytes(b, field, a4[:])
	}
	a16 := a.As16()
	return appendBytes(b, field, a16[:])
}

func (e *encoder) encode(s *slot) []byte {
	client, local := s.client.Addr().Unmap(), s.local.Addr().Unmap()
	typ, fam := dt.Message_CLIENT_QUERY, dt.SocketFamily_INET
	timeSec, timeNsec, message := protowire.Number(mQueryTimeSec), protowire.Number(mQueryTimeNsec), protowire.Number(mQueryMessage)
	if s.resp {
		typ = dt.Message_CLIENT_RESPONSE
		timeSec, timeNsec, message = mResponseTimeSec, mResponseTimeNsec, mResponseMessage
	}
	if client.Is6() {
		fam = dt.SocketFamily_INET6
	}
	m := appendVarint(e.msg[:0], mType, uint64(typ))
	m = appendVarint(m, mFamily, uint64(fam))
	m = appendVarint(m, mProtocol, uint64(dt.SocketProtocol_UDP))
	m = appendAddr(m, mQueryAddress, client)
	m = appendAddr(m, mResponseAddress, local)
	m = appendVarint(m, mQueryPort, uint64(s.client.Port()))
	m = appendVarint(m, mResponsePort, uint64(s.local.Port()))
	m = appendVarint(m, timeSec, uint64(s.at/1e9))
	m = protowire.AppendFixed32(protowire.AppendTag(m, timeNsec, protowire.Fixed32Type), uint32(s.at%1e9))
	m = appendBytes(m, message, s.msg[:s.n])
	e.msg = m

	b := append(e.buf[:4], e.head...)
	if s.self {
		b = append(b, e.self...)
	}
	b = appendBytes(b, fMessage, m)
	b = appendVarint(b, fType, uint64(dt.Dnstap_MESSAGE))
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	e.buf = b
	return b
}

// Counts are the writer's plain counts, as the debug API shows them.
type Counts struct {
	Sent        uint64 `json:"sent"`                 // messages written to the collector (counted at each flush)
	QueueFull   uint64 `json:"dropped_queue_full"`   // dropped for want of a free slot
	NoCollector uint64 `json:"dropped_no_collector"` // dropped while the stream was lost
	Reconnects  uint64 `json:"reconnects"`           // streams opened again after a loss
	ConnErrors  uint64 `json:"reconnect_errors"`     // reconnects that failed
}

// Counter is one of the writer's counts; Counters lists them.
type Counter = counter.Counter[Writer, Counts]

var counterTable = counter.Table[Writer, Counts]{
	{Metric: "bbal_dnstap_sent_total", Help: "dnstap messages written to the collector (-D).", Field: func(w *Writer) counter.Value { return &w.sent }, Stat: func(s *Counts) *uint64 { return &s.Sent }},
	{Metric: "bbal_dnstap_dropped_total", Help: "dnstap messages dropped: queue_full (the collector too slow), no_collector (its stream lost).", Reason: "queue_full", Field: func(w *Writer) counter.Value { return &w.full }, Stat: func(s *Counts) *uint64 { return &s.QueueFull }},
	{Metric: "bbal_dnstap_dropped_total", Help: "dnstap messages dropped: queue_full (the collector too slow), no_collector (its stream lost).", Reason: "no_collector", Field: func(w *Writer) counter.Value { return &w.gone }, Stat: func(s *Counts) *uint64 { return &s.NoCollector }},
	{Metric: "bbal_dnstap_reconnects_total", Help: "dnstap streams opened again after the collector was lost.", Field: func(w *Writer) counter.Value { return &w.reconns }, Stat: func(s *Counts) *uint64 { return &s.Reconnects }},
	{Metric: "bbal_dnstap_reconnect_errors_total", Help: "dnstap reconnects that failed (retried with back-off).", Field: func(w *Writer) counter.Value { return &w.connErrs }, Stat: func(s *Counts) *uint64 { return &s.ConnErrors }},
}

// Counters returns the table of the writer's counts, for the metrics.
func Counters() []Counter { return append([]Counter(nil), counterTable...) }

// Stats returns the writer's counts; a nil Writer's are zero.
func (w *Writer) Stats() Counts {
	var s Counts
	if w != nil {
		counterTable.Load(w, &s)
	}
	return s
}

// ResetCounters sets the counts back to zero.
func (w *Writer) ResetCounters() {
	if w != nil {
		counterTable.Reset(w)
	}
}
