//go:build chaos

// The chaos test: make chaos (go test -tags chaos). It runs for a minute
// or more on the real clock, so it is not part of make test.

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
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

// TestChaos disturbs four backends in turn (two node-mname, two Go) while
// 120 clients query, one round per backend and action, and then checks
// that the counters agree and that the resources are back to where they
// were.
func TestChaos(t *testing.T) {
	rounds := 24
	if n, err := strconv.Atoi(os.Getenv("CHAOS_ROUNDS")); err == nil {
		rounds = n
	}
	// CHAOS_ACTIONS=poison (say) runs only those rounds.
	actions := []string{"kill", "stop", "unlink", "poison"}
	if a := os.Getenv("CHAOS_ACTIONS"); a != "" {
		actions = strings.Split(a, ",")
	}
	c := newChaos(t)
	defer func() {
		if t.Failed() && os.Getenv("CHAOS_DEBUG") != "" {
			for _, l := range c.h.Logs.Lines() {
				t.Log(l)
			}
		}
	}()
	c.startLoad()
	for r := range rounds {
		// Every backend meets every action in turn.
		v := c.vs[r%len(c.vs)]
		action := actions[(r/len(c.vs))%len(actions)]
		if !t.Run(fmt.Sprintf("round %d: %s %s", r, action, v.name), func(t *testing.T) { c.round(t, v, action) }) {
			break
		}
		c.heaps = append(c.heaps, heapBytes())
		c.records = append(c.records, len(c.h.Logs.Lines()))
	}
	c.stopLoad()
	t.Run("memory flat across the rounds", c.memoryFlat)
	t.Run("counters agree", c.countersAgree)
	t.Run("back to the baseline", c.backToBaseline)
}

// chaos is the chaos test's balancer, backends and clients.
type chaos struct {
	t       *testing.T // the whole test's: backends started live as long
	h       *servertest.Harness
	vs      []*victim
	clients []*client
	stop    chan struct{}
	wg      sync.WaitGroup

	baseHeap, baseRSS       int64
	baseGoroutines, baseFDs int
	heaps                   []int64 // the Go heap after each round
	records                 []int   // the log records the test holds then
}

// recordCost bounds what the test's own capture of one log record costs
// on the heap (the line and its parsed fields).
const recordCost = 2 << 10

// warmRounds are the rounds after which the balancer's tables and pools
// have reached their working size under the load.
const warmRounds = 4

// memoryFlat: from the end of the warm rounds to the last round, under
// the same load, the Go heap does not grow (a leak per query or per
// round would show).
func (c *chaos) memoryFlat(t *testing.T) {
	if len(c.heaps) < 2*warmRounds {
		t.Skipf("%d rounds: too few to tell", len(c.heaps))
	}
	warm, last := c.heaps[warmRounds-1], c.heaps[len(c.heaps)-1]
	// The test holds every log record; those logged since are allowed
	// for.
	logged := int64(c.records[len(c.records)-1]-c.records[warmRounds-1]) * recordCost
	t.Logf("heap after round %d %d MiB, after round %d %d MiB (%d KiB of it the test's log records at most)",
		warmRounds-1, warm>>20, len(c.heaps)-1, last>>20, logged>>10)
	if last > warm+logged+8<<20 {
		t.Fatalf("the heap grew by %d MiB over %d rounds", (last-warm)>>20, len(c.heaps)-warmRounds)
	}
}

