package backend

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bbal/bbal/protocol"
)

// Fault says why a backend that was ok stopped being so: what its
// [Down] event carries.
type Fault struct {
	// Faulted: the session was torn down for Reason. False when the
	// backend was removed or stopped.
	Faulted bool
	Reason  Reason
	// Answer is, for ReasonOversizedUDP, the answer that faulted the
	// backend: the query it answers must not be sent to another.
	Answer Culprit
}

// Culprit names the answer a backend was faulted for: the client
// address as the backend knows it (IPv4, or a stand-in), port and, when
// the frame's first bytes had come in, the DNS ID.
type Culprit struct {
	Known bool
	IP    uint32
	Port  uint16
	ID    uint16
	HasID bool
}

// culpritError is the error of a session ended by an oversized
// OUTBOUND_UDP: it names the answer's client.
type culpritError struct {
	c   Culprit
	err error
}

func (e *culpritError) Error() string {
	s := fmt.Sprintf("to %v:%d", protocol.U32ToAddr(e.c.IP), e.c.Port)
	if e.c.HasID {
		s += fmt.Sprintf(" id %d", e.c.ID)
	}
	return s + ": " + e.err.Error()
}

func (e *culpritError) Unwrap() error { return e.err }

// oversizedCulprit wraps err, when it is d's ErrTooLong, with what the
// offending frame's first bytes (the rest of d) say of the answer's
// client; it returns any other error as it is.
func oversizedCulprit(d *protocol.Decoder, err error) error {
	if !errors.Is(err, protocol.ErrTooLong) {
		return err
	}
	frame := d.Rest()
	if len(frame) < protocol.UDPHeaderLen {
		return err
	}
	c := Culprit{Known: true, IP: binary.LittleEndian.Uint32(frame[4:]), Port: uint16(binary.LittleEndian.Uint32(frame[8:]))}
	if dns := frame[protocol.UDPHeaderLen:]; len(dns) >= 2 {
		c.ID, c.HasID = binary.BigEndian.Uint16(dns), true
	}
	return &culpritError{c: c, err: err}
}

// faultOf is the Fault of a session ended for r with err.
func faultOf(r Reason, err error) Fault {
	f := Fault{Faulted: true, Reason: r}
	var ce *culpritError
	if errors.As(err, &ce) {
		f.Answer = ce.c
	}
	return f
}
