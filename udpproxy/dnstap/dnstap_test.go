package dnstap

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	dt "github.com/dnstap/golang-dnstap"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

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

// TestEncoding decodes the frames with golang-dnstap's own types.
func TestEncoding(t *testing.T) {
	var e encoder
	e.init("host.example", "bbal test")
	for _, tt := range []struct {
		client, local string
		resp, self    bool
		fam           dt.SocketFamily
	}{
		{"127.0.0.9:5353", "127.0.0.1:53", false, false, dt.SocketFamily_INET},
		{"127.0.0.9:5353", "127.0.0.1:53", true, false, dt.SocketFamily_INET},
		{"[2001:db8::1]:40000", "[::1]:5300", true, true, dt.SocketFamily_INET6},
		{"[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:2", false, false, dt.SocketFamily_INET},
	} {
		s := &slot{client: netip.MustParseAddrPort(tt.client), local: netip.MustParseAddrPort(tt.local),
			resp: tt.resp, self: tt.self, at: 1_700_000_000_123_456_789, n: 3}
		copy(s.msg[:], "abc")
		frame := e.encode(s)
		if n := binary.BigEndian.Uint32(frame); int(n) != len(frame)-4 {
			t.Fatalf("frame length %d, want %d", n, len(frame)-4)
		}
		var d dt.Dnstap
		if err := proto.Unmarshal(frame[4:], &d); err != nil {
			t.Fatalf("%+v: %v", tt, err)
		}
		m := d.GetMessage()
		typ, sec, nsec, msg := dt.Message_CLIENT_QUERY, m.GetQueryTimeSec(), m.GetQueryTimeNsec(), m.GetQueryMessage()
		if tt.resp {
			typ, sec, nsec, msg = dt.Message_CLIENT_RESPONSE, m.GetResponseTimeSec(), m.GetResponseTimeNsec(), m.GetResponseMessage()
		}
		extra := ""
		if tt.self {
			extra = "bbal:self"
		}
		qa, _ := netip.AddrFromSlice(m.GetQueryAddress())
		ra, _ := netip.AddrFromSlice(m.GetResponseAddress())
		c, l := netip.MustParseAddrPort(tt.client), netip.MustParseAddrPort(tt.local)
		if d.GetType() != dt.Dnstap_MESSAGE || string(d.GetIdentity()) != "host.example" || string(d.GetVersion()) != "bbal test" ||
			string(d.GetExtra()) != extra || m.GetType() != typ || m.GetSocketFamily() != tt.fam ||
			m.GetSocketProtocol() != dt.SocketProtocol_UDP || qa != c.Addr().Unmap() || ra != l.Addr().Unmap() ||
			m.GetQueryPort() != uint32(c.Port()) || m.GetResponsePort() != uint32(l.Port()) ||
			sec != 1_700_000_000 || nsec != 123_456_789 || string(msg) != "abc" {
			t.Errorf("%+v: decoded %v", tt, &d)
		}
	}
}

// TestEncodingAllocatesNothing: the writer goroutine's encoding reuses
// its buffers.
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

// BenchmarkEncode is the writer goroutine's encoding of one message.
func BenchmarkEncode(b *testing.B) {
	var e encoder
	e.init("host", "bbal test")
	s := &slot{client: netip.MustParseAddrPort("127.0.0.9:5353"), local: netip.MustParseAddrPort("127.0.0.1:53"), at: 1e18 + 5, n: 40}
	b.ReportAllocs()
	for b.Loop() {
		s.resp = !s.resp
		e.encode(s)
	}
}
