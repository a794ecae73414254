package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Errors a Decoder reports, wrapped in a *FrameError; test with errors.Is.
var (
	// ErrUnknownFrame: the type word is not one the peer may send.
	ErrUnknownFrame = errors.New("protocol: unknown frame type")
	// ErrTooLong: a UDP frame's data length is over MaxData.
	ErrTooLong = errors.New("protocol: frame data too long")
	// ErrFull: the decoder has no room for more bytes. It cannot happen
	// to a caller that drains Next before each Fill.
	ErrFull = errors.New("protocol: decoder buffer full")
)

// FrameError describes a malformed frame.
type FrameError struct {
	Type FrameType
	Len  uint32 // the data length, for ErrTooLong
	Err  error
}

func (e *FrameError) Error() string {
	if errors.Is(e.Err, ErrTooLong) {
		return fmt.Sprintf("%s data length %d over %d", e.Type, e.Len, MaxData)
	}
	return fmt.Sprintf("unknown %s", e.Type)
}

func (e *FrameError) Unwrap() error { return e.Err }

// Direction says which side's frames a Decoder accepts.
type Direction int

const (
	// FromBackend accepts SERVER_HELLO, OUTBOUND_UDP, INBOUND_TCP_OK and
	// SERVER_HEARTBEAT: the balancer's decoder.
	FromBackend Direction = iota
	// FromBalancer accepts CLIENT_HELLO, INBOUND_UDP, INBOUND_TCP and
	// CLIENT_HEARTBEAT: a backend's decoder.
	FromBalancer
)

func (d Direction) accepts(t FrameType) bool {
	if d == FromBackend {
		return t >= FrameServerHello && t <= FrameServerHeartbeat
	}
	return t >= FrameClientHello && t <= FrameClientHeartbeat
}

// DefaultDecoderSize is the buffer a Decoder gets when NewDecoder is
// given a smaller size: room for many frames per read.
const DefaultDecoderSize = 64 << 10

// Decoder splits a byte stream into frames. It owns one fixed buffer and
// never allocates after NewDecoder. It is not safe for concurrent use.
//
// Use it as:
//
//	for {
//		if _, err := d.Fill(conn); err != nil { ... }
//		for {
//			f, ok, err := d.Next()
//			if err != nil { ... malformed stream ... }
//			if !ok { break }
//			... use f; f.Data is valid until the next Fill ...
//		}
//	}
type Decoder struct {
	dir  Direction
	buf  []byte
	r, w int
	err  error
}

// NewDecoder returns a decoder for frames sent in direction dir, with a
// buffer of size bytes (at least two maximal frames; DefaultDecoderSize
// when size is smaller).
func NewDecoder(dir Direction, size int) *Decoder {
	if size < 2*MaxFrameLen {
		size = DefaultDecoderSize
	}
	return &Decoder{dir: dir, buf: make([]byte, size)}
}

// Buffered returns the number of bytes received but not yet returned as
// frames.
func (d *Decoder) Buffered() int { return d.w - d.r }

// Rest returns the bytes received but not yet returned as frames, and
// consumes them: after INBOUND_TCP they are the start of the client's
// stream. The slice aliases the buffer until the next Fill or Write.
func (d *Decoder) Rest() []byte {
	b := d.buf[d.r:d.w]
	d.r = d.w
	return b
}

// Reset discards buffered bytes and any error, for a new connection.
func (d *Decoder) Reset() {
	d.r, d.w, d.err = 0, 0, nil
}

// room makes space at the end of the buffer by moving unread bytes to the
// front, and returns the free space.
func (d *Decoder) room() []byte {
	if d.r == d.w {
		d.r, d.w = 0, 0
	} else if len(d.buf)-d.w < MaxFrameLen && d.r > 0 {
		d.w = copy(d.buf, d.buf[d.r:d.w])
		d.r = 0
	}
	return d.buf[d.w:]
}

// Fill reads once from r into the buffer. Frames returned by Next before
// the call are no longer valid after it.
func (d *Decoder) Fill(r io.Reader) (int, error) {
	free := d.Space()
	if len(free) == 0 {
		return 0, ErrFull
	}
	n, err := r.Read(free)
	d.Commit(n)
	return n, err
}

// Space returns the free space at the end of the buffer, for a caller
// that reads into it itself (with a raw read system call); Commit then
// records what it read. Frames returned by Next before the call are no
// longer valid after it.
func (d *Decoder) Space() []byte { return d.room() }

// Commit records n bytes read into the slice Space returned.
func (d *Decoder) Commit(n int) {
	if n < 0 || d.w+n > len(d.buf) {
		panic("protocol: Commit beyond the decoder's space")
	}
	d.w += n
}

// Write copies as much of p as fits into the buffer, for callers that
// already hold the bytes. It returns ErrFull with n < len(p) when the rest
// must wait for Next to consume frames.
func (d *Decoder) Write(p []byte) (int, error) {
	n := copy(d.room(), p)
	d.w += n
	if n < len(p) {
		return n, ErrFull
	}
	return n, nil
}

// Next returns the next whole frame. It returns ok false when more bytes
// are needed, and an error (a *FrameError) when the stream is malformed;
// the error is returned again by every later call.
func (d *Decoder) Next() (f Frame, ok bool, err error) {
	if d.err != nil {
		return Frame{}, false, d.err
	}
	b := d.buf[d.r:d.w]
	if len(b) < TypeLen {
		return Frame{}, false, nil
	}
	f.Type = FrameType(binary.LittleEndian.Uint32(b))
	if !d.dir.accepts(f.Type) {
		d.err = &FrameError{Type: f.Type, Err: ErrUnknownFrame}
		return Frame{}, false, d.err
	}
	hl := headerLen(f.Type)
	if len(b) < hl {
		return Frame{}, false, nil
	}
	n := 0
	if hl > TypeLen {
		f.IP = binary.LittleEndian.Uint32(b[4:])
		f.Port = binary.LittleEndian.Uint32(b[8:])
	}
	if hl == UDPHeaderLen {
		dl := binary.LittleEndian.Uint32(b[12:])
		if dl > MaxData {
			d.err = &FrameError{Type: f.Type, Len: dl, Err: ErrTooLong}
			return Frame{}, false, d.err
		}
		n = int(dl)
		if len(b) < hl+n {
			return Frame{}, false, nil
		}
		f.Data = b[hl : hl+n : hl+n]
	}
	d.r += hl + n
	return f, true, nil
}
