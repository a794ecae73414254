package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// One client port's queries, which the kernel's own hash would give to
// one reader, are spread over both readers of -r 2 by their DNS IDs;
// the client keeps its node-mname backend whichever reader reads its
// query, and every query is answered.
func TestReadersShareOneClientPortAndKeepItsBackend(t *testing.T) {
	// Both readers given datagrams from the start, not as the load
	// needs: a query at a time would need one.
	h := servertest.NewConfig(t, func(c *server.Config) { c.Readers = 2 }, func(o *server.Options) { o.AllReaders = true })
	testbed.StartMname(t, h.Sock("5301"), "n1")
	testbed.StartMname(t, h.Sock("5302"), "n2")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	h.Established(0, 5302)

	const queries = 200
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(testbed.Loopback(7), 0)), net.UDPAddrFromAddrPort(h.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	backends := map[string]int{}
	for id := range uint16(queries) {
		m := new(dns.Msg)
		m.SetQuestion("who.example.", dns.TypeTXT)
		m.Id = id
		r := exchangeOn(t, c, m)
		got, err := dnsbackend.TXTFields(r)
		if err != nil {
			t.Fatalf("query %d: %v", id, err)
		}
		backends[got["backend"]]++
	}
	if len(backends) != 1 {
		t.Fatalf("one client answered by %v, want one backend", backends)
	}
	var st debugapi.Stats
	testbed.Eventually(t, "stats", func() bool {
		st = debugStats(t, h.DebugSocket)
		return len(st.Readers) == 2
	})
	for i, r := range st.Readers {
		// IDs alternate even and odd: each reader has half.
		if r.Address != h.Addr.String() || r.Number != i || r.Datagrams != queries/2 || r.Share != 0.5 || r.Retired || !r.Active {
			t.Fatalf("reader %d: %+v, want %d datagrams, half of %s's", i, r, queries/2, h.Addr)
		}
	}
	if len(st.Listen) != 1 {
		t.Fatalf("listen %v: one address, however many readers", st.Listen)
	}
}

// exchangeOn sends m on c and returns its answer.
func exchangeOn(t *testing.T, c *net.UDPConn, m *dns.Msg) *dns.Msg {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("query ID %d: %v", m.Id, err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Id != m.Id {
		t.Fatalf("answer to ID %d: %v, ID %d", m.Id, err, r.Id)
	}
	return r
}

func debugStats(t *testing.T, sock string) debugapi.Stats {
	t.Helper()
	c := debugapi.NewClient(sock)
	defer c.Close()
	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A restart without downtime under load where the new process has
// another number of readers, as when the CPUs the service may use change
// between starts (the default -r is one per usable CPU): from one to two
// (it binds a socket more) and from two to one (it retires one, which
// it still reads but which the kernel gives nothing new). No query is
// lost, and every client keeps its backend.
func TestRestartUnderLoadWithAnotherNumberOfReaders(t *testing.T) {
	all := cpus(t)
	if n := len(all); n < 2 {
		t.Skipf("%d CPUs: no other number of readers to restart with", n)
	}
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set: it, not the CPUs, sets bbal's default readers")
	}
	for _, tc := range []struct {
		name          string
		before, after int
	}{{"grow", 1, 2}, {"shrink", 2, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testbed.SocketDir(t)
			testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
			testbed.StartGo(t, filepath.Join(dir, "5302"), "two")
			debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
			// No -r: the default, from the CPUs bbal may use, which
			// the test sets before the start (bbal inherits the
			// test's) and again before the restart.
			setCPUs(t, os.Getpid(), all[:tc.before])
			p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
			setCPUs(t, os.Getpid(), all)
			p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
			p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5302})
			p.logs.Wait(t, "listening for UDP packets", map[string]any{"readers": float64(tc.before)})
			addr := listenAddr(t, p)

			load := startLoad(t, addr, 16)
			time.Sleep(500 * time.Millisecond) // load before the restart: the span is the test's
			setCPUs(t, p.cmd.Process.Pid, all[:tc.after])
			p.cmd.Process.Signal(syscall.SIGUSR2)
			r := p.logs.Wait(t, "serving: took over from the previous process", nil)
			newPid := int(r["pid"].(float64))
			t.Cleanup(func() { syscall.Kill(newPid, syscall.SIGKILL) })
			if code := p.wait(t, 20*time.Second); code != 0 {
				t.Fatalf("the old process exited %d", code)
			}
			time.Sleep(500 * time.Millisecond) // load after the restart
			n := load.stop(t)
			t.Logf("%d queries, none lost", n)

			st := debugStats(t, debug)
			active := 0
			for _, r := range st.Readers {
				if !r.Retired {
					active++
				}
			}
			if active != tc.after || len(st.Readers) != max(tc.before, tc.after) {
				t.Fatalf("new process's readers %+v: want %d, and %d sockets", st.Readers, tc.after, max(tc.before, tc.after))
			}
			syscall.Kill(newPid, syscall.SIGTERM)
			testbed.Eventually(t, "new process gone", func() bool { return syscall.Kill(newPid, 0) != nil })
		})
	}
}

