package main

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/cache"
)

// cacheBed is a balancer with an answer cache in front of node-mname
// processes (tools/mname-backend answers names under cache.test with
// TTLs), on the fake clock.
type cacheBed struct {
	*harness
	mnames []*testbed.Mname
}

func newCacheBed(t *testing.T, names ...string) *cacheBed {
	t.Helper()
	return newCacheBedConfig(t, nil, names...)
}

// newCacheBedConfig is newCacheBed with a chance to change the
// configuration.
func newCacheBedConfig(t *testing.T, config func(*server.Config), names ...string) *cacheBed {
	t.Helper()
	h := servertest.NewConfig(t, func(cfg *server.Config) {
		cfg.Cache = &cache.Config{Entries: 10000, MaxTTL: cache.DefaultMaxTTL, Stale: cache.DefaultStale}
		if config != nil {
			config(cfg)
		}
	}, nil)
	c := &cacheBed{harness: h}
	for i, name := range names {
		c.mnames = append(c.mnames, testbed.StartMname(t, h.Sock(strconv.Itoa(5301+i)), name))
	}
	h.B.Backends.Scan()
	for i := range names {
		h.Established(0, 5301+i)
	}
	return c
}

// ask sends a TXT query for name (as written: its case is the client's)
// from `from`, with EDNS of size edns (0: none), and returns the answer
// and its wire bytes; nil for none within timeout.
func (c *cacheBed) ask(from netip.Addr, name string, qtype uint16, edns uint16, timeout time.Duration) (*dns.Msg, []byte) {
	c.T.Helper()
	return exchange(c.T, c.Addr, from, name, qtype, edns, timeout)
}

func exchange(t testing.TB, server netip.AddrPort, from netip.Addr, name string, qtype uint16, edns uint16, timeout time.Duration) (*dns.Msg, []byte) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if edns > 0 {
		q.SetEdns0(edns, false)
	}
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(wire); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, nil
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("answer does not unpack: %v", err)
	}
	if r.Id != q.Id {
		t.Fatalf("answer ID %d for query %d", r.Id, q.Id)
	}
	return r, buf[:n]
}

// txt returns the answer's TXT fields (key=value) and the TTL of its
// first record.
func txt(m *dns.Msg) (map[string]string, uint32) {
	out := map[string]string{}
	var ttl uint32
	for i, rr := range m.Answer {
		if i == 0 {
			ttl = rr.Header().Ttl
		}
		if t, ok := rr.(*dns.TXT); ok {
			for _, s := range t.Txt {
				if k, v, ok := strings.Cut(s, "="); ok {
					out[k] = v
				}
			}
		}
	}
	return out, ttl
}

func (c *cacheBed) stats() cache.Stats { return c.B.UDP.Cache().Stats() }

