package testbed

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/dnsbackend"
)

// Fake is a backend socket whose sessions a test drives frame by frame.
type Fake struct {
	Path  string
	ln    *net.UnixListener
	conns chan *FakeConn
	done  chan struct{}
}

// NewFake listens on path. Accepted sessions queue up for Accept. The
// listener and every session are closed at the end of the test.
func NewFake(t testing.TB, path string) *Fake {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fake{Path: path, ln: ln, conns: make(chan *FakeConn, 100), done: make(chan struct{})}
	var all []*FakeConn
	go func() {
		defer close(f.done)
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			fc := &FakeConn{UnixConn: c, dec: protocol.NewDecoder(protocol.FromBalancer, 0)}
			all = append(all, fc)
			f.conns <- fc
		}
	}()
	t.Cleanup(func() {
		f.Close()
		<-f.done
		for _, c := range all {
			c.Close()
		}
	})
	return f
}

// Close stops listening and unlinks the socket.
func (f *Fake) Close() { f.ln.Close() }

// CloseKeepSocket stops listening but leaves the socket file, as a
// crashed process does.
func (f *Fake) CloseKeepSocket() {
	f.ln.SetUnlinkOnClose(false)
	f.ln.Close()
}

// Accept returns the next session the balancer opens, failing the test
// after 10 s.
func (f *Fake) Accept(t testing.TB) *FakeConn {
	t.Helper()
	select {
	case c := <-f.conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("no connection to %s", f.Path)
		return nil
	}
}

// NoAccept checks that no session is waiting to be accepted.
func (f *Fake) NoAccept(t testing.TB) {
	t.Helper()
	select {
	case <-f.conns:
		t.Fatalf("unexpected connection to %s", f.Path)
	default:
	}
}

// FakeConn is one session to a Fake.
type FakeConn struct {
	*net.UnixConn
	dec *protocol.Decoder
}

// Next returns the next frame from the balancer (its data copied),
// failing the test after 10 s or on a malformed frame.
func (c *FakeConn) Next(t testing.TB) protocol.Frame {
	t.Helper()
	f, err := c.next(10 * time.Second)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

func (c *FakeConn) next(timeout time.Duration) (protocol.Frame, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, ok, err := c.dec.Next()
		if err != nil {
			return f, err
		}
		if ok {
			f.Data = bytes.Clone(f.Data)
			return f, nil
		}
		if _, err := c.dec.Fill(c.UnixConn); err != nil {
			return f, err
		}
	}
}

// Expect reads the next frame and checks its type.
func (c *FakeConn) Expect(t testing.TB, want protocol.FrameType) protocol.Frame {
	t.Helper()
	f := c.Next(t)
	if f.Type != want {
		t.Fatalf("got %v, want %v", f.Type, want)
	}
	return f
}

// Send writes raw bytes to the balancer.
func (c *FakeConn) Send(t testing.TB, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// SendType writes a frame that is only a type word.
func (c *FakeConn) SendType(t testing.TB, ft protocol.FrameType) {
	t.Helper()
	c.Send(t, protocol.AppendType(nil, ft))
}

// Hello completes the standing session's handshake.
func (c *FakeConn) Hello(t testing.TB) {
	t.Helper()
	c.Expect(t, protocol.FrameClientHello)
	c.SendType(t, protocol.FrameServerHello)
}

// ExpectClosed reads until the balancer closes the session, discarding
// frames, failing the test after 10 s.
func (c *FakeConn) ExpectClosed(t testing.TB) {
	t.Helper()
	for {
		_, err := c.next(10 * time.Second)
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
			return
		}
		t.Fatalf("session not closed: %v", err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// Answer serves the rest of a standing session as a well-behaved backend
// named name would (answering UDP queries and heartbeats) until the
// balancer closes it. It runs on the caller's goroutine.
func (c *FakeConn) Answer(name string) {
	c.Serve(AnswerAs(name))
}

// AnswerAs returns the frame handler of a well-behaved backend named
// name, for Serve: heartbeats and UDP queries are answered.
func AnswerAs(name string) func(protocol.Frame) []byte {
	a := dnsbackend.Answerer{Name: name}
	return func(f protocol.Frame) []byte {
		switch f.Type {
		case protocol.FrameClientHeartbeat:
			return protocol.AppendType(nil, protocol.FrameServerHeartbeat)
		case protocol.FrameInboundUDP:
			from, _ := f.AddrPort()
			if resp := a.Answer(f.Data, from, false, nil); resp != nil {
				return protocol.AppendUDP(nil, protocol.FrameOutboundUDP, f.IP, from.Port(), resp)
			}
		}
		return nil
	}
}

// Serve calls fn for each frame the balancer sends, and sends back what
// fn returns (nothing for nil), until the balancer closes the session.
// It runs on the caller's goroutine.
func (c *FakeConn) Serve(fn func(protocol.Frame) []byte) {
	for {
		f, err := c.next(time.Hour)
		if err != nil {
			return
		}
		if out := fn(f); out != nil {
			c.Write(out)
		}
	}
}

// GoBackend is a well-behaved backend served in this process by
// dnsbackend, on a real socket.
type GoBackend struct {
	Path string
	srv  *dnsbackend.Server
	ln   *net.UnixListener
	done chan struct{}
}

// StartGo serves a dnsbackend named name on path until Close or the end
// of the test.
func StartGo(t testing.TB, path, name string) *GoBackend {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	g := &GoBackend{Path: path, srv: dnsbackend.NewServer(name), ln: ln, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		g.srv.ServeBalancer(ln)
	}()
	t.Cleanup(g.Close)
	return g
}

// Close stops the backend the way a clean shutdown does: the socket is
// unlinked and every session closed.
func (g *GoBackend) Close() {
	g.ln.Close()
	<-g.done
	g.srv.Close()
}

// Crash stops the backend leaving its socket file behind.
func (g *GoBackend) Crash() {
	g.ln.SetUnlinkOnClose(false)
	g.Close()
}
