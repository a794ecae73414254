//go:build chaos

// The chaos test: make chaos (go test -tags chaos). It runs for a minute
// or more on the real clock, so it is not part of make test.

package main

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// Shortened timers, so that rounds are quick; the behaviour is the same.
const (
	chaosHeartbeat        = 200 * time.Millisecond
	chaosHeartbeatTimeout = 600 * time.Millisecond
	chaosQueryInterval    = 20 * time.Millisecond
	chaosQueryTimeout     = 1500 * time.Millisecond
)

// query is one query of the load: when it was sent, and when and by whom
// it was answered.
type query struct {
	sent     time.Time
	answered time.Time
	backend  string
}

// client sends a query every chaosQueryInterval from its own address and
// records what becomes of each.
type client struct {
	addr netip.Addr
	conn *net.UDPConn
	mu   sync.Mutex
	qs   map[uint16]*query
	all  []*query
	id   uint16
}

func newClient(t *testing.T, addr netip.Addr, server netip.AddrPort) *client {
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: addr.AsSlice()}, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	return &client{addr: addr, conn: c, qs: map[uint16]*query{}}
}

func (c *client) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	go func() { // answers
		buf := make([]byte, 1500)
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			var who string
			for _, rr := range m.Answer {
				if txt, ok := rr.(*dns.TXT); ok {
					for _, s := range txt.Txt {
						if b, ok := strings.CutPrefix(s, "backend="); ok {
							who = b
						}
					}
				}
			}
			c.mu.Lock()
			if q := c.qs[m.Id]; q != nil && q.answered.IsZero() {
				q.answered, q.backend = time.Now(), who
			}
			c.mu.Unlock()
		}
	}()
	tick := time.NewTicker(chaosQueryInterval)
	defer tick.Stop()
	m := new(dns.Msg)
	m.SetQuestion("chaos.example.", dns.TypeTXT)
	wire, _ := m.Pack()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		c.mu.Lock()
		c.id++
		q := &query{sent: time.Now()}
		c.qs[c.id] = q
		c.all = append(c.all, q)
		binary.BigEndian.PutUint16(wire, c.id)
		c.mu.Unlock()
		c.conn.Write(wire)
	}
}

// forget drops the records of queries sent before t.
func (c *client) forget(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := c.all[:0]
	for _, q := range c.all {
		if q.sent.Before(t) {
			continue
		}
		keep = append(keep, q)
	}
	clear(c.all[len(keep):])
	c.all = keep
	for id, q := range c.qs {
		if q.sent.Before(t) {
			delete(c.qs, id)
		}
	}
}

// between returns the client's queries sent in [from, to), old enough to
// have been answered.
func (c *client) between(from, to time.Time) []query {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []query
	for _, q := range c.all {
		if !q.sent.Before(from) && q.sent.Before(to) && time.Since(q.sent) > chaosQueryTimeout {
			out = append(out, *q)
		}
	}
	return out
}

// victim is a backend the rounds disturb.
type victim struct {
	name  string
	id    backend.ID
	path  string
	node  *testbed.Mname     // one of these
	goBE  *testbed.GoBackend // two
	start func()             // (re)starts it
}

