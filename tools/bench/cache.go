package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// The answer cache's runs (-c):
//
//   - the miss path: bbal -c in front of the echo backend, whose answers
//     (no records, no SOA) it cannot keep, so that every query is looked
//     up, missed and its answer read, in the main rotation beside bbal
//     without -c;
//   - in front of one node-mname process, c.names names under cache.test
//     (TTL 60): bbal -c against node-mname asked directly on its own UDP
//     port, alternating, and bbal -c's hit path against bbal without -c
//     in front of the echo backend (the main rotation's).

// startCached starts bbal -c in front of the backends in sockets, with
// its debug socket at debug.
func startCached(c config, logs *os.File, sockets, debug string) (*proc, int, error) {
	port, _ := freePort()
	p, err := start("bbal -c", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
		"-p", strconv.Itoa(port), "-S", debug, "-l", "warn", "-c", "100000")
	if err != nil {
		return nil, 0, err
	}
	if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		p.stop()
		return nil, 0, err
	}
	return p, port, nil
}

// cacheStats is the part of bbal's /v1/cache the benchmark reads.
type cacheStats struct {
	Entries  int64   `json:"entries"`
	Bytes    int64   `json:"bytes"`
	Hits     uint64  `json:"hits"`
	Misses   uint64  `json:"misses"`
	Rejected uint64  `json:"rejected"`
	HitRatio float64 `json:"hit_ratio"`
}

func bbalCache(sock string) (cacheStats, error) {
	var st cacheStats
	return st, debugGet(sock, "/v1/cache", &st)
}

// cacheRuns runs bbal -c in front of one node-mname process and reports
// it against node-mname asked directly, and its hit path against plain,
// bbal without -c in front of the echo backend (the main rotation's
// median).
func cacheRuns(c config, dir string, logs *os.File, plain sample) error {
	sockets := filepath.Join(dir, "cache")
	udp, _ := freePort()
	node, err := startMname(c, logs, sockets, "-skip-cache", strconv.Itoa(udp))
	if err != nil {
		return err
	}
	defer node.stop()
	direct := fmt.Sprintf("127.0.0.1:%d", udp)
	if err := waitFor("node-mname on UDP", func() bool {
		m := new(dns.Msg)
		m.SetQuestion("ready.cache.test.", dns.TypeTXT)
		_, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, direct)
		return err == nil
	}); err != nil {
		return err
	}
	debug := filepath.Join(dir, "cache.sock")
	bb, port, err := startCached(c, logs, sockets, debug)
	if err != nil {
		return err
	}
	defer bb.stop()

	queries := filepath.Join(dir, "cache-queries")
	var q strings.Builder
	for i := range c.names {
		fmt.Fprintf(&q, "svc%d.cache.test TXT\n", i)
	}
	os.WriteFile(queries, []byte(q.String()), 0o644)
	// Warm: every name asked once through bbal.
	cl := &dns.Client{Timeout: time.Second}
	for i := range c.names {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("svc%d.cache.test.", i), dns.TypeTXT)
		if _, _, err := cl.Exchange(m, fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			return fmt.Errorf("warming the cache: %w", err)
		}
	}
	targets := []target{{"node-mname direct", udp, node, ""}, {"bbal -c", port, bb, ""}}
	results := map[string][]sample{}
	fmt.Printf("\nAnswer cache: %d names (TTL 60), dnsperf -c %d -q %d, %v a run, in front of one node-mname process\n",
		c.names, c.clients, c.outstanding, c.duration)
	for r := range c.rounds {
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			s, err := measure(c, t, "udp", queries)
			if err != nil {
				return err
			}
			fmt.Printf("  round %d %-18s %9.0f qps  %7.3f ms  lost %d\n", r+1, t.name, s.qps, float64(s.latency)/1e6, s.lost)
			results[t.name] = append(results[t.name], s)
		}
	}
	d, b := median(results["node-mname direct"]), median(results["bbal -c"])
	st, err := bbalCache(debug)
	if err != nil {
		return err
	}
	fmt.Printf("node-mname direct %9.0f qps  %7.3f ms  lost %d\n", d.qps, float64(d.latency)/1e6, d.lost)
	fmt.Printf("bbal -c           %9.0f qps  %7.3f ms  lost %d  CPU %.3f s / 100k q\n", b.qps, float64(b.latency)/1e6, b.lost, b.cpu)
	fmt.Printf("bbal -c / node-mname direct: %.2fx qps; hit ratio %.4f (%d hits, %d misses); %d entries in %d bytes\n",
		b.qps/d.qps, st.HitRatio, st.Hits, st.Misses, st.Entries, st.Bytes)
	fmt.Printf("hit path / bbal without -c (echo backend, above): %.2fx qps, %.2fx CPU per query\n", b.qps/plain.qps, b.cpu/plain.cpu)
	return nil
}
