package protocol

import (
	"bytes"
	"errors"
	"testing"
)

// decodeInChunks feeds input to a decoder in chunks whose sizes cycle
// through sizes, and returns the frames (copied) and the first error.
func decodeInChunks(dir Direction, input []byte, sizes []byte) ([]Frame, error) {
	d := NewDecoder(dir, 2*MaxFrameLen)
	var out []Frame
	for i := 0; len(input) > 0; i++ {
		n := len(input)
		if len(sizes) > 0 {
			n = min(n, int(sizes[i%len(sizes)])+1)
		}
		w, err := d.Write(input[:n])
		if err != nil && !errors.Is(err, ErrFull) {
			return out, err
		}
		input = input[w:]
		for {
			f, ok, err := d.Next()
			if err != nil {
				return out, err
			}
			if !ok {
				break
			}
			if len(f.Data) > MaxData {
				panic("frame data over MaxData")
			}
			f.Data = bytes.Clone(f.Data)
			out = append(out, f)
		}
		if w == 0 && d.Buffered() >= MaxFrameLen {
			panic("decoder stalled with a whole frame buffered")
		}
	}
	return out, nil
}

// FuzzDecoder checks that any byte stream, split anywhere, decodes to the
// same frames and the same verdict as the stream in one piece, and that
// the decoder never panics or holds more than it should.
func FuzzDecoder(f *testing.F) {
	stream, _ := backendStream()
	f.Add(stream, []byte{0}, false)
	f.Add(stream, []byte{3, 17, 200}, false)
	f.Add(AppendUDP(AppendType(nil, FrameClientHello), FrameInboundUDP, 1, 2, []byte("query")), []byte{5}, true)
	f.Add(AppendInboundTCP(nil, 0x7f000001, 53), []byte{1, 2}, true)
	f.Add([]byte{0xea, 0x03, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xdd, 0x05, 0, 0}, []byte{7}, false)
	f.Add([]byte{0x4d, 0, 0, 0}, []byte{}, false)
	f.Fuzz(func(t *testing.T, input, sizes []byte, fromBalancer bool) {
		dir := FromBackend
		if fromBalancer {
			dir = FromBalancer
		}
		whole, werr := decodeInChunks(dir, input, nil)
		split, serr := decodeInChunks(dir, input, sizes)
		if (werr == nil) != (serr == nil) || (werr != nil && werr.Error() != serr.Error()) {
			t.Fatalf("whole stream: %v; split: %v", werr, serr)
		}
		sameFrames(t, split, whole)
	})
}
