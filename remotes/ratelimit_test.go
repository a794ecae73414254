package remotes

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
)

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
	}{
		{"100", "100/100/2"},
		{"0.5", "0.5/1/2"},
		{"100/300", "100/300/2"},
		{"100/300/0", "100/300/0"},
		{"2.5/1/1", "2.5/1/1"},
	} {
		r, err := ParseRate(c.in)
		if err != nil || r.String() != c.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %s", c.in, r, err, c.want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "x", "1e8", "NaN", "Inf", "10/0", "10/x", "10/2/101", "10/2/-1", "1/2/3/4", "10//2"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
}

// TestAdmitKeepsTheRateAndTheBurst: a remote may send BURST queries at
// once, then one per interval; those over are counted in order; the
// shared record of unpinned clients is never limited.
func TestAdmitKeepsTheRateAndTheBurst(t *testing.T) {
	rate := NewRate(10, 3, 2) // one per 100 ms, 3 at once
	var r Remote
	now := int64(time.Hour)
	for i := range 3 {
		if ok, _ := r.Admit(&rate, now); !ok {
			t.Fatalf("query %d of the burst refused", i+1)
		}
	}
	for i := range 4 {
		if ok, over := r.Admit(&rate, now); ok || over != uint64(i+1) {
			t.Fatalf("query over the burst: admitted %v, number %d", ok, over)
		}
	}
	in := Info{LastLimited: time.Unix(0, r.overAt.Load())}
	if !in.Limited(time.Unix(0, now)) || in.Limited(time.Unix(0, now+int64(LimitedFor))) {
		t.Fatal("not shown limited for LimitedFor")
	}
	// 100 ms on, one more; 1 s on, the burst again.
	if ok, _ := r.Admit(&rate, now+int64(100*time.Millisecond)); !ok {
		t.Fatal("refused on schedule")
	}
	if ok, _ := r.Admit(&rate, now+int64(100*time.Millisecond)); ok {
		t.Fatal("admitted twice in one interval")
	}
	later := now + int64(time.Second)
	for i := range 3 {
		if ok, _ := r.Admit(&rate, later); !ok {
			t.Fatalf("after a quiet second, query %d of the burst refused", i+1)
		}
	}
	// Over a long run the rate is kept: 10 s of a query every ms.
	admitted := 0
	for ms := range 10000 {
		if ok, _ := r.Admit(&rate, later+int64(ms)*int64(time.Millisecond)); ok {
			admitted++
		}
	}
	if admitted < 99 || admitted > 101 {
		t.Fatalf("%d admitted in 10 s at 10 qps", admitted)
	}
	shared := Remote{shared: true}
	for range 100 {
		if ok, _ := shared.Admit(&rate, now); !ok {
			t.Fatal("the shared record limited")
		}
	}
}

// TestAdmitAllocatesNothing: the packet path's share.
func TestAdmitAllocatesNothing(t *testing.T) {
	rate := NewRate(1e6, 10, 2)
	var r Remote
	now := int64(0)
	if a := testing.AllocsPerRun(1000, func() { now += 1000; r.Admit(&rate, now) }); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}

// BenchmarkAdmit is the rate limit's cost per query on the packet path.
func BenchmarkAdmit(b *testing.B) {
	rate := NewRate(1e7, 1<<20, 2)
	var r Remote
	now := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		now += 50
		r.Admit(&rate, now)
	}
}

// TestTheLimitSurvivesARestart: a client over its limit is still over it
// in the table a successor restores from the snapshot, and its count of
// queries over the limit goes on.
func TestTheLimitSurvivesARestart(t *testing.T) {
	rate := NewRate(10, 2, 0)
	old, clock, _ := newTable(t, newFake(1))
	client := netip.MustParseAddr("192.0.2.7")
	now := clock.Now().UnixNano()
	rem := old.Route(client).Remote
	for range 5 {
		rem.Admit(&rate, now)
	}
	var snap bytes.Buffer
	if err := old.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	infos, err := ReadSnapshot(&snap, SnapshotV3)
	if err != nil {
		t.Fatal(err)
	}
	next, _, _ := newTable(t, newFake(1))
	next.RestoreSnapshot(infos, func(backend.ID) bool { return true })
	again := next.Route(client).Remote
	if ok, over := again.Admit(&rate, now); ok || over != 4 {
		t.Fatalf("after the restart: admitted %v, over the limit %d; want refused, the 4th", ok, over)
	}
	if ok, _ := again.Admit(&rate, now+int64(time.Second)); !ok {
		t.Fatal("refused a second later")
	}
}