// clientLoad is clients asking in a loop, each query waited for (up to 2 s),
// each client its own address.
type clientLoad struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	n     int
	err   error
	by    map[int]string
}

func startLoad(t *testing.T, addr netip.AddrPort, clients int) *clientLoad {
	l := &clientLoad{stopc: make(chan struct{}), by: map[int]string{}}
	for i := range clients {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stopc:
					return
				default:
				}
				got, err := testbed.WhoTimeout(addr, testbed.Loopback(10+i), false, 2*time.Second)
				l.mu.Lock()
				l.n++
				if err != nil && l.err == nil {
					l.err = err
				}
				if prev, ok := l.by[i]; ok && err == nil && prev != got["backend"] && l.err == nil {
					l.err = fmt.Errorf("client %d moved from %s to %s", i, prev, got["backend"])
				}
				if err == nil {
					l.by[i] = got["backend"]
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

// stop ends the load and returns the queries asked, failing t if any
// was lost or a client changed backend.
func (l *clientLoad) stop(t *testing.T) int {
	t.Helper()
	close(l.stopc)
	l.wg.Wait()
	if l.err != nil {
		t.Fatalf("after %d queries: %v", l.n, l.err)
	}
	return l.n
}

// cpus returns the CPUs this process may run on.
func cpus(t *testing.T) []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var out []int
	for i := range 1024 {
		if set.IsSet(i) {
			out = append(out, i)
		}
	}
	return out
}

// setCPUs lets every thread of process pid run on the CPUs given, as
// taskset -a -p does.
func setCPUs(t *testing.T, pid int, cpus []int) {
	t.Helper()
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			t.Fatalf("affinity of thread %d: %v", tid, err)
		}
	}
}

// Four readers, all given datagrams, under load from many clients at
// once, with the table's
// listing, its rebalancing and expiry, and the stats read beside them:
// every query is answered, each client by one backend throughout, and
// the race detector (make test runs this package with -race) sees the
// readers share nothing unguarded.
func TestSeveralReadersUnderLoad(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) { c.Readers = 4 }, func(o *server.Options) { o.AllReaders = true })
	h.StartGo("5301", "5302", "5303")
	var side sync.WaitGroup
	done := make(chan struct{})
	side.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			h.B.Table.Walk(t.Context(), netip.Addr{}, func(remotes.Info) bool { return true })
			h.B.Table.Rebalance()
			h.B.Table.Expire()
			h.B.UDP.Stats()
			h.B.UDP.Readers()
		}
	})
	l := startLoad(t, h.Addr, 24)
	time.Sleep(time.Second) // the load's span
	n := l.stop(t)
	close(done)
	side.Wait()
	var total uint64
	busy := 0
	for _, r := range h.B.UDP.Readers() {
		total += r.Datagrams
		if r.Datagrams > 0 {
			busy++
		}
	}
	if total != uint64(n) || busy != 4 {
		t.Fatalf("readers %+v: %d datagrams for %d queries, %d readers busy, want all 4", h.B.UDP.Readers(), total, n, busy)
	}
	t.Logf("%d queries over 4 readers", n)
}
