package cache

import (
	"container/list"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/miekg/dns"
)

func BenchmarkKeyOf(b *testing.B) {
	c := newCache(1000)
	q := query(b, "svc-name-0042.binder.example.com.", dns.TypeA, 1, 1232)
	b.ReportAllocs()
	for b.Loop() {
		c.KeyOf(q)
	}
}

// BenchmarkGetHit is the hit path: the key, the lookup and the answer
// written over the query.
func BenchmarkGetHit(b *testing.B) {
	c := newCache(100000)
	q := query(b, "svc-name-0042.binder.example.com.", dns.TypeA, 1, 1232)
	a := reply(b, q, dns.RcodeSuccess, []string{"svc-name-0042.binder.example.com. 60 IN A 10.0.0.1",
		"svc-name-0042.binder.example.com. 60 IN A 10.0.0.2"}, nil)
	k := key(b, c, q)
	c.Put(&k, p1, a, 0)
	buf := make([]byte, MaxAnswer)
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, q)
		k, _ := c.KeyOf(buf[:len(q)])
		if _, r := c.Get(buf, &k, p1, sec); r != Hit {
			b.Fatal("miss")
		}
	}
}

// BenchmarkMiss is what a query that misses costs the reader more than
// without the cache: the key and the lookup.
func BenchmarkMiss(b *testing.B) {
	c := newCache(100000)
	q := query(b, "svc-name-0042.binder.example.com.", dns.TypeA, 1, 1232)
	buf := make([]byte, MaxAnswer)
	copy(buf, q)
	b.ReportAllocs()
	for b.Loop() {
		k, _ := c.KeyOf(buf[:len(q)])
		c.Get(buf, &k, p1, sec)
	}
}

func BenchmarkPut(b *testing.B) {
	c := newCache(100000)
	q := query(b, "svc-name-0042.binder.example.com.", dns.TypeA, 1, 1232)
	a := reply(b, q, dns.RcodeSuccess, []string{"svc-name-0042.binder.example.com. 60 IN A 10.0.0.1"}, nil)
	k := key(b, c, q)
	b.ReportAllocs()
	for b.Loop() {
		c.Put(&k, p1, a, 0)
	}
}

// BenchmarkHitRatio compares the cache's eviction (the least recently
// used of a set of Ways) with exact LRU, both of 10,000 entries, on
// queries for 100,000 names drawn from a Zipf distribution: it reports
// each hit ratio.
func BenchmarkHitRatio(b *testing.B) {
	const names, entries, queries = 100000, 10000, 400000
	for _, s := range []float64{1.01, 1.2} {
		b.Run(fmt.Sprintf("zipf=%.2f", s), func(b *testing.B) {
			z := rand.NewZipf(rand.New(rand.NewPCG(3, 4)), s, 1, names-1)
			qs := make([][]byte, names)
			as := make([][]byte, names)
			for i := range qs {
				name := fmt.Sprintf("n%d.example.", i)
				qs[i] = query(b, name, dns.TypeA, 1, 0)
				as[i] = reply(b, qs[i], dns.RcodeSuccess, []string{name + " 60 IN A 10.0.0.1"}, nil)
			}
			seq := make([]int, queries)
			for i := range seq {
				seq[i] = int(z.Uint64())
			}
			var setRatio, lruRatio float64
			buf := make([]byte, MaxAnswer)
			for b.Loop() {
				c := New(Config{Entries: entries})
				hits := 0
				for _, i := range seq {
					copy(buf, qs[i])
					k, _ := c.KeyOf(qs[i])
					if _, r := c.Get(buf, &k, p1, 0); r == Hit {
						hits++
					} else {
						c.Put(&k, p1, as[i], 0)
					}
				}
				setRatio = float64(hits) / queries
				l := list.New()
				at := map[int]*list.Element{}
				hits = 0
				for _, i := range seq {
					if e, ok := at[i]; ok {
						hits++
						l.MoveToFront(e)
						continue
					}
					at[i] = l.PushFront(i)
					if l.Len() > entries {
						delete(at, l.Remove(l.Back()).(int))
					}
				}
				lruRatio = float64(hits) / queries
			}
			b.ReportMetric(setRatio, "hit-ratio")
			b.ReportMetric(lruRatio, "lru-hit-ratio")
		})
	}
}

// BenchmarkBytesPerEntry fills a cache of 100,000 entries with answers
// of about 100 bytes and reports the heap it takes per entry: the
// records and the arenas, made as the sets fill.
func BenchmarkBytesPerEntry(b *testing.B) {
	const entries = 100000
	qs := make([][]byte, entries)
	as := make([][]byte, entries)
	for i := range qs {
		name := fmt.Sprintf("svc-%d.binder.example.com.", i)
		qs[i] = query(b, name, dns.TypeA, 1, 0)
		as[i] = reply(b, qs[i], dns.RcodeSuccess, []string{name + " 60 IN A 10.0.0.1", name + " 60 IN A 10.0.0.2"}, nil)
	}
	var perEntry, kept float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c := New(Config{Entries: entries})
		for i := range qs {
			k, _ := c.KeyOf(qs[i])
			c.Put(&k, p1, as[i], 0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perEntry = float64(after.HeapAlloc-before.HeapAlloc) / entries
		kept = float64(c.Stats().Entries) / entries
		runtime.KeepAlive(c)
	}
	b.ReportMetric(perEntry, "bytes/entry")
	b.ReportMetric(kept, "kept")
}
