package udpproxy

import (
	"io"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// tappedBed is a bed whose proxy tells a dnstap writer (to a file) of
// its queries and responses.
func tappedBed(t testing.TB) (*bed, *dnstap.Writer) {
	t.Helper()
	b := newBed(t, zerolog.New(io.Discard).Level(zerolog.InfoLevel))
	ts := testbed.RunTimeouts(t, timeouts.New(timeouts.System))
	w, err := dnstap.Open(dnstap.Config{Target: dnstap.Target{Network: "file", Addr: filepath.Join(t.TempDir(), "tap")},
		Timeouts: ts, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	// Set after Start, which SetTap's callers must not do: nothing is
	// read from the bed's socket, and the test calls handle itself.
	b.p.tap = w
	return b, w
}

// TestTappedPathAllocatesNothing: with dnstap on, the packet path still
// allocates nothing; the messages are copied into the writer's slots,
// and the writer goroutine encodes and writes them without allocating
// either (AllocsPerRun counts every goroutine's).
func TestTappedPathAllocatesNothing(t *testing.T) {
	b, w := tappedBed(t)
	checkNoAllocs(t, b)
	// Every query was sent on, and every reply sent: each is a message.
	ps := b.p.Stats()
	want := ps.PacketsIn + ps.PacketsOut
	testbed.Eventually(t, "every message written or dropped", func() bool {
		st := w.Stats()
		return st.Sent+st.QueueFull == want
	})
	if st := w.Stats(); st.Sent == 0 {
		t.Fatalf("counts %+v: nothing written", st)
	}
}

// BenchmarkDatagramToBackendTapped is BenchmarkDatagramToBackend with
// dnstap on (to a file): the cost per query of its packet-path half, the
// copy into a slot, with the writer goroutine running beside it.
func BenchmarkDatagramToBackendTapped(b *testing.B) {
	bed, w := tappedBed(b)
	benchDatagrams(b, bed)
	b.StopTimer()
	st := w.Stats()
	b.ReportMetric(float64(st.QueueFull)/float64(st.Sent+st.QueueFull), "dropped/msg")
}
