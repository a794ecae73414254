package backend

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/bbal/bbal/protocol"
)

// session is one connection of a backend's standing session, with its two
// goroutines: readFrames and writeFrames. Both stop when the connection
// is closed; close waits for them.
type session struct {
	b       *Backend
	conn    net.Conn
	gen     uint64
	closing chan struct{}
	wg      sync.WaitGroup
}

func startSession(b *Backend, c net.Conn, gen uint64) *session {
	s := &session{b: b, conn: c, gen: gen, closing: make(chan struct{})}
	s.wg.Add(2)
	go s.readFrames()
	go s.writeFrames()
	return s
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
	d := protocol.NewDecoder(protocol.FromBackend, 0)
	hello := false
	for {
		_, rerr := d.Fill(s.conn)
		for {
			f, ok, err := d.Next()
			if err != nil {
				var fe *protocol.FrameError
				errors.As(err, &fe)
				if errors.Is(err, protocol.ErrTooLong) {
					b.log.Warn().Uint32("len", fe.Len).Msg("backend sent oversized UDP packet")
					s.fail(ReasonOversizedUDP, err)
				} else {
					b.log.Error().Uint32("frame_type", uint32(fe.Type)).Msg("invalid frame type")
					s.fail(ReasonUnknownFrame, err)
				}
				return
			}
			if !ok {
				break
			}
			if !hello && f.Type != protocol.FrameServerHello {
				b.log.Error().Uint32("frame_type", uint32(f.Type)).Msg("frame before SERVER_HELLO")
				s.fail(ReasonFrameBeforeHello, errors.New(f.Type.String()+" before SERVER_HELLO"))
				return
			}
			switch f.Type {
			case protocol.FrameOutboundUDP:
				if e := b.log.Trace(); e != nil {
					e.Stringer("dest_ip", protocol.U32ToAddr(f.IP)).Uint32("dest_port", f.Port).Int("data_len", len(f.Data)).Msg("outbound UDP packet")
				}
				b.reply(&f)
			case protocol.FrameServerHello:
				if hello {
					b.log.Error().Msg("duplicate SERVER_HELLO")
					s.fail(ReasonDuplicateHello, errors.New("duplicate SERVER_HELLO"))
					return
				}
				hello = true
				s.notify(evHello)
			case protocol.FrameServerHeartbeat:
				if !b.hbOutstanding.CompareAndSwap(true, false) {
					b.log.Error().Msg("unexpected heartbeat reply")
					s.fail(ReasonUnexpectedHeartbeat, errors.New("SERVER_HEARTBEAT with none outstanding"))
					return
				}
				s.notify(evHeartbeatReply)
			default: // INBOUND_TCP_OK: only valid on a TCP proxy session
				b.log.Error().Uint32("frame_type", uint32(f.Type)).Msg("invalid frame type")
				s.fail(ReasonUnknownFrame, errors.New("unexpected "+f.Type.String()))
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				b.log.Warn().Msg("backend socket EOF")
				s.fail(ReasonEOF, rerr)
			} else {
				select {
				case <-s.closing: // our own Close
				default:
					b.log.Error().Err(rerr).Msg("backend socket error")
				}
				s.fail(ReasonReadError, rerr)
			}
			return
		}
	}
}

// writeFrames writes whatever the queue holds, a batch per write.
func (s *session) writeFrames() {
	defer s.wg.Done()
	q := s.b.q
	var spare []byte
	for {
		select {
		case <-s.closing:
			return
		case <-q.kick:
		}
		batch, _ := q.take(spare)
		if len(batch) > 0 {
			if _, err := s.conn.Write(batch); err != nil {
				select {
				case <-s.closing:
				default:
					s.b.log.Error().Err(err).Msg("backend socket error")
				}
				s.fail(ReasonWriteError, err)
				return
			}
		}
		spare = batch
	}
}
