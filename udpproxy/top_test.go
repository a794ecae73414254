package udpproxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func packQuery(t testing.TB, name string, qtype uint16) []byte {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return wire
}

func TestQuestionName(t *testing.T) {
	var name [maxNameLen]byte
	n, qtype, ok := questionName(packQuery(t, "WwW.Example.COM.", dns.TypeAAAA), name[:])
	if !ok || qtype != dns.TypeAAAA || presentName(name[:n]) != "www.example.com." {
		t.Fatalf("%v %d %q", ok, qtype, presentName(name[:n]))
	}
	n, _, ok = questionName(packQuery(t, ".", dns.TypeNS), name[:])
	if !ok || presentName(name[:n]) != "." {
		t.Fatalf("root: %v %q", ok, presentName(name[:n]))
	}
	odd := packQuery(t, `a\.b\000\255.example.`, dns.TypeA)
	n, _, ok = questionName(odd, name[:])
	if !ok || presentName(name[:n]) != `a\046b\000\255.example.` {
		t.Fatalf("odd bytes: %v %q", ok, presentName(name[:n]))
	}
	good := packQuery(t, "example.com.", dns.TypeA)
	for _, bad := range [][]byte{
		nil, good[:11], good[:len(good)-1], good[:14],
		append(append([]byte{}, good[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),         // a pointer
		func() []byte { b := append([]byte{}, good...); b[5] = 0; return b }(), // no question
	} {
		if _, _, ok := questionName(bad, name[:]); ok {
			t.Errorf("read a question from %x", bad)
		}
	}
	if a := testing.AllocsPerRun(100, func() { questionName(good, name[:]) }); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}

// TestTopFindsTheHeavyHittersInBoundedSpace: with more clients and names
// than it keeps, the summary still puts the heaviest first, with rates
// scaled from the samples, and keeps TopEntries of each.
func TestTopFindsTheHeavyHittersInBoundedSpace(t *testing.T) {
	p := &Proxy{top: newTop()}
	start := time.Unix(1000, 0)
	heavy := netip.MustParseAddr("10.0.0.1")
	hot := packQuery(t, "hot.example.", dns.TypeA)
	for i := range 5000 {
		now := start.Add(time.Duration(i) * time.Millisecond).UnixNano() // 5 s
		if i%2 == 0 {
			p.top.sample(heavy, hot, now)
		} else {
			cold := packQuery(t, "c"+itoa(i)+".example.", dns.TypeA)
			p.top.sample(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), cold, now)
		}
	}
	if p.top.sample(heavy, []byte{1, 2, 3}, start.Add(5*time.Second).UnixNano()) {
		t.Fatal("a runt's question read")
	}
	r := p.Top(start.Add(5*time.Second + time.Millisecond))
	if r.Window != TopWindow || len(r.Clients) != TopEntries || len(r.Names) != TopEntries {
		t.Fatalf("window %v, %d clients, %d names", r.Window, len(r.Clients), len(r.Names))
	}
	if r.Clients[0].IP != heavy || r.Names[0].Name != "hot.example." || r.Names[0].Type != dns.TypeA {
		t.Fatalf("first %+v and %+v", r.Clients[0], r.Names[0])
	}
	// 2500 samples in 5 s, each standing for SampleEvery datagrams.
	if want := 2500.0 * SampleEvery / 5; r.Clients[0].QPS < want || r.Clients[0].QPS-r.Clients[0].Error > want {
		t.Fatalf("heavy client at %v ± %v, want %v", r.Clients[0].QPS, r.Clients[0].Error, want)
	}
	// Two windows of nothing: nothing to report.
	if r := p.Top(start.Add(20 * time.Second)); len(r.Clients) != 0 || len(r.Names) != 0 {
		t.Fatalf("stale report %+v", r)
	}
}

func itoa(i int) string {
	return string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676%26))
}
