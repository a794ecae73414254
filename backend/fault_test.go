package backend

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/bbal/bbal/protocol"
)

func TestOversizedAnswerNamesItsQuery(t *testing.T) {
	frame := protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0x7f000002, 5353, []byte{0x12, 0x34, 0, 0})
	// The length word says 2000 bytes; only the first came in.
	binary.LittleEndian.PutUint32(frame[12:], 2000)
	decoded := func(frame []byte) error {
		d := protocol.NewDecoder(protocol.FromBackend, 0)
		d.Write(frame)
		_, _, err := d.Next()
		return oversizedCulprit(d, err)
	}
	err := decoded(frame)
	f := faultOf(ReasonOversizedUDP, err)
	if want := (Culprit{Known: true, IP: 0x7f000002, Port: 5353, ID: 0x1234, HasID: true}); f.Answer != want || !errors.Is(err, protocol.ErrTooLong) {
		t.Fatalf("culprit %+v (%v), want %+v", f.Answer, err, want)
	}
	// The DNS ID not read yet: the client and port only.
	if f := faultOf(ReasonOversizedUDP, decoded(frame[:protocol.UDPHeaderLen+1])); !f.Answer.Known || f.Answer.HasID {
		t.Fatalf("culprit %+v", f.Answer)
	}
	if f := faultOf(ReasonEOF, errors.New("EOF")); f.Answer.Known || !f.Faulted {
		t.Fatalf("fault %+v", f)
	}
}
