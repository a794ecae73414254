package backend

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/protocol"
)

// session is one connection of a backend's standing session, with its two
// goroutines: readFrames and writeFrames. Both stop when the connection
// is closed; close waits for them.
type session struct {
	b       *Backend
	conn    *net.UnixConn
	raw     syscall.RawConn
	gen     uint64
	closing chan struct{}
	wg      sync.WaitGroup

	// writeNow's state: only the queue's current writer uses them. The
	// callback is made once so that passing it allocates nothing.
	wbuf    []byte
	wn      int
	writeFn func(fd uintptr) bool

	// readFrames' state, for the same reason: the decoder, this
	// session's replies, whether SERVER_HELLO was seen, and the read
	// or protocol error that ended it.
	dec     *protocol.Decoder
	replies ReplyBatch
	hello   bool
	readFn  func(fd uintptr) bool
	rerr    error
	perr    error
}

func startSession(b *Backend, c *net.UnixConn, gen uint64) (*session, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &session{b: b, conn: c, raw: raw, gen: gen, closing: make(chan struct{})}
	s.writeFn = s.writeRaw
	s.readFn = s.readRaw
	s.dec = protocol.NewDecoder(protocol.FromBackend, 0)
	s.replies = b.set.links.Replies(b)
	s.wg.Add(2)
	go s.readFrames()
	go s.writeFrames()
	return s, nil
}

func (s *session) close() {
	close(s.closing)
	s.conn.Close()
	s.wg.Wait()
}

// fail reports the session's end to the backend's goroutine, unless that
// goroutine is already closing it.
func (s *session) fail(r Reason, err error) {
	select {
	case <-s.closing:
	case s.b.events <- event{kind: evFault, gen: s.gen, reason: r, err: err}:
	}
}

func (s *session) notify(k eventKind) {
	select {
	case <-s.closing:
	case s.b.events <- event{kind: k, gen: s.gen}:
	}
}

// readFrames decodes what the backend sends. OUTBOUND_UDP frames are sent
// on to clients from here, without a trip through the backend's
// goroutine; the rest become events. Any protocol error ends the session.
func (s *session) readFrames() {
	defer s.wg.Done()
	b := s.b
	err := s.raw.Read(s.readFn)
	if s.perr != nil { // already reported
		return
	}
	if s.rerr != nil {
		err = s.rerr
	}
	if errors.Is(err, io.EOF) {
		b.logAt(zerolog.WarnLevel).Msg("backend socket EOF")
		s.fail(ReasonEOF, err)
		return
	}
	select {
	case <-s.closing: // our own Close
	default:
		b.logAt(zerolog.ErrorLevel).Err(err).Msg("backend socket error")
	}
	s.fail(ReasonReadError, err)
}

// readRaw reads and handles what the backend sent, waiting in the
// runtime's poller when there is nothing, until EOF, an error or a
// protocol error. It reads until EAGAIN before waiting: on a stream
// socket a short read does not mean nothing is pending, as the backend's
// FIN may have come with its last bytes and will raise no further edge.
func (s *session) readRaw(fd uintptr) bool {
	for {
		space := s.dec.Space()
		if len(space) == 0 {
			s.rerr = protocol.ErrFull
			return true
		}
		n, err := unix.Read(int(fd), space)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			s.rerr = err
			return true
		case n == 0:
			s.rerr = io.EOF
			return true
		}
		s.dec.Commit(n)
		s.perr = s.frames(s.dec, s.replies, &s.hello)
		// Replies point into the decoder's buffer: out they go before
		// it is filled again.
		if failed := s.replies.Flush(); failed > 0 {
			s.b.stats.outboundErrors.Add(uint64(failed))
		}
		if s.perr != nil {
			return true
		}
	}
}

