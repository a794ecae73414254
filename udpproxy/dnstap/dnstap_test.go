package dnstap

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Target
		ok   bool
	}{
		{"unix:/run/bbal/dnstap.sock", Target{"unix", "/run/bbal/dnstap.sock"}, true},
		{"file:bbal.dnstap", Target{"file", "bbal.dnstap"}, true},
		{"tcp:127.0.0.1:6000", Target{"tcp", "127.0.0.1:6000"}, true},
		{"tcp:[::1]:6000", Target{"tcp", "[::1]:6000"}, true},
		{"tcp:127.0.0.1", Target{}, false},
		{"tcp:host:6000", Target{}, false},
		{"unix:", Target{}, false},
		{"file", Target{}, false},
		{"", Target{}, false},
		{"udp:127.0.0.1:6000", Target{}, false},
	} {
		got, err := ParseTarget(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestCounterTable(t *testing.T) { testbed.CheckCounterTable(t, counterTable) }

// TestEncodingAllocatesNothing: the writer goroutine's encoding reuses
// its message and buffer.
func TestEncodingAllocatesNothing(t *testing.T) {
	var e encoder
	e.init("host", "bbal test")
	s := &slot{client: netip.MustParseAddrPort("[2001:db8::1]:5353"), local: netip.MustParseAddrPort("[::1]:53"), at: 1e18 + 5, n: 40}
	if a := testing.AllocsPerRun(1000, func() {
		s.resp = !s.resp
		e.encode(s)
	}); a != 0 {
		t.Fatalf("encoding: %.1f allocations", a)
	}
}

// BenchmarkQueue is the packet path's half of a message: a slot taken,
// filled and queued, the writer goroutine encoding and writing it to a
// file meanwhile.
func BenchmarkQueue(b *testing.B) {
	ts := testbed.RunTimeouts(b, timeouts.New(timeouts.System))
	w, err := Open(Config{Target: Target{Network: "file", Addr: filepath.Join(b.TempDir(), "tap")}, Timeouts: ts, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	client, local := netip.MustParseAddrPort("127.0.0.9:5353"), netip.MustParseAddrPort("127.0.0.1:53")
	msg := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		w.Query(client, local, msg, 1)
	}
	b.StopTimer()
	st := w.Stats()
	b.ReportMetric(float64(st.QueueFull)/float64(b.N), "dropped/op")
}
