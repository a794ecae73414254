package remotes

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
)

// BenchmarkRoute1M looks up known remotes in a table of 10^6, in random
// order (no cache help), as the packet path does.
func BenchmarkRoute1M(b *testing.B) {
	const n = 1_000_000
	tab, _, _ := newTable(b, newFake(1, 2))
	tab.log = tab.log.Level(100) // disabled: a million "new remote" records say nothing here
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		addrs[i] = a4(0x0a000000 + uint32(i)*7)
		tab.Route(addrs[i])
	}
	rand.Shuffle(n, func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		rt := tab.Route(addrs[i%n])
		r, id := rt.Remote, rt.Backend
		if id == 0 || r == nil {
			b.Fatal("no backend")
		}
		i++
	}
}

// BenchmarkTableMemory reports the heap a table of 10^6 remotes takes.
func BenchmarkTableMemory(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tab, _, _ := newTable(b, newFake(1, 2))
		tab.log = tab.log.Level(100)
		for i := range n {
			tab.Route(a4(0x0a000000 + uint32(i)*7))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-bytes/remote")
		runtime.KeepAlive(tab)
	}
}

// BenchmarkScanPause1M runs expiry (half the table stale) and a
// rebalance over 10^6 remotes and reports the longest time a scan held
// the lock: how long a packet could wait behind maintenance.
func BenchmarkScanPause1M(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		f := newFake(1)
		tab, clock, _ := newTable(b, f)
		tab.log = tab.log.Level(100)
		for i := range n / 2 {
			tab.Route(a4(0x0a000000 + uint32(i)*7))
		}
		clock.Advance(4 * time.Minute)
		for i := n / 2; i < n; i++ {
			tab.Route(a4(0x0a000000 + uint32(i)*7))
		}
		clock.Advance(2 * time.Minute)
		f.set(2, true) // all remotes on backend 1: rebalance moves many
		tab.Rebalance()
		if got := tab.Expire(); got != n/2 {
			b.Fatalf("expired %d", got)
		}
		b.ReportMetric(float64(tab.MaxPause().Microseconds()), "max-pause-µs")
	}
}

// BenchmarkRouteParallel is BenchmarkRoute1M from several readers at
// once (run it with -cpu 1,2,...): each goroutine looks up its own share
// of the known remotes, in random order, as readers of one address do.
func BenchmarkRouteParallel(b *testing.B) {
	const n = 1_000_000
	f := newFake(1, 2)
	tab, _, _ := newTableConfig(b, Config{Picker: f, Backends: steadyBackends{}})
	tab.log = tab.log.Level(100)
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		addrs[i] = a4(0x0a000000 + uint32(i)*7)
		tab.Route(addrs[i])
	}
	rand.Shuffle(n, func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(1) * 104729 % n)
		for pb.Next() {
			if tab.Route(addrs[i]).Backend == 0 {
				b.Error("no backend")
				return
			}
			if i++; i == n {
				i = 0
			}
		}
	})
}

// steadyBackends are backends 1 and 2, both ok for good, read without a
// lock as backend.Set's states are: the fake's lock would be the one
// every reader shares.
type steadyBackends struct{}

func (steadyBackends) Status(id backend.ID) (ok, gone bool) {
	return id == 1 || id == 2, id != 1 && id != 2
}

// BenchmarkRouteCachedParallel is the readers' lookup (RouteCached), each
// reader with a cache of its own, from several at once (run it with -cpu
// 1,2,...): each goroutine routes 512 known clients of its own, in
// random order, in a table of 10^6.
func BenchmarkRouteCachedParallel(b *testing.B) {
	const n = 1_000_000
	f := newFake(1, 2)
	tab, _, _ := newTableConfig(b, Config{Picker: f, Backends: steadyBackends{}})
	tab.log = tab.log.Level(100)
	for i := range n {
		tab.Route(a4(0x0a000000 + uint32(i)*7))
	}
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var c RouteCache
		g := seed.Add(1)
		addrs := make([]netip.Addr, 512)
		for i := range addrs {
			addrs[i] = a4(0x0a000000 + uint32((int(g)*104729+i*7919)%n)*7)
		}
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
		i := 0
		for pb.Next() {
			if tab.RouteCached(&c, addrs[i], 0).Backend == 0 {
				b.Error("no backend")
				return
			}
			if i++; i == len(addrs) {
				i = 0
			}
		}
	})
}