// frames handles the whole frames in d. A protocol error ends the session
// and is returned.
func (s *session) frames(d *protocol.Decoder, replies ReplyBatch, hello *bool) error {
	b := s.b
	for {
		f, ok, err := d.Next()
		if err != nil {
			var fe *protocol.FrameError
			errors.As(err, &fe)
			err = oversizedCulprit(d, err)
			if errors.Is(err, protocol.ErrTooLong) {
				b.logAt(zerolog.WarnLevel).Uint32("len", fe.Len).Msg("backend sent oversized UDP packet")
				s.fail(ReasonOversizedUDP, err)
			} else {
				b.logAt(zerolog.ErrorLevel).Uint32("frame_type", uint32(fe.Type)).Msg("invalid frame type")
				s.fail(ReasonUnknownFrame, err)
			}
			return err
		}
		if !ok {
			return nil
		}
		if !*hello && f.Type != protocol.FrameServerHello {
			b.logAt(zerolog.ErrorLevel).Uint32("frame_type", uint32(f.Type)).Msg("frame before SERVER_HELLO")
			err := errors.New(f.Type.String() + " before SERVER_HELLO")
			s.fail(ReasonFrameBeforeHello, err)
			return err
		}
		switch f.Type {
		case protocol.FrameOutboundUDP:
			// One compare when probes are off: the answer to a
			// probe goes no further.
			if f.IP == b.probe.ip && b.probe.on {
				s.probeAnswer(&f)
				continue
			}
			if e := b.log.Trace(); e != nil {
				e.Stringer("dest_ip", protocol.U32ToAddr(f.IP)).Uint32("dest_port", f.Port).
					Int("data_len", len(f.Data)).Msg("outbound UDP packet")
			}
			b.reply(&f, replies)
		case protocol.FrameServerHello:
			if *hello {
				b.logAt(zerolog.ErrorLevel).Msg("duplicate SERVER_HELLO")
				err := errors.New("duplicate SERVER_HELLO")
				s.fail(ReasonDuplicateHello, err)
				return err
			}
			*hello = true
			s.notify(evHello)
		case protocol.FrameServerHeartbeat:
			if !b.hbOutstanding.CompareAndSwap(true, false) {
				b.logAt(zerolog.ErrorLevel).Msg("unexpected heartbeat reply")
				err := errors.New("SERVER_HEARTBEAT with none outstanding")
				s.fail(ReasonUnexpectedHeartbeat, err)
				return err
			}
			s.notify(evHeartbeatReply)
		default: // INBOUND_TCP_OK: only valid on a TCP proxy session
			b.logAt(zerolog.ErrorLevel).Uint32("frame_type", uint32(f.Type)).Msg("invalid frame type")
			err := errors.New("unexpected " + f.Type.String())
			s.fail(ReasonUnknownFrame, err)
			return err
		}
	}
}

// writeFrames writes whatever the queue holds when it is woken: control
// frames, and what the UDP reader's non-blocking Flush could not write.
// It may block; nothing waits for it.
func (s *session) writeFrames() {
	defer s.wg.Done()
	q := s.b.q
	for {
		select {
		case <-s.closing:
			return
		case <-q.kick:
		}
		for {
			bt, expired, ok := q.take(s.b.set.cfg.Timeouts.Clock().Now().UnixNano())
			s.b.countExpired(expired)
			if !ok {
				break
			}
			n, err := s.conn.Write(bt.bytes())
			more := q.done(bt, n)
			if err != nil {
				select {
				case <-s.closing:
				default:
					s.b.logAt(zerolog.ErrorLevel).Err(err).Msg("backend socket error")
				}
				s.fail(ReasonWriteError, err)
				return
			}
			if !more {
				break
			}
		}
	}
}

// writeNow writes as much of buf as the socket takes at once, without
// waiting, and returns how much that was. An error is left for the
// writer goroutine to meet and report.
func (s *session) writeNow(buf []byte) int {
	s.wbuf, s.wn = buf, 0
	s.raw.Write(s.writeFn)
	s.wbuf = nil
	return s.wn
}

func (s *session) writeRaw(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		m, err := unix.Write(int(fd), s.wbuf[s.wn:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			break
		}
		s.wn += m
	}
	return true
}
