package backend

import (
	"runtime"
	"testing"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// FuzzSession feeds a backend's standing session arbitrary bytes, split
// anywhere, as a backend would send them. The session must either go on
// or fault with a reason, logged and reported once; it must never panic,
// and never allocate on the strength of a length the backend sent.
func FuzzSession(f *testing.F) {
	hello := protocol.AppendType(nil, protocol.FrameServerHello)
	reply := protocol.AppendUDP(nil, protocol.FrameOutboundUDP, 0x7f000001, 53, []byte("answer"))
	f.Add(hello, []byte{1}, false)
	f.Add(append(append([]byte{}, hello...), reply...), []byte{3, 9}, false)
	f.Add(append(append([]byte{}, hello...), hello...), []byte{}, false)
	f.Add(protocol.AppendType(nil, protocol.FrameServerHeartbeat), []byte{}, true)
	f.Add([]byte{0xea, 3, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}, []byte{5}, false)
	f.Add([]byte{0xe9, 3, 0, 0, 0xea, 3, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, []byte{0}, true)

	dir := testbed.SocketDir(f)
	set := NewSet(Config{
		Dir: dir, Timeouts: timeouts.New(timeouts.NewFake(testbed.Epoch)),
	})
	f.Fuzz(func(t *testing.T, input, splits []byte, heartbeatSent bool) {
		b := newBackend(set, 1, dir+"/x")
		b.hbOutstanding.Store(heartbeatSent)
		s := &session{b: b, gen: 1, closing: make(chan struct{}),
			dec: protocol.NewDecoder(protocol.FromBackend, 0), replies: &testbed.Replies{}}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var err error
		for i := 0; len(input) > 0 && err == nil; i++ {
			n := len(input)
			if len(splits) > 0 {
				n = min(n, int(splits[i%len(splits)])+1)
			}
			w, _ := s.dec.Write(input[:n])
			input = input[w:]
			err = s.frames(s.dec, s.replies, &s.hello)
			s.replies.Flush()
		}
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Fatalf("%d bytes allocated for %d bytes of input", grew, len(input))
		}
		faults := 0
		for len(b.events) > 0 {
			if ev := <-b.events; ev.kind == evFault {
				faults++
				if ev.reason >= numReasons {
					t.Fatalf("fault without a reason: %+v", ev)
				}
			}
		}
		if (err != nil) != (faults == 1) || faults > 1 {
			t.Fatalf("error %v with %d faults reported", err, faults)
		}
	})
}