// newChaos starts the balancer on the real clock with shortened timers
// and the four backends, and takes the resources' baseline.
func newChaos(t *testing.T) *chaos {
	h := servertest.NewConfig(t, func(c *server.Config) { c.StallFloor = placement.DefaultStallFloor }, func(o *server.Options) {
		o.Clock = timeouts.System
		o.Backends = backend.Config{
			HeartbeatInterval: chaosHeartbeat, HeartbeatTimeout: chaosHeartbeatTimeout,
			ConnectTimeout: time.Second, ScanInterval: 200 * time.Millisecond,
			ReconnectMin: 100 * time.Millisecond, ReconnectStep: 50 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
		}
		// No rebalancing or expiry: a round's healthy clients stay put.
		o.Remotes = remotes.Config{RebalanceInterval: time.Hour, ExpireAfter: time.Hour}
	})
	c := &chaos{t: t, h: h, vs: []*victim{
		{name: "n1", id: 5301}, {name: "n2", id: 5302}, {name: "g1", id: 5303}, {name: "g2", id: 5304},
	}}
	// On the real clock the periodic scan may find a backend before the
	// test's own scan does: mark the log first.
	mark := h.Logs.Mark()
	for _, v := range c.vs {
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
	for _, v := range c.vs {
		h.Established(mark, int(v.id))
	}
	c.baseHeap = heapBytes()
	c.baseGoroutines, c.baseFDs, c.baseRSS = runtime.NumGoroutine(), fdCount(), rssBytes()
	return c
}

// startLoad starts the 120 clients, each on an address of its own.
func (c *chaos) startLoad() {
	for i := range 120 {
		c.clients = append(c.clients, newClient(c.t, testbed.Loopback(100+i), c.h.Addr))
	}
	c.stop = make(chan struct{})
	for _, cl := range c.clients {
		c.wg.Add(1)
		go cl.run(c.stop, &c.wg)
	}
	time.Sleep(time.Second) // load settles: the span is part of the test, not synchronisation
}

// stopLoad stops the clients and closes their sockets.
func (c *chaos) stopLoad() {
	close(c.stop)
	c.wg.Wait()
	for _, cl := range c.clients {
		cl.conn.Close()
	}
}

func (c *chaos) primary(cl *client) backend.ID {
	in, _ := c.h.B.Table.Lookup(cl.addr)
	return in.Primary
}

// round does action to backend v, brings it back, and checks that the
// clients of the other backends lost nothing and that v's were answered
// again in time.
func (c *chaos) round(t *testing.T, v *victim, action string) {
	h := c.h
	var healthy, hit []*client
	for _, cl := range c.clients {
		if c.primary(cl) == v.id {
			hit = append(hit, cl)
		} else {
			healthy = append(healthy, cl)
		}
	}
	mark := h.Logs.Mark()
	faults := faultCounts(h)
	stalls := h.B.Backends.Get(v.id).Stats().Stalls
	t0 := time.Now()
	recoverBy, restart := c.disturb(v, action, hit, t0)
	if action == "stop" && v.node != nil && len(hit) > 0 {
		// Its clients were answered within 1 s because it was found
		// stalled, before the heartbeat timeout faulted it.
		if st := h.B.Backends.Get(v.id).Stats(); st.Stalls == stalls {
			t.Fatalf("hung %s not stalled (stalls %d)", v.name, st.Stalls)
		}
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

	// A backend other than v faulted meanwhile (on a busy host a
	// node-mname can fall behind its heartbeats) has its queries in
	// flight withheld, as any backend faulted for a timeout does: its
	// clients are not counted healthy.
	now := faultCounts(h)
	for id, n := range now {
		if id != v.id && n > faults[id] {
			t.Logf("backend %d faulted too (faults %v, before %v): its clients are not counted healthy", id, now, faults)
			healthy = slices.DeleteFunc(healthy, func(cl *client) bool { return c.primary(cl) == id })
		}
	}
	for _, cl := range healthy {
		for _, q := range cl.between(t0, t1) {
			if q.answered.IsZero() {
				t.Fatalf("client %v of healthy backend %d lost a query sent at +%v (faults %v, before %v)",
					cl.addr, c.primary(cl), q.sent.Sub(t0), faultCounts(h), faults)
			}
		}
	}
	for _, cl := range hit {
		for _, q := range cl.between(recoverBy, t1) {
			if q.answered.IsZero() {
				t.Fatalf("client %v not answered again by +%v (query at +%v lost)",
					cl.addr, recoverBy.Sub(t0), q.sent.Sub(t0))
			}
		}
	}
	if action == "poison" {
		// No other node-mname read the poison. (On a busy host
		// another may be faulted for a late heartbeat meanwhile:
		// that is load, not the poison.)
		for _, o := range c.vs {
			if o != v && o.node != nil && strings.Contains(o.node.Stderr(), "Truncated answer message too large") {
				t.Fatalf("the poison reached %s too (faults %v, before %v)", o.name, faultCounts(h), faults)
			}
		}
	}
	t.Logf("%d clients hit, %d healthy", len(hit), len(healthy))
	for _, cl := range c.clients {
		cl.forget(t1)
	}
	// Spread the clients again, so that the next victim has some.
	for h.B.Table.Rebalance() > 0 {
	}
	time.Sleep(2 * chaosQueryInterval) // every client re-pins on its next query
}

// disturb does action to v at t0, and returns by when v's clients must
// be answered again and whether v is to be restarted.
func (c *chaos) disturb(v *victim, action string, hit []*client, t0 time.Time) (recoverBy time.Time, restart bool) {
	restart = action != "stop" || v.node == nil
	recoverBy = t0.Add(time.Second) // killed: answered again within 1 s of the EOF
	switch {
	case action == "kill" && v.node != nil:
		v.node.Kill()
	case action == "kill":
		v.goBE.Crash()
	case action == "stop" && v.node != nil:
		v.node.Stop()
		// Hung: stalled, and answered again by the backups within 1 s,
		// well before the heartbeat timeout.
		recoverBy = t0.Add(time.Second)
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
		sendPoison(c.t, hit[0].addr, c.h.Addr)
		restart = v.node != nil
	case action == "poison":
		restart = false
	}
	return recoverBy, restart
}

// countersAgree: what the remotes counted is what the backends did, but
// for the queries of dead backends sent again to others.
func (c *chaos) countersAgree(t *testing.T) {
	h := c.h
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
}

// backToBaseline: goroutines, descriptors and memory are back where they
// were before the load, but for the tables and pools that the load grew
// to their working size (memoryFlat checks that they stop there). The Go
// heap is checked always; RSS only without the race detector, whose
// shadow memory is never given back.
func (c *chaos) backToBaseline(t *testing.T) {
	const memSlack = 24 << 20
	var goroutines, fds int
	var heap, rss int64
	back := func() bool {
		return goroutines <= c.baseGoroutines+2 && fds <= c.baseFDs+2 && heap <= c.baseHeap+memSlack &&
			(raceEnabled || rss <= c.baseRSS+memSlack)
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
	logBytes := 0
	for _, l := range c.h.Logs.Lines() {
		logBytes += len(l)
	}
	t.Logf("baseline %d goroutines, %d fds, %d MiB heap, %d MiB RSS; now %d, %d, %d MiB, %d MiB (the test holds %d log records, %d KiB)",
		c.baseGoroutines, c.baseFDs, c.baseHeap>>20, c.baseRSS>>20, goroutines, fds, heap>>20, rss>>20, len(c.h.Logs.Lines()), logBytes>>10)
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
