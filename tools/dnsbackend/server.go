package dnsbackend

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"

	"github.com/bbal/bbal/protocol"
)

// Server answers queries over the balancer protocol and plain DNS, with
// one answer function for all three. Each connection's replies are
// buffered and written when its input runs dry, the same way on every
// transport.
type Server struct {
	answer AnswerFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer returns a server giving the demo answers as name.
func NewServer(name string) *Server {
	a := &Answerer{Name: name}
	return NewServerFunc(a.Answer)
}

// NewServerFunc returns a server answering with f.
func NewServerFunc(f AnswerFunc) *Server {
	return &Server{answer: f, conns: map[net.Conn]struct{}{}}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.wg.Done()
}

// Close closes every open connection and waits for their goroutines. The
// listeners are the caller's to close.
func (s *Server) Close() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// ServeBalancer accepts balancer sessions on ln until it is closed.
func (s *Server) ServeBalancer(ln net.Listener) error {
	return s.accept(ln, s.serveSession)
}

// ServeTCP accepts plain DNS-over-TCP connections on ln until it is
// closed.
func (s *Server) ServeTCP(ln net.Listener) error {
	return s.accept(ln, func(c net.Conn) {
		s.serveStream(c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), bufio.NewReader(c))
	})
}

func (s *Server) accept(ln net.Listener, serve func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go func() {
			defer s.untrack(c)
			serve(c)
		}()
	}
}

// ServeUDP answers plain DNS datagrams on c until it is closed.
func (s *Server) ServeUDP(c *net.UDPConn) error {
	buf := make([]byte, 65535)
	out := make([]byte, 0, 4096)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		if resp := s.answer(buf[:n], from, false, out); resp != nil {
			c.WriteToUDPAddrPort(resp, from)
		}
	}
}

// serveSession runs one balancer session: a standing session (hello,
// UDP frames, heartbeats) or, after INBOUND_TCP, a proxied TCP stream.
func (s *Server) serveSession(c net.Conn) {
	d := protocol.NewDecoder(protocol.FromBalancer, 0)
	w := bufio.NewWriterSize(c, 64<<10)
	out := make([]byte, 0, 4096)
	hello := false
	for {
		_, rerr := d.Fill(c)
		for {
			f, ok, err := d.Next()
			if err != nil || !ok {
				if err != nil {
					return
				}
				break
			}
			switch f.Type {
			case protocol.FrameClientHello:
				hello = true
				w.Write(protocol.AppendType(nil, protocol.FrameServerHello))
			case protocol.FrameClientHeartbeat:
				if !hello {
					return
				}
				w.Write(protocol.AppendType(nil, protocol.FrameServerHeartbeat))
			case protocol.FrameInboundUDP:
				if !hello {
					return
				}
				from, _ := f.AddrPort()
				if resp := s.answer(f.Data, from, false, out); resp != nil {
					var hdr [protocol.UDPHeaderLen]byte
					protocol.PutUDPHeader(hdr[:], protocol.FrameOutboundUDP, f.IP, from.Port(), len(resp))
					w.Write(hdr[:])
					w.Write(resp)
				}
			case protocol.FrameInboundTCP:
				from, _ := f.AddrPort()
				w.Write(protocol.AppendType(nil, protocol.FrameInboundTCPOK))
				if w.Flush() != nil {
					return
				}
				// What followed the frame in the buffer is the
				// start of the client's stream.
				rest := bytes.Clone(d.Rest())
				s.serveStream(c, from, bufio.NewReader(io.MultiReader(bytes.NewReader(rest), c)))
				return
			}
		}
		if w.Flush() != nil || rerr != nil {
			return
		}
	}
}

// serveStream answers length-prefixed DNS messages read from r and
// written to c, until EOF; then it half-closes its side.
func (s *Server) serveStream(c net.Conn, from netip.AddrPort, r *bufio.Reader) {
	w := bufio.NewWriterSize(c, 64<<10)
	out := make([]byte, 0, 4096)
	msg := make([]byte, 65535)
	var lenbuf [2]byte
	for {
		if r.Buffered() == 0 && w.Flush() != nil {
			return
		}
		if _, err := io.ReadFull(r, lenbuf[:]); err != nil {
			break
		}
		m := msg[:binary.BigEndian.Uint16(lenbuf[:])]
		if _, err := io.ReadFull(r, m); err != nil {
			break
		}
		resp := s.answer(m, from, true, out)
		if resp == nil {
			w.Flush()
			return
		}
		w.Write(binary.BigEndian.AppendUint16(lenbuf[:0], uint16(len(resp))))
		w.Write(resp)
	}
	if w.Flush() != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
