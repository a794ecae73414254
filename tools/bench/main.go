// Command bench measures bbal against dnsdist and against talking to the
// backend directly, on one machine and in one run, and prints medians and
// ratios. make bench builds what it needs and runs it:
//
//	make bench [BENCH_FLAGS='-rounds 5 -duration 10s']
//
// One trivial echo backend (tools/demo-backend -echo) serves the same
// answer code path as plain DNS on UDP and TCP (for the direct path and
// dnsdist) and as a balancer backend on a UNIX socket (for bbal). dnsdist
// gets a generated configuration: that one backend, no packet cache,
// loopback only. dnsperf drives each path in turn, UDP then TCP, the
// order rotating between rounds.
//
// bbal runs twice in the rotation: with its default readers (one per
// CPU) and with one (-r 1). Then, for bbal only: a run from 1,000
// distinct client addresses, with each; a run in front of one real
// node-mname process, comparing CPU time per query (with each);
// the answer cache (-c) in front of node-mname against node-mname asked
// directly; and a memory run that fills the remotes table with
// 1,000,000 clients.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

type config struct {
	bin         string
	mnameDir    string
	rounds      int
	duration    time.Duration
	clients     int
	outstanding int
	many        int
	remotes     int
	skipNode    bool
	skipMemory  bool
	skipFamily  bool
	// baseline, when set, is another bbal binary (an earlier build),
	// measured beside bbal in the same run: the before of a change.
	baseline string
	// rateLimit adds a bbal with -q set so high that nothing is over
	// it: the limit's cost per query.
	rateLimit bool
	// dnstap adds a bbal with -D to a reading collector to the
	// rotation, beside bbal without it.
	dnstap bool
	// skipCache skips the answer cache's runs; names is their
	// workload's distinct names.
	skipCache bool
	names     int
}

func main() {
	var c config
	flag.StringVar(&c.bin, "bin", "bin", "directory of the bbal and demo-backend binaries")
	flag.StringVar(&c.mnameDir, "mname", "tools/mname-backend", "directory of the node-mname backend script")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds of each path and protocol (the median is reported)")
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "length of each dnsperf run")
	flag.IntVar(&c.clients, "clients", 16, "dnsperf clients (-c)")
	flag.IntVar(&c.outstanding, "outstanding", 100, "dnsperf outstanding queries (-q)")
	flag.IntVar(&c.many, "many", 1000, "distinct client addresses in the many-clients run")
	flag.IntVar(&c.remotes, "remotes", 1_000_000, "remotes in the memory run")
	flag.BoolVar(&c.skipNode, "skip-node", false, "skip the node-mname CPU comparison")
	flag.BoolVar(&c.skipMemory, "skip-memory", false, "skip the memory run")
	flag.BoolVar(&c.skipFamily, "skip-families", false, "skip the run on 0.0.0.0 and :: (for a bbal without IPv6)")
	flag.BoolVar(&c.rateLimit, "ratelimit", false, "also measure a bbal with -q set high (nothing over it), for the rate limit's cost per query")
	flag.StringVar(&c.baseline, "baseline", "", "another bbal binary (e.g. an earlier commit's) to measure beside bbal in the same run")
	flag.BoolVar(&c.dnstap, "dnstap", false, "also measure a bbal with -D (dnstap) to a reading collector beside bbal without it")
	flag.BoolVar(&c.skipCache, "skip-cache", false, "skip the answer cache's runs (bbal -c)")
	flag.IntVar(&c.names, "names", 5000, "distinct names in the answer cache's run in front of node-mname")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1.