func TestCacheAnswersRepeatedQueriesAgingTTLs(t *testing.T) {
	c := newCacheBed(t, "n1")
	client := testbed.Loopback(2)
	m, _ := c.ask(client, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if m == nil {
		t.Fatal("no answer")
	}
	first, ttl := txt(m)
	if ttl != 60 || first["backend"] != "n1" {
		t.Fatalf("first answer %v TTL %d: want n1's, TTL 60", first, ttl)
	}
	for _, step := range []struct {
		advance time.Duration
		ttl     uint32
	}{{0, 60}, {5 * time.Second, 55}, {5 * time.Second, 50}, {5 * time.Second, 45}} {
		if step.advance > 0 {
			c.Heartbeat()
		}
		// The client's own letter case comes back, and its ID.
		m, wire := c.ask(client, "SvC.CaChE.tEsT.", dns.TypeTXT, 0, 2*time.Second)
		if m == nil {
			t.Fatal("no answer")
		}
		got, ttl := txt(m)
		if got["served"] != first["served"] || ttl != step.ttl {
			t.Fatalf("at +%v: %v TTL %d, want the cached answer (served=%s) with TTL %d", c.Clock.Now().Sub(testbed.Epoch), got, ttl, first["served"], step.ttl)
		}
		if m.Question[0].Name != "SvC.CaChE.tEsT." || !strings.Contains(string(wire), "\x03SvC\x05CaChE\x04tEsT\x00") {
			t.Fatalf("question %q: want the client's case", m.Question[0].Name)
		}
	}
	if s := c.stats(); s.Hits != 4 || s.Misses != 1 || s.Entries != 1 {
		t.Fatalf("stats %+v: want 4 hits, 1 miss, 1 entry", s)
	}
	// Past its TTL, the backend is asked again.
	for range 10 {
		c.Heartbeat()
	}
	m, _ = c.ask(client, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if got, ttl := txt(m); got["served"] == first["served"] || ttl != 60 {
		t.Fatalf("after 65 s: %v TTL %d, want a new answer from n1 with TTL 60", got, ttl)
	}
}

func TestCacheKeepsEDNSAndPlainApart(t *testing.T) {
	c := newCacheBed(t, "n1")
	client := testbed.Loopback(2)
	// With EDNS the whole answer, over 512 bytes, is kept.
	m, wire := c.ask(client, "big.cache.test.", dns.TypeTXT, 1232, 2*time.Second)
	if m == nil || m.Truncated || len(wire) <= 512 {
		t.Fatalf("EDNS answer: %d bytes, truncated %v", len(wire), m != nil && m.Truncated)
	}
	ednsServed, _ := txt(m)
	if m, _ := c.ask(client, "big.cache.test.", dns.TypeTXT, 1232, 2*time.Second); m == nil || len(m.Answer) != 22 {
		t.Fatal("EDNS answer not served again")
	} else if got, _ := txt(m); got["served"] != ednsServed["served"] {
		t.Fatalf("second EDNS answer %v: want the cached one", got)
	}
	// Without EDNS the client gets node-mname's truncated answer, never
	// the cached whole one, and that is not kept.
	for range 2 {
		m, wire := c.ask(client, "big.cache.test.", dns.TypeTXT, 0, 2*time.Second)
		if m == nil || !m.Truncated || len(wire) > 512 {
			t.Fatalf("plain query: %v, %d bytes: want node-mname's truncated answer", m, len(wire))
		}
	}
	if s := c.stats(); s.Hits != 1 || s.Entries != 1 || s.Rejected != 2 {
		t.Fatalf("stats %+v: want 1 hit, 1 entry and the 2 truncated answers not kept", s)
	}
}

func TestCacheKeepsNXDOMAINForSOAMinimum(t *testing.T) {
	c := newCacheBed(t, "n1")
	client := testbed.Loopback(2)
	m, _ := c.ask(client, "nx1.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if m == nil || m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 || m.Ns[0].Header().Ttl != 300 {
		t.Fatalf("first answer %v: want NXDOMAIN with the SOA, TTL 300", m)
	}
	c.Clock.Advance(3 * time.Second)
	m, _ = c.ask(client, "nx1.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if m == nil || m.Rcode != dns.RcodeNameError || m.Ns[0].Header().Ttl != 2 {
		t.Fatalf("at 3 s: %v: want the cached NXDOMAIN with its SOA at TTL 2 (the minimum, 5, less 3)", m)
	}
	if s := c.stats(); s.Hits != 1 {
		t.Fatalf("hits %d, want 1", s.Hits)
	}
	c.Heartbeat() // to 8 s: past the minimum
	m, _ = c.ask(client, "nx1.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if m == nil || m.Ns[0].Header().Ttl != 300 {
		t.Fatalf("at 8 s: %v: want node-mname's answer again", m)
	}
	if s := c.stats(); s.Hits != 1 || s.Misses != 2 {
		t.Fatalf("stats %+v: want 1 hit, 2 misses", s)
	}
}

func TestCacheServesStaleWhenEveryBackendIsDead(t *testing.T) {
	c := newCacheBed(t, "n1", "n2")
	clients := []netip.Addr{c.PinTo(5301), c.PinTo(5302)}
	for i, from := range clients {
		m, _ := c.ask(from, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
		if got, _ := txt(m); got["backend"] != []string{"n1", "n2"}[i] {
			t.Fatalf("client %d answered by %v", i, got)
		}
	}
	mark := c.Logs.Mark()
	for _, m := range c.mnames {
		m.Kill()
	}
	for _, id := range []int{5301, 5302} {
		c.Logs.WaitAfter(t, mark, "backend socket closed", map[string]any{"be_id": id})
	}
	c.Clock.Advance(90 * time.Second) // past the TTL
	for i, from := range clients {
		m, _ := c.ask(from, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
		if m == nil {
			t.Fatalf("client %d: no stale answer", i)
		}
		got, ttl := txt(m)
		if got["backend"] != []string{"n1", "n2"}[i] || ttl != cache.StaleTTL {
			t.Fatalf("client %d: %v TTL %d: want its own backend's answer, stale, TTL %d", i, got, ttl, cache.StaleTTL)
		}
	}
	if m, _ := c.ask(clients[0], "other.cache.test.", dns.TypeTXT, 0, 300*time.Millisecond); m != nil {
		t.Fatalf("an uncached name was answered: %v", m)
	}
	if s := c.stats(); s.Stale != 2 {
		t.Fatalf("stale %d, want 2", s.Stale)
	}
	c.Logs.Wait(t, "backend cannot take queries: answering from the cache, stale if need be", nil)

	// A backend that comes back has nothing in the cache: its data may
	// have changed.
	mark = c.Logs.Mark()
	testbed.StartMname(t, c.Sock("5301"), "n1b")
	c.Clock.Advance(time.Minute) // the reconnect back-off
	c.Established(mark, 5301)
	// The sweep takes n1's old answers out; n2's stay for serving stale.
	c.Clock.Advance(udpproxy.CacheSweepInterval)
	testbed.Eventually(t, "n1's old entries swept", func() bool { return c.stats().Entries == 1 })
	m, _ := c.ask(clients[0], "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if got, ttl := txt(m); got["backend"] != "n1b" || ttl != 60 {
		t.Fatalf("after n1 came back: %v TTL %d, want n1b's fresh answer", got, ttl)
	}
}

// TestCacheServesStaleForAStalledBackend: a client whose only backend
// is stalled (node-mname stopped) is answered from an expired entry.
func TestCacheServesStaleForAStalledBackend(t *testing.T) {
	c := newCacheBedConfig(t, func(cfg *server.Config) { cfg.StallFloor = placement.DefaultStallFloor }, "n1")
	client := testbed.Loopback(2)
	if m, _ := c.ask(client, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second); m == nil {
		t.Fatal("no answer")
	}
	for range 13 { // 65 s: past the TTL
		c.Heartbeat()
	}
	c.mnames[0].Stop()
	t.Cleanup(c.mnames[0].Cont)
	if m, _ := c.ask(client, "other.cache.test.", dns.TypeTXT, 0, 200*time.Millisecond); m != nil {
		t.Fatal("a stopped node-mname answered")
	}
	be := c.B.Backends.Get(5301)
	for i := 0; !be.Load().Stalled(); i++ {
		if i == 40 {
			t.Fatal("the stopped backend was not found stalled in 2 s")
		}
		c.StallStep()
	}
	m, _ := c.ask(client, "svc.cache.test.", dns.TypeTXT, 0, 2*time.Second)
	if m == nil {
		t.Fatal("no stale answer")
	}
	if got, ttl := txt(m); got["backend"] != "n1" || ttl != cache.StaleTTL {
		t.Fatalf("%v TTL %d: want n1's answer, stale", got, ttl)
	}
	if s := c.stats(); s.Stale != 1 {
		t.Fatalf("stale %d, want 1", s.Stale)
	}
}

func TestCacheFlush(t *testing.T) {
	c := newCacheBed(t, "n1")
	client := testbed.Loopback(2)
	for _, name := range []string{"a.cache.test.", "b.cache.test.", "A.cache.test."} {
		c.ask(client, name, dns.TypeTXT, 0, 2*time.Second)
	}
	c.ask(client, "a.cache.test.", dns.TypeTXT, 1232, 2*time.Second)
	if s := c.stats(); s.Entries != 3 {
		t.Fatalf("entries %d, want 3 (a with and without EDNS, b)", s.Entries)
	}
	api := debugapi.NewClient(c.DebugSocket)
	defer api.Close()
	ctx := context.Background()
	f, err := api.FlushCache(ctx, "A.Cache.Test")
	if err != nil || f.Flushed != 2 || f.Name != "a.cache.test." {
		t.Fatalf("flush of a.cache.test: %+v, %v", f, err)
	}
	c.Logs.Wait(t, "answer cache flushed by operator", map[string]any{"uid": os.Getuid(), "flushed": 2, "name": "a.cache.test."})
	if _, err := api.FlushCache(ctx, "bad..name"); err == nil || !strings.Contains(err.Error(), `invalid name "bad..name"`) {
		t.Fatalf("bad name: %v", err)
	}
	cs, err := api.Cache(ctx)
	if err != nil || !cs.Enabled || cs.Entries != 1 || cs.Flushed != 2 {
		t.Fatalf("GET /v1/cache: %+v, %v", cs, err)
	}
	if f, err := api.FlushCache(ctx, ""); err != nil || f.Flushed != 1 {
		t.Fatalf("flush: %+v, %v", f, err)
	}
	hits := c.stats().Hits // A.cache.test's
	if m, _ := c.ask(client, "b.cache.test.", dns.TypeTXT, 0, 2*time.Second); m == nil {
		t.Fatal("no answer after the flush")
	}
	if s := c.stats(); s.Hits != hits || s.Entries != 1 {
		t.Fatalf("stats after the flush %+v: want b asked of node-mname again", s)
	}
}

// TestCacheNotEnabled: without -c the cache endpoints say so.
func TestCacheNotEnabled(t *testing.T) {
	h := newHarness(t, nil)
	api := debugapi.NewClient(h.DebugSocket)
	defer api.Close()
	cs, err := api.Cache(context.Background())
	if err != nil || cs.Enabled {
		t.Fatalf("GET /v1/cache: %+v, %v", cs, err)
	}
	if _, err := api.FlushCache(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "without -c") {
		t.Fatalf("flush without a cache: %v", err)
	}
}

// TestCacheSurvivesRestart: the cache is handed to the new process of a
// restart without downtime, which answers the same names from it.
func TestCacheSurvivesRestart(t *testing.T) {
	dir := testbed.SocketDir(t)
	testbed.StartMname(t, filepath.Join(dir, "5301"), "n1")
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug, "-c", "10000")
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	addr := listenAddr(t, p)
	const names = 200
	ask := func() {
		for i := range names {
			if m, _ := exchange(t, addr, testbed.Loopback(2+i%10), "n"+strconv.Itoa(i)+".cache.test.", dns.TypeTXT, 0, 2*time.Second); m == nil {
				t.Fatalf("name %d not answered", i)
			}
		}
	}
	ask()
	ask()
	api := debugapi.NewClient(debug)
	defer api.Close()
	before, err := api.Cache(context.Background())
	if err != nil || before.Hits != names || before.Entries != names {
		t.Fatalf("before the restart: %+v, %v", before, err)
	}
	p.cmd.Process.Signal(syscall.SIGUSR2)
	r := p.logs.Wait(t, "took over the previous process's answer cache", nil)
	if r["entries"] != float64(names) {
		t.Fatalf("took over %v entries, want %d", r["entries"], names)
	}
	r = p.logs.Wait(t, "serving: took over from the previous process", nil)
	newPid := int(r["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(newPid, syscall.SIGKILL) })
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("the old process exited %d", code)
	}
	ask()
	after, err := api.Cache(context.Background())
	if err != nil || after.Hits != names || after.Misses != 0 {
		t.Fatalf("after the restart: %+v, %v: want every name a hit", after, err)
	}
	syscall.Kill(newPid, syscall.SIGTERM)
	testbed.Eventually(t, "new process gone", func() bool { return syscall.Kill(newPid, 0) != nil })
}
