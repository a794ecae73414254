package remotes

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

// BenchmarkRoute1M looks up known remotes in a table of 10^6, in random
// order (no cache help), as the packet path does.
func BenchmarkRoute1M(b *testing.B) {
	const n = 1_000_000
	tab, _, _ := newTable(b, newFake(1, 2))
	tab.log = tab.log.Level(100) // disabled: a million "new remote" records say nothing here
	addrs := make([]uint32, n)
	for i := range addrs {
		addrs[i] = 0x0a000000 + uint32(i)*7
		tab.Route(addrs[i])
	}
	rand.Shuffle(n, func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		r, id := tab.Route(addrs[i%n])
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
			tab.Route(0x0a000000 + uint32(i)*7)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-bytes/remote")
		runtime.KeepAlive(tab)
	}
}