func fdCount() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// heapBytes returns the Go heap in use, after a collection: what the
// race detector's shadow memory does not inflate.
func heapBytes() int64 {
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

func rssBytes() int64 {
	b, _ := os.ReadFile("/proc/self/statm")
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func TestChaos(t *testing.T) {
	rounds := 24
	if n, err := strconv.Atoi(os.Getenv("CHAOS_ROUNDS")); err == nil {
		rounds = n
	}
	h := servertest.New(t, func(o *server.Options) {
		o.Clock = timeouts.System
		o.Backends = backend.Config{
			HeartbeatInterval: chaosHeartbeat, HeartbeatTimeout: chaosHeartbeatTimeout,
			ConnectTimeout: time.Second, ScanInterval: 200 * time.Millisecond,
			ReconnectMin: 100 * time.Millisecond, ReconnectStep: 50 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
		}
		// No rebalancing or expiry: a round's healthy clients stay put.
		o.Remotes = remotes.Config{RebalanceInterval: time.Hour, ExpireAfter: time.Hour}
	})
	// On the real clock the periodic scan may find a backend before the
	// test's own scan does: mark the log first.
	mark := h.Logs.Mark()
	vs := []*victim{
		{name: "n1", id: 5301}, {name: "n2", id: 5302}, {name: "g1", id: 5303}, {name: "g2", id: 5304},
	}
	for _, v := range vs {
		v.path = h.Sock(strconv.Itoa(int(v.id)))
		if v.name[0] == 'n' {
			v.start = func() { v.node = testbed.StartMname(t, v.path, v.name) }
		} else {
			v.start = func() {
				os.Remove(v.path) // a crashed one's stale socket
				v.goBE = testbed.StartGo(t, v.path, v.name)
			}
		}
		v.start()
	}
	h.B.Backends.Scan()
	for _, v := range vs {
		h.Established(mark, int(v.id))
	}

	baseHeap := heapBytes()
	baseGoroutines, baseFDs, baseRSS := runtime.NumGoroutine(), fdCount(), rssBytes()

	var clients []*client
	for i := range 120 {
		clients = append(clients, newClient(t, testbed.Loopback(100+i), h.Addr))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go c.run(stop, &wg)
	}
	time.Sleep(time.Second) // load settles: the span is part of the test, not synchronisation

	defer func() {
		if t.Failed() && os.Getenv("CHAOS_DEBUG") != "" {
			for _, l := range h.Logs.Lines() {
				t.Log(l)
			}
		}
	}()
	primary := func(c *client) backend.ID {
		in, _ := h.B.Table.Lookup(c.addr)
		return in.Primary
	}
	// CHAOS_ACTIONS=poison (say) runs only those rounds.
	actions := []string{"kill", "stop", "unlink", "poison"}
	if a := os.Getenv("CHAOS_ACTIONS"); a != "" {
		actions = strings.Split(a, ",")
	}
	for r := range rounds {
		// Every backend meets every action in turn.
		v := vs[r%len(vs)]
		action := actions[(r/len(vs))%len(actions)]
		var healthy, hit []*client
		for _, c := range clients {
			if primary(c) == v.id {
				hit = append(hit, c)
			} else {
				healthy = append(healthy, c)
			}
		}
		mark := h.Logs.Mark()
		faults := faultCounts(h)
		t0 := time.Now()
		restart := action != "stop" || v.node == nil
		recoverBy := t0.Add(time.Second) // killed: answered again within 1 s of the EOF
		switch {
		case action == "kill" && v.node != nil:
			v.node.Kill()
		case action == "kill":
			v.goBE.Crash()
		case action == "stop" && v.node != nil:
			v.node.Stop()
			// Hung: answered again within the heartbeat timeout.
			recoverBy = t0.Add(chaosHeartbeat + chaosHeartbeatTimeout + 200*time.Millisecond)
			time.Sleep(2 * time.Second) // how long it hangs
			v.node.Cont()
		case action == "stop":
			v.goBE.Crash() // a Go backend cannot be stopped alone: crash it
		case action == "unlink":
			os.Remove(v.path)
			if v.node != nil {
				v.node.Term()
			} else {
				v.goBE.Close()
			}
		case action == "poison" && len(hit) > 0:
			// One datagram node-mname dies of (a Go backend answers
			// it): it takes down that backend and no other.
			sendPoison(t, hit[0].addr, h.Addr)
			restart = v.node != nil
		case action == "poison":
			restart = false
		}
		time.Sleep(500 * time.Millisecond) // down for a while
		if restart {
			if action == "poison" {
				// Far behind, it may have been faulted for a late
				// heartbeat before it read the poison: it goes now.
				v.node.Kill()
			}
			v.start()
			waitEstablished(t, h, mark, v.id)
		}
		time.Sleep(chaosQueryTimeout + 300*time.Millisecond) // the round's queries come in
		t1 := time.Now().Add(-chaosQueryTimeout - 300*time.Millisecond)

		for _, c := range healthy {
			for _, q := range c.between(t0, t1) {
				if q.answered.IsZero() {
					t.Fatalf("round %d (%s %s): client %v of healthy backend %d lost a query sent at +%v (faults %v, before %v)",
						r, action, v.name, c.addr, primary(c), q.sent.Sub(t0), faultCounts(h), faults)
				}
			}
		}
		for _, c := range hit {
			for _, q := range c.between(recoverBy, t1) {
				if q.answered.IsZero() {
					t.Fatalf("round %d (%s %s): client %v not answered again by +%v (query at +%v lost)",
						r, action, v.name, c.addr, recoverBy.Sub(t0), q.sent.Sub(t0))
				}
			}
		}
		if action == "poison" {
			// No other node-mname read the poison. (On a busy host
			// another may be faulted for a late heartbeat meanwhile:
			// that is load, not the poison.)
			for _, o := range vs {
				if o != v && o.node != nil && strings.Contains(o.node.Stderr(), "Truncated answer message too large") {
					t.Fatalf("round %d (poison %s): the poison reached %s too (faults %v, before %v)",
						r, v.name, o.name, faultCounts(h), faults)
				}
			}
		}
		t.Logf("round %d: %s %s: %d clients hit, %d healthy", r, action, v.name, len(hit), len(healthy))
		for _, c := range clients {
			c.forget(t1)
		}
		// Spread the clients again, so that the next victim has some.
		for h.B.Table.Rebalance() > 0 {
		}
		time.Sleep(2 * chaosQueryInterval) // every client re-pins on its next query
	}
	close(stop)
	wg.Wait()
	for _, c := range clients {
		c.conn.Close()
	}

	// Counters agree: what the remotes counted is what the backends did,
	// but for the queries of dead backends sent again to others.
	var remoteUDP, remoteDrops uint64
	h.B.Table.Walk(t.Context(), netip.Addr{}, func(in remotes.Info) bool {
		remoteUDP += in.UDP
		remoteDrops += in.Drops
		return true
	})
	var backendUDP uint64
	for _, b := range h.B.Backends.All() {
		backendUDP += b.Stats().UDPFrames
	}
	us := h.B.UDP.Stats()
	proxyDrops := us.Drops["no_backend"] + us.Drops["stuck"] + us.Drops["down"] + us.Drops["quarantined"]
	if remoteUDP+us.Resent != backendUDP || remoteDrops != proxyDrops {
		t.Fatalf("remotes counted %d queued and %d dropped; backends %d queued (%d sent again), proxy %d dropped",
			remoteUDP, remoteDrops, backendUDP, us.Resent, proxyDrops)
	}
	t.Logf("%d queries sent again to another backend after theirs died, %d could not be, %d withheld, %d quarantined",
		us.Resent, us.Unresent, us.Withheld, us.Quarantined)

	// Back to the baseline: goroutines, descriptors, memory. The Go
	// heap is checked always; RSS only without the race detector, whose
	// shadow memory is never given back.
	const memSlack = 16 << 20
	var goroutines, fds int
	var heap, rss int64
	back := func() bool {
		return goroutines <= baseGoroutines+2 && fds <= baseFDs+2 && heap <= baseHeap+memSlack &&
			(raceEnabled || rss <= baseRSS+memSlack)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		heap = heapBytes()
		goroutines, fds, rss = runtime.NumGoroutine(), fdCount(), rssBytes()
		if back() || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("baseline %d goroutines, %d fds, %d MiB heap, %d MiB RSS; after %d rounds: %d, %d, %d MiB, %d MiB",
		baseGoroutines, baseFDs, baseHeap>>20, baseRSS>>20, rounds, goroutines, fds, heap>>20, rss>>20)
	if !back() {
		t.Fatal("resources did not return to the baseline")
	}
}

// faultCounts returns each backend's faults so far.
func faultCounts(h *servertest.Harness) map[backend.ID]uint64 {
	out := map[backend.ID]uint64{}
	for _, b := range h.B.Backends.All() {
		for _, n := range b.Stats().Faults {
			out[b.ID()] += n
		}
	}
	return out
}

// sendPoison sends, from a socket of its own on address from, one query
// whose EDNS OPT record advertises a UDP payload size of 0.
func sendPoison(t *testing.T, from netip.Addr, to netip.AddrPort) {
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(poisonQuery("chaos.example.", 0xdead))
}

// waitEstablished waits for backend id's hello after mark, dumping the
// backend's state and the goroutines if it does not come.
func waitEstablished(t *testing.T, h *servertest.Harness, mark int, id backend.ID) {
	t.Helper()
	if _, ok := h.Logs.Await(mark, 15*time.Second, "backend socket established", map[string]any{"be_id": int(id)}); !ok {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("backend %d not re-established: %+v\n%s", id, h.B.Backends.Get(id).Stats(), buf[:n])
	}
}