func freePort() (int, error) {
	for range 20 {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return 0, err
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		t, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		u.Close()
		if err == nil {
			t.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

// answers waits until a server answers a query over UDP and TCP.
func answers(addr string) error {
	return waitFor(addr+" answering", func() bool {
		for _, n := range []string{"udp", "tcp"} {
			c := &dns.Client{Net: n, Timeout: 200 * time.Millisecond}
			m := new(dns.Msg)
			m.SetQuestion("ready.example.", dns.TypeA)
			if _, _, err := c.Exchange(m, addr); err != nil {
				return false
			}
		}
		return true
	})
}

// target is one path under test.
type target struct {
	name string
	port int
	proc *proc  // whose CPU and memory are measured; nil for none
	host string // the address dnsperf asks; 127.0.0.1 when empty
}

// sample is one dnsperf run.
type sample struct {
	qps     float64
	latency time.Duration
	lost    int64
	cpu     float64 // the measured process's CPU seconds per 100k queries
	rssKB   int64   // its peak RSS
}

var (
	reQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLat  = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
	reLost = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reDone = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
)

func dnsperf(c config, host string, port int, proto, queries string) (qps float64, lat time.Duration, lost, done int64, err error) {
	if host == "" {
		host = "127.0.0.1"
	}
	out, err := exec.Command("dnsperf", "-s", host, "-p", strconv.Itoa(port), "-m", proto,
		"-d", queries, "-c", strconv.Itoa(c.clients), "-q", strconv.Itoa(c.outstanding),
		"-l", strconv.Itoa(int(c.duration.Seconds())), "-t", "2").CombinedOutput()
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("dnsperf: %v\n%s", err, out)
	}
	get := func(re *regexp.Regexp) string {
		m := re.FindSubmatch(out)
		if m == nil {
			return "0"
		}
		return string(m[1])
	}
	qps, _ = strconv.ParseFloat(get(reQPS), 64)
	secs, _ := strconv.ParseFloat(get(reLat), 64)
	lost, _ = strconv.ParseInt(get(reLost), 10, 64)
	done, _ = strconv.ParseInt(get(reDone), 10, 64)
	return qps, time.Duration(secs * float64(time.Second)), lost, done, nil
}

func measure(c config, t target, proto, queries string) (sample, error) {
	var cpu0 float64
	if t.proc != nil {
		cpu0, _ = cpuSeconds(t.proc.pid())
	}
	qps, lat, lost, done, err := dnsperf(c, t.host, t.port, proto, queries)
	if err != nil {
		return sample{}, err
	}
	s := sample{qps: qps, latency: lat, lost: lost}
	if t.proc != nil && done > 0 {
		cpu1, _ := cpuSeconds(t.proc.pid())
		s.cpu = (cpu1 - cpu0) / float64(done) * 1e5
		s.rssKB, _ = memKB(t.proc.pid(), "VmHWM")
	}
	return s, nil
}

func median(xs []sample) sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(xs))
		for i, x := range xs {
			v[i] = f(x)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return sample{
		qps:     pick(func(s sample) float64 { return s.qps }),
		latency: time.Duration(pick(func(s sample) float64 { return float64(s.latency) })),
		lost:    int64(pick(func(s sample) float64 { return float64(s.lost) })),
		cpu:     pick(func(s sample) float64 { return s.cpu }),
		rssKB:   int64(pick(func(s sample) float64 { return float64(s.rssKB) })),
	}
}

func run(c config) error {
	var missing []string
	for _, tool := range []string{"dnsperf", "dnsdist"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s not installed; run: sudo apt-get install %s", strings.Join(missing, " and "), strings.Join(missing, " "))
	}
	for _, b := range []string{"bbal", "demo-backend"} {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return fmt.Errorf("%s missing: run make bench (it builds it)", filepath.Join(c.bin, b))
		}
	}
	dir, err := os.MkdirTemp("", "bbal-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logs, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	sockets := filepath.Join(dir, "s")
	os.Mkdir(sockets, 0o755)
	queries := filepath.Join(dir, "queries")
	var q strings.Builder
	for i := range 100 {
		fmt.Fprintf(&q, "host%d.example.com A\n", i)
	}
	os.WriteFile(queries, []byte(q.String()), 0o644)

	directPort, _ := freePort()
	echo, err := start("echo backend", logs, filepath.Join(c.bin, "demo-backend"), "-echo",
		"-socket", filepath.Join(sockets, "5301"), "-listen", fmt.Sprintf("127.0.0.1:%d", directPort))
	if err != nil {
		return err
	}
	defer echo.stop()
	if err := answers(fmt.Sprintf("127.0.0.1:%d", directPort)); err != nil {
		return err
	}

	dnsdistPort, _ := freePort()
	conf := filepath.Join(dir, "dnsdist.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`-- one backend, no packet cache, loopback only
setLocal("127.0.0.1:%d")
setACL({"127.0.0.0/8"})
newServer({address="127.0.0.1:%d"})
setSecurityPollSuffix("")
`, dnsdistPort, directPort)), 0o644)
	dd, err := start("dnsdist", logs, "dnsdist", "--supervised", "--disable-syslog", "-C", conf)
	if err != nil {
		return err
	}
	defer dd.stop()

	bbalPort, _ := freePort()
	debugSock := filepath.Join(dir, "bbal.sock")
	bb, err := start("bbal", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
		"-p", strconv.Itoa(bbalPort), "-S", debugSock, "-l", "warn")
	if err != nil {
		return err
	}
	defer bb.stop()
	for _, p := range []int{dnsdistPort, bbalPort} {
		if err := answers(fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
			return err
		}
	}

	// bbal with one reader, beside bbal with its default (one per CPU).
	r1Port, _ := freePort()
	r1Debug := filepath.Join(dir, "r1.sock")
	r1, err := start("bbal -r 1", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
		"-p", strconv.Itoa(r1Port), "-S", r1Debug, "-l", "warn", "-r", "1")
	if err != nil {
		return err
	}
	defer r1.stop()
	if err := answers(fmt.Sprintf("127.0.0.1:%d", r1Port)); err != nil {
		return err
	}

	targets := []target{{"direct", directPort, echo, ""}, {"dnsdist", dnsdistPort, dd, ""}, {"bbal", bbalPort, bb, ""},
		{"bbal-r1", r1Port, r1, ""}}
	if c.rateLimit {
		port, _ := freePort()
		rl, err := start("rate-limited bbal", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
			"-p", strconv.Itoa(port), "-S", filepath.Join(dir, "ratelimit.sock"), "-l", "warn", "-q", "10000000/1000000")
		if err != nil {
			return err
		}
		defer rl.stop()
		if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			return err
		}
		targets = append(targets, target{"bbal-q", port, rl, ""})
	}
	if c.baseline != "" {
		port, _ := freePort()
		base, err := start("baseline bbal", logs, c.baseline, "-s", sockets, "-b", "127.0.0.1",
			"-p", strconv.Itoa(port), "-S", filepath.Join(dir, "baseline.sock"), "-l", "warn")
		if err != nil {
			return err
		}
		defer base.stop()
		if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			return err
		}
		targets = append(targets, target{"baseline", port, base, ""})
	}
	if !c.skipCache {
		// The miss path: every query looked up, its answer read and
		// not kept.
		cached, port, err := startCached(c, logs, sockets, filepath.Join(dir, "miss.sock"))
		if err != nil {
			return err
		}
		defer cached.stop()
		targets = append(targets, target{"bbal-c", port, cached, ""})
	}
	var tap *tapCollector
	var tapDebug string
	if c.dnstap {
		t, tc, debug, err := startTapped(c, dir, sockets, logs)
		if err != nil {
			return err
		}
		defer t.proc.stop()
		defer tc.close()
		targets, tap, tapDebug = append(targets, t), tc, debug
	}
	results := map[string][]sample{}
	readers := 0
	if st, err := bbalStats(debugSock); err == nil {
		readers = len(st.Readers)
	}
	fmt.Printf("bbal benchmark: %d rounds of %v, dnsperf -c %d -q %d, echo backend; bbal has %d readers (the default), bbal-r1 one\n",
		c.rounds, c.duration, c.clients, c.outstanding, readers)
	for r := range c.rounds {
		for _, proto := range []string{"udp", "tcp"} {
			for i := range targets {
				t := targets[(i+r)%len(targets)]
				s, err := measure(c, t, proto, queries)
				if err != nil {
					return err
				}
				fmt.Printf("  round %d %-3s %-7s %9.0f qps  %7.3f ms  lost %d\n", r+1, proto, t.name, s.qps,
					float64(s.latency)/1e6, s.lost)
				results[t.name+"/"+proto] = append(results[t.name+"/"+proto], s)
			}
		}
	}

	fmt.Printf("\nMedians of %d rounds\n", c.rounds)
	fmt.Printf("%-5s %-8s %10s %12s %6s %18s %12s\n", "PROTO", "PATH", "QPS", "AVG LATENCY", "LOST", "CPU s / 100k q", "PEAK RSS")
	med := map[string]sample{}
	for _, proto := range []string{"udp", "tcp"} {
		for _, t := range targets {
			m := median(results[t.name+"/"+proto])
			med[t.name+"/"+proto] = m
			fmt.Printf("%-5s %-8s %10.0f %10.3f ms %6d %18.3f %9.1f MiB\n", proto, t.name, m.qps,
				float64(m.latency)/1e6, m.lost, m.cpu, float64(m.rssKB)/1024)
		}
	}
	fmt.Printf("\nRatios (CPU and RSS are each path's own process: echo backend, dnsdist, bbal)\n")
	for _, proto := range []string{"udp", "tcp"} {
		b, d, x := med["bbal/"+proto], med["dnsdist/"+proto], med["direct/"+proto]
		fmt.Printf("%s: bbal/dnsdist %.2fx   bbal/direct %.2fx   added latency over direct: bbal %+.3f ms, dnsdist %+.3f ms\n",
			proto, b.qps/d.qps, b.qps/x.qps, float64(b.latency-x.latency)/1e6, float64(d.latency-x.latency)/1e6)
		if o := med["bbal-r1/"+proto]; proto == "udp" {
			fmt.Printf("%s: bbal (%d readers)/bbal -r 1 %.2fx qps, %.2fx CPU per query\n", proto, readers, b.qps/o.qps, b.cpu/o.cpu)
		}
		if c.rateLimit {
			o := med["bbal-q/"+proto]
			fmt.Printf("%s: bbal -q/bbal %.2fx qps, %.2fx CPU per query (%+.3f µs)\n", proto, o.qps/b.qps, o.cpu/b.cpu, (o.cpu-b.cpu)*10)
		}
		if !c.skipCache {
			o := med["bbal-c/"+proto]
			fmt.Printf("%s: bbal -c (every query a miss)/bbal %.2fx qps, %.2fx CPU per query (%+.3f µs)\n", proto, o.qps/b.qps, o.cpu/b.cpu, (o.cpu-b.cpu)*10)
		}
		if c.baseline != "" {
			o := med["baseline/"+proto]
			fmt.Printf("%s: bbal/baseline %.2fx qps, %.2fx CPU per query\n", proto, b.qps/o.qps, b.cpu/o.cpu)
		}
	}
	if c.dnstap {
		tapReport(med["bbal -D/udp"], med["bbal/udp"], tap, tapDebug)
	}

	if !c.skipFamily {
		if err := families(c, dir, sockets, logs, queries, med["bbal/udp"]); err != nil {
			return err
		}
	}
	fmt.Printf("\nMany clients: %d source addresses, %d outstanding, %v\n", c.many, c.clients*c.outstanding, c.duration)
	for _, t := range []struct {
		name  string
		port  int
		debug string
	}{{"bbal", bbalPort, debugSock}, {"bbal -r 1", r1Port, r1Debug}} {
		if err := manyClients(c, t.name, t.port, t.debug); err != nil {
			return err
		}
	}
	if !c.skipNode {
		if err := nodeCPU(c, dir, logs, queries); err != nil {
			return err
		}
	}
	if !c.skipCache {
		if err := cacheRuns(c, dir, logs, med["bbal/udp"]); err != nil {
			return err
		}
	}
	if !c.skipMemory {
		if err := memory(c, dir, logs); err != nil {
			return err
		}
	}
	return nil
}

// families runs UDP through a second bbal, bound to 0.0.0.0 and :: (so
// that each reply is sent from its query's destination, with PKTINFO),
// asked over IPv4 and over IPv6 (the client given a stand-in), and
// compares each with base, the bbal bound to 127.0.0.1 in the same run.
func families(c config, dir, sockets string, logs *os.File, queries string, base sample) error {
	port, _ := freePort()
	bb, err := start("bbal", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "0.0.0.0", "-b", "::",
		"-p", strconv.Itoa(port), "-S", filepath.Join(dir, "families.sock"), "-l", "warn")
	if err != nil {
		return err
	}
	defer bb.stop()
	for _, a := range []string{"127.0.0.1", "[::1]"} {
		if err := answers(fmt.Sprintf("%s:%d", a, port)); err != nil {
			return err
		}
	}
	fmt.Printf("\nbbal -b 0.0.0.0 -b :: (UDP, medians of %d rounds), against bbal -b 127.0.0.1 above\n", c.rounds)
	for _, t := range []target{{"IPv4, replies by PKTINFO", port, bb, "127.0.0.1"}, {"IPv6, stand-in", port, bb, "::1"}} {
		var xs []sample
		for range c.rounds {
			s, err := measure(c, t, "udp", queries)
			if err != nil {
				return err
			}
			xs = append(xs, s)
		}
		m := median(xs)
		fmt.Printf("%-26s %9.0f qps (%.2fx)  %7.3f ms  lost %d  CPU %.3f s / 100k q (%.2fx)\n", t.name, m.qps,
			m.qps/base.qps, float64(m.latency)/1e6, m.lost, m.cpu, m.cpu/base.cpu)
	}
	return nil
}

// manyClients drives bbal (name) from c.many distinct client addresses.
func manyClients(c config, name string, port int, debugSock string) error {
	g := loadgen{
		target:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
		sources: sourceRange(netip.MustParseAddr("127.1.0.1"), c.many),
		window:  c.clients * c.outstanding,
		d:       c.duration,
		timeout: 2 * time.Second,
	}
	r, err := g.run()
	if err != nil {
		return err
	}
	st, err := bbalStats(debugSock)
	if err != nil {
		return err
	}
	fmt.Printf("%-9s: %.0f qps, avg latency %.3f ms, p99 %.3f ms, lost %d of %d; bbal holds %d remotes\n",
		name, r.QPS(), float64(r.AvgLatency)/1e6, float64(r.P99Latency)/1e6, r.Lost(), r.Sent, st.Remotes)
	return nil
}

// nodeCPU runs bbal in front of one node-mname process and compares their
// CPU time per query.
func nodeCPU(c config, dir string, logs *os.File, queries string) error {
	sockets := filepath.Join(dir, "node")
	node, err := startMname(c, logs, sockets, "-skip-node")
	if err != nil {
		return err
	}
	defer node.stop()
	// The default readers and one reader: at node-mname's own rate, a
	// moderate load for bbal, more readers must not cost more.
	type variant struct {
		name, bin string
		args      []string
	}
	variants := []variant{{"bbal", filepath.Join(c.bin, "bbal"), nil}, {"bbal-r1", filepath.Join(c.bin, "bbal"), []string{"-r", "1"}}}
	if c.baseline != "" {
		variants = append(variants, variant{"baseline", c.baseline, nil})
	}
	// Each in turn, the others' runs between bbal's.
	per := map[string][]float64{}
	for r := range max(1, c.rounds) {
		for _, v := range variants {
			qps, lat, lost, ratio, err := nodeRun(c, dir, logs, queries, sockets, node, v.bin, fmt.Sprintf("node-%s-%d.sock", v.name, r), v.args...)
			if err != nil {
				return err
			}
			per[v.name] = append(per[v.name], ratio)
			fmt.Printf("  in front of node-mname, %s: %.0f qps, avg latency %.3f ms, lost %d, bbal/node-mname CPU %.1f%%\n",
				v.name, qps, float64(lat)/1e6, lost, 100*ratio)
		}
	}
	med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	fmt.Printf("\nIn front of one node-mname process (UDP, %v, median of %d): CPU per query bbal/node-mname %.1f%%, bbal -r 1/node-mname %.1f%%: default/-r 1 %.2fx\n",
		c.duration, len(per["bbal"]), 100*med(per["bbal"]), 100*med(per["bbal-r1"]), med(per["bbal"])/med(per["bbal-r1"]))
	if c.baseline != "" {
		fmt.Printf("baseline bbal/node-mname %.1f%%: bbal/baseline %.2fx\n", 100*med(per["baseline"]), med(per["bbal"])/med(per["baseline"]))
	}
	return nil
}

// startMname starts one node-mname process, n1, on the socket 5301 of
// the directory sockets (made here), and waits for the socket; more
// are its backend.js arguments after the name. skip names the flag
// that leaves the run out, for the error when node-mname is missing.
func startMname(c config, logs *os.File, sockets, skip string, more ...string) (*proc, error) {
	if _, err := os.Stat(filepath.Join(c.mnameDir, "node_modules", "mname")); err != nil {
		return nil, fmt.Errorf("node-mname missing: run make npm-deps (or %s)", skip)
	}
	os.Mkdir(sockets, 0o755)
	sock := filepath.Join(sockets, "5301")
	args := append([]string{"node", filepath.Join(c.mnameDir, "backend.js"), sock, "n1"}, more...)
	node, err := start("node-mname", logs, args...)
	if err != nil {
		return nil, err
	}
	if err := waitFor("node-mname socket", func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		node.stop()
		return nil, err
	}
	return node, nil
}

// nodeRun runs dnsperf through the bbal binary bin in front of node,
// and returns bbal's CPU per query over node-mname's.
func nodeRun(c config, dir string, logs *os.File, queries, sockets string, node *proc, bin, debugSock string, more ...string) (qps float64, lat time.Duration, lost int64, ratio float64, err error) {
	port, _ := freePort()
	args := append([]string{bin, "-s", sockets, "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-S", filepath.Join(dir, debugSock), "-l", "warn"}, more...)
	bb, err := start("bbal", logs, args...)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer bb.stop()
	if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return 0, 0, 0, 0, err
	}
	b0, _ := cpuSeconds(bb.pid())
	n0, _ := cpuSeconds(node.pid())
	qps, lat, lost, _, err = dnsperf(c, "", port, "udp", queries)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	b1, _ := cpuSeconds(bb.pid())
	n1, _ := cpuSeconds(node.pid())
	return qps, lat, lost, (b1 - b0) / (n1 - n0), nil
}

// memory fills a fresh bbal's remotes table and reports its RSS per
// remote.
func memory(c config, dir string, logs *os.File) error {
	sockets := filepath.Join(dir, "mem")
	os.Mkdir(sockets, 0o755)
	echo, err := start("echo backend", logs, filepath.Join(c.bin, "demo-backend"), "-echo",
		"-socket", filepath.Join(sockets, "5301"))
	if err != nil {
		return err
	}
	defer echo.stop()
	waitFor("echo socket", func() bool { _, err := os.Stat(filepath.Join(sockets, "5301")); return err == nil })
	port, _ := freePort()
	debugSock := filepath.Join(dir, "mem.sock")
	bb, err := start("bbal", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
		"-p", strconv.Itoa(port), "-S", debugSock, "-l", "warn")
	if err != nil {
		return err
	}
	defer bb.stop()
	if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return err
	}
	rss0, _ := memKB(bb.pid(), "VmRSS")
	g := loadgen{
		target:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
		sources: sourceRange(netip.MustParseAddr("127.16.0.1"), c.remotes),
		window:  1000,
		total:   c.remotes,
		timeout: 2 * time.Second,
	}
	r, err := g.run()
	if err != nil {
		return err
	}
	var st stats
	if err := waitFor("remotes", func() bool {
		st, err = bbalStats(debugSock)
		return err == nil && st.Remotes >= c.remotes-int(r.Lost())
	}); err != nil {
		return err
	}
	rss1, _ := memKB(bb.pid(), "VmRSS")
	hwm, _ := memKB(bb.pid(), "VmHWM")
	fmt.Printf("\nMemory: %d remotes (%d queries at %.0f qps, lost %d)\n", st.Remotes, r.Sent, r.QPS(), r.Lost())
	fmt.Printf("bbal RSS %.1f MiB before, %.1f MiB after (peak %.1f MiB): %.0f bytes per remote\n",
		float64(rss0)/1024, float64(rss1)/1024, float64(hwm)/1024, float64(rss1-rss0)*1024/float64(st.Remotes))
	return nil
}

// stats is the part of bbal's /v1/stats the benchmark reads.
type stats struct {
	Remotes int `json:"remotes"`
	Readers []struct {
		Datagrams uint64  `json:"datagrams"`
		Share     float64 `json:"share"`
	} `json:"readers"`
	Dnstap struct {
		Sent        int64 `json:"sent"`
		QueueFull   int64 `json:"dropped_queue_full"`
		NoCollector int64 `json:"dropped_no_collector"`
	} `json:"dnstap"`
}

func bbalStats(sock string) (stats, error) {
	var st stats
	return st, debugGet(sock, "/v1/stats", &st)
}

// debugGet reads the JSON reply to GET path on bbal's debug socket sock
// into out.
func debugGet(sock, path string, out any) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://bbal" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}
