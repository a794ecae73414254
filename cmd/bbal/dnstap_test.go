package main

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dt "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// dnstapCommand builds the dnstap command of golang-dnstap (a tool of
// go.mod) into a temporary directory.
func dnstapCommand(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dnstap")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/dnstap/golang-dnstap/dnstap").CombinedOutput()
	if err != nil {
		t.Fatalf("go build dnstap: %v\n%s", err, out)
	}
	return bin
}

// quietLine is a line of the dnstap command's quiet text output:
// time, type, client address, protocol, size, name, class, type.
var quietLine = regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{6} (CQ|CR) (\S+) UDP (\d+)b "([^"]*)" IN (\S+)$`)

// tapped is one message as the collector showed it.
type tapped struct{ kind, client, name string }

func parseQuiet(t *testing.T, out string) []tapped {
	t.Helper()
	var got []tapped
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		m := quietLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("dnstap printed %q, which is no message of bbal's", line)
		}
		got = append(got, tapped{m[1], m[2], m[4]})
	}
	return got
}

// askNames sends one query per client, each for its own name, and
// returns the messages the collector must show.
func askNames(t *testing.T, h *servertest.Harness) []tapped {
	t.Helper()
	var want []tapped
	for i := range 3 {
		from := testbed.Loopback(10 + i)
		name := "who.example."
		if _, _, err := testbed.Query(h.Addr, from, false, name, dns.TypeTXT); err != nil {
			t.Fatal(err)
		}
		want = append(want, tapped{"CQ", from.String(), name}, tapped{"CR", from.String(), name})
	}
	return want
}

// sameMessages compares what the collector showed with want, in any
// order of clients (each client's query before its response).
func sameMessages(got, want []tapped) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestDnstapCollectorReadsTheStream runs the dnstap command of
// golang-dnstap as the collector, on a Unix socket and on a file, and
// checks that it shows each query's and response's client and name.
func TestDnstapCollectorReadsTheStream(t *testing.T) {
	bin := dnstapCommand(t)

	t.Run("unix", func(t *testing.T) {
		sock := filepath.Join(testbed.SocketDir(t), "tap.sock")
		var out, errOut testbed.Output
		cmd := exec.Command(bin, "-u", sock)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		// Listening, not only bound: a connection is taken (and
		// dropped again; the collector logs that on stderr).
		testbed.Eventually(t, "the collector listening", func() bool {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		h := servertest.NewConfig(t, func(c *server.Config) { c.Dnstap = dnstap.Target{Network: "unix", Addr: sock} }, nil)
		h.StartGo("5301")
		want := askNames(t, h)
		deadline := time.Now().Add(10 * time.Second)
		for !sameMessages(parseQuiet(t, out.String()), want) {
			flushTap(h)
			if time.Now().After(deadline) {
				t.Fatalf("collector showed\n%s\nwant %v; its stderr: %s", out.String(), want, errOut.String())
			}
			time.Sleep(time.Millisecond)
		}
		if st := h.B.Dnstap.Stats(); st.Sent != uint64(len(want)) || st.QueueFull+st.NoCollector != 0 {
			t.Fatalf("counts %+v, want %d sent and none dropped", st, len(want))
		}
	})

	t.Run("file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "bbal.dnstap")
		h := servertest.NewConfig(t, func(c *server.Config) { c.Dnstap = dnstap.Target{Network: "file", Addr: file} }, nil)
		h.StartGo("5301")
		want := askNames(t, h)
		// Its queries answered, each is queued: Close writes them,
		// and ends the stream.
		h.B.Close()
		if st := h.B.Dnstap.Stats(); st.Sent != uint64(len(want)) {
			t.Fatalf("counts %+v, want %d sent", st, len(want))
		}
		out, err := exec.Command(bin, "-r", file).Output()
		if err != nil {
			t.Fatalf("dnstap -r: %v", err)
		}
		if got := parseQuiet(t, string(out)); !sameMessages(got, want) {
			t.Fatalf("collector showed\n%s\nwant %v", out, want)
		}
		// The YAML output has the rest: identity, version, ports.
		yaml, err := exec.Command(bin, "-r", file, "-y").Output()
		if err != nil {
			t.Fatalf("dnstap -r -y: %v", err)
		}
		port := h.Addr.Port()
		for _, s := range []string{`version: "bbal `, "socket_family: INET", "socket_protocol: UDP",
			"query_address: 127.0.0.1", "response_address: 127.0.0.1", "response_port: " + strconv.Itoa(int(port))} {
			if !strings.Contains(string(yaml), s) {
				t.Errorf("YAML output has no %q:\n%s", s, yaml)
			}
		}
	})
}

// collector is a dnstap collector on a Unix socket, in the test: it
// accepts one stream at a time and decodes its messages, or, stalled,
// completes the handshake and then reads nothing.
type collector struct {
	t       *testing.T
	ln      net.Listener
	stalled bool
	msgs    chan *dt.Dnstap
	done    chan struct{}
	mu      sync.Mutex
	conns   []net.Conn
}

func newCollector(t *testing.T, path string, stalled bool) *collector {
	t.Helper()
	return listenCollector(t, "unix", path, stalled)
}

// listenCollector is newCollector on network ("unix", "tcp") and addr.
func listenCollector(t *testing.T, network, addr string, stalled bool) *collector {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{t: t, ln: ln, stalled: stalled, msgs: make(chan *dt.Dnstap, 1<<16), done: make(chan struct{})}
	go c.accept()
	t.Cleanup(c.Close)
	return c
}

func (c *collector) accept() {
	defer close(c.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.conns = append(c.conns, conn)
		c.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.read(conn)
		}()
	}
}

func (c *collector) read(conn net.Conn) {
	r, err := framestream.NewReader(conn, &framestream.ReaderOptions{
		ContentTypes: [][]byte{[]byte("protobuf:dnstap.Dnstap")}, Bidirectional: true})
	if err != nil || c.stalled {
		return // the connection stays open, unread, until Close
	}
	buf := make([]byte, 1<<16)
	for {
		n, err := r.ReadFrame(buf)
		if err != nil {
			return
		}
		m := new(dt.Dnstap)
		if err := proto.Unmarshal(buf[:n], m); err != nil {
			c.t.Errorf("collector: %v", err)
			return
		}
		c.msgs <- m
	}
}

// Close closes the socket (removing it) and every stream.
func (c *collector) Close() {
	c.ln.Close()
	c.mu.Lock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.mu.Unlock()
	<-c.done
}

// next returns the next message, moving h's clock to flush bbal's
// stream whenever it waits to, failing after 10 s.
func (c *collector) next(t *testing.T, h *servertest.Harness) *dt.Dnstap {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case m := <-c.msgs:
			return m
		case <-time.After(time.Millisecond):
			flushTap(h)
		}
	}
	t.Fatal("no dnstap message within 10 s")
	return nil
}

// flushTap moves h's clock to the dnstap stream's flush, if one is due.
func flushTap(h *servertest.Harness) {
	for _, e := range h.B.Timeouts.List() {
		if e.Name == "dnstap flush" {
			h.Advance(e.Due.Sub(h.Clock.Now()))
		}
	}
}

// expect checks that the next two messages are from's query and its
// response (self: made by bbal).
func (c *collector) expect(t *testing.T, h *servertest.Harness, from netip.Addr, self bool) {
	t.Helper()
	for _, typ := range []dt.Message_Type{dt.Message_CLIENT_QUERY, dt.Message_CLIENT_RESPONSE} {
		m := c.next(t, h)
		msg := m.GetMessage()
		if got := msg.GetType(); got != typ {
			t.Fatalf("message type %v, want %v", got, typ)
		}
		a, _ := netip.AddrFromSlice(msg.GetQueryAddress())
		if a != from {
			t.Fatalf("%v: query address %v, want %v", typ, a, from)
		}
		wantExtra := ""
		if self && typ == dt.Message_CLIENT_RESPONSE {
			wantExtra = "bbal:self"
		}
		if string(m.GetExtra()) != wantExtra {
			t.Fatalf("%v: extra %q, want %q", typ, m.GetExtra(), wantExtra)
		}
	}
}

// TestDnstapSelfAnswersAndIPv6 checks bbal's own SERVFAIL (-F) marked as
// its own, and an IPv6 client logged by its own address, not the
// stand-in the backend sees.
func TestDnstapSelfAnswersAndIPv6(t *testing.T) {
	sock := filepath.Join(testbed.SocketDir(t), "tap.sock")
	c := newCollector(t, sock, false)
	h := servertest.NewConfig(t, func(cfg *server.Config) {
		cfg.Dnstap = dnstap.Target{Network: "unix", Addr: sock}
		cfg.ServfailWhenDown = true
		cfg.Listen = append(cfg.Listen, netip.MustParseAddr("::1"))
	}, nil)
	from := testbed.Loopback(20)
	r, _, err := testbed.Query(h.Addr, from, false, "who.example.", dns.TypeTXT)
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("no backend: %v %v, want SERVFAIL", r, err)
	}
	c.expect(t, h, from, true)

	h.StartGo("5301")
	v6 := netip.AddrPortFrom(netip.MustParseAddr("::1"), h.B.Addrs()[1].Port())
	if _, _, err := testbed.Query(v6, netip.MustParseAddr("::1"), false, "who.example.", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	c.expect(t, h, netip.MustParseAddr("::1"), false)
}

// TestDnstapTCP streams to a collector's TCP address.
func TestDnstapTCP(t *testing.T) {
	c := listenCollector(t, "tcp", "127.0.0.1:0", false)
	h := servertest.NewConfig(t, func(cfg *server.Config) {
		cfg.Dnstap = dnstap.Target{Network: "tcp", Addr: c.ln.Addr().String()}
	}, nil)
	h.StartGo("5301")
	from := testbed.Loopback(25)
	h.Who(from, false)
	c.expect(t, h, from, false)
}

// TestDnstapStalledCollector floods bbal while its collector reads
// nothing: every DNS answer arrives, the messages that do not fit are
// dropped and counted, and the heap does not grow with them.
func TestDnstapStalledCollector(t *testing.T) {
	sock := filepath.Join(testbed.SocketDir(t), "tap.sock")
	newCollector(t, sock, true)
	h := servertest.NewConfig(t, func(c *server.Config) { c.Dnstap = dnstap.Target{Network: "unix", Addr: sock} }, nil)
	h.StartGo("5301")
	const n = 20000
	from := testbed.Loopback(30)
	// Warm up, then measure the heap from here.
	if _, _, err := testbed.Query(h.Addr, from, false, "who.example.", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	// The writer's drains go on through the flood, on the fake clock:
	// it writes until the collector's socket is full, and is stuck.
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				flushTap(h)
			}
		}
	}()
	answered := flood(t, h.Addr, from, n)
	close(stop)
	<-stopped
	if answered != n {
		t.Fatalf("%d of %d queries answered", answered, n)
	}
	st := h.B.Dnstap.Stats()
	t.Logf("dnstap counts after the flood: %+v", st)
	total := uint64(2 * (n + 1))
	if st.QueueFull == 0 || st.Sent+st.QueueFull+st.NoCollector > total {
		t.Fatalf("counts %+v: want drops for a full queue, and no more than %d messages in all", st, total)
	}
	// Queued without bound, 40,000 messages would take 8 MB at the
	// least (their DNS messages alone).
	if grew := int64(heap()) - int64(before); grew > 4<<20 {
		t.Fatalf("heap grew by %d bytes over the flood", grew)
	}
	us := h.B.UDP.Stats()
	if us.PacketsOut != us.PacketsIn {
		t.Fatalf("%d queries in, %d answers out", us.PacketsIn, us.PacketsOut)
	}
}

// flood sends n queries from from, 32 at a time outstanding, and returns
// how many were answered, each within 500 ms of the one before: a
// packet path that waited on the collector (for its write timeout, 2 s)
// would hold them longer.
func flood(t *testing.T, server netip.AddrPort, from netip.Addr, n int) int {
	t.Helper()
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion("who.example.", dns.TypeTXT)
	buf := make([]byte, 1500)
	answered, sent := 0, 0
	for answered < n {
		for sent < n && sent-answered < 32 {
			m.Id = uint16(sent)
			wire, _ := m.Pack()
			if _, err := conn.Write(wire); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return answered
			}
			t.Fatal(err)
		}
		answered++
	}
	return answered
}

// TestDnstapReconnects takes the collector away and brings it back: the
// loss is counted and logged, reconnects are tried on the timer, and
// messages flow again once it is back.
func TestDnstapReconnects(t *testing.T) {
	sock := filepath.Join(testbed.SocketDir(t), "tap.sock")
	c := newCollector(t, sock, false)
	h := servertest.NewConfig(t, func(cfg *server.Config) { cfg.Dnstap = dnstap.Target{Network: "unix", Addr: sock} }, nil)
	h.StartGo("5301")
	from := testbed.Loopback(40)
	h.Who(from, false)
	c.expect(t, h, from, false)

	c.Close()
	mark := h.Logs.Mark()
	// The first write after the loss fails; what comes meanwhile is
	// dropped.
	h.Who(from, false)
	lost := "dnstap collector lost; dropping messages until it is back"
	for deadline := time.Now().Add(10 * time.Second); h.Logs.CountAfter(mark, lost, nil) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the loss was not logged")
		}
		flushTap(h)
	}
	due := h.TimerDue("dnstap reconnect")
	if due != dnstap.FirstRetry {
		t.Fatalf("reconnect in %v, want %v", due, dnstap.FirstRetry)
	}
	h.Who(from, false)
	testbed.Eventually(t, "drops counted", func() bool {
		flushTap(h)
		return h.B.Dnstap.Stats().NoCollector >= 3
	})

	// Not back yet: the attempt fails, and the next is later.
	h.Advance(h.TimerDue("dnstap reconnect"))
	h.Logs.WaitAfter(t, mark, "dnstap reconnect failed", nil)
	if due = h.TimerDue("dnstap reconnect"); due != 2*dnstap.FirstRetry {
		t.Fatalf("second reconnect in %v, want %v", due, 2*dnstap.FirstRetry)
	}

	c = newCollector(t, sock, false)
	h.Advance(due)
	h.Logs.WaitAfter(t, mark, "dnstap stream reconnected", nil)
	h.Who(from, false)
	c.expect(t, h, from, false)
	if st := h.B.Dnstap.Stats(); st.Reconnects != 1 || st.ConnErrors != 1 {
		t.Fatalf("counts %+v, want 1 reconnect and 1 failed", st)
	}
}

// TestDnstapBadTargets: a malformed -D is refused with one line on
// stderr; a target that cannot be opened at start is fatal.
func TestDnstapBadTargets(t *testing.T) {
	dir := testbed.SocketDir(t)
	for _, tt := range []struct{ arg, want string }{
		{"bogus", `bbal: invalid -D "bogus" (want unix:PATH, file:PATH or tcp:ADDR:PORT)`},
		{"unix:", `bbal: invalid -D "unix:" (want unix:PATH, file:PATH or tcp:ADDR:PORT)`},
		{"udp:127.0.0.1:6000", `bbal: invalid -D "udp:127.0.0.1:6000": unknown kind "udp" (want unix:PATH, file:PATH or tcp:ADDR:PORT)`},
		{"tcp:localhost:6000", `bbal: invalid -D "tcp:localhost:6000": want tcp:ADDR:PORT with a numeric address, e.g. tcp:127.0.0.1:6000`},
		{"unix:/" + strings.Repeat("a", 107), `bbal: invalid -D "unix:/` + strings.Repeat("a", 107) + `": a Unix socket path is at most 107 bytes`},
	} {
		t.Run(tt.arg, func(t *testing.T) {
			cmd := bbalCmd("-s", dir, "-D", tt.arg)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit %d, want 1", code)
			}
			if got := stderr.String(); got != tt.want+"\n" || stdout.Len() != 0 {
				t.Fatalf("stderr %q, stdout %q; want stderr %q", got, stdout.String(), tt.want+"\n")
			}
		})
	}
	for _, target := range []string{"unix:" + filepath.Join(dir, "no-collector.sock"), "file:" + filepath.Join(dir, "no", "such", "dir")} {
		t.Run(target, func(t *testing.T) {
			debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
			p := startProcess(t, nil, "-s", testbed.SocketDir(t), "-b", "127.0.0.1", "-p", "0", "-S", debug, "-D", target)
			if code := p.wait(t, 10*time.Second); code != 1 {
				t.Fatalf("exit %d, want 1", code)
			}
			p.logs.Wait(t, "dnstap output cannot be opened", map[string]any{"level": 60})
			if _, err := os.Stat(debug); err == nil {
				t.Fatal("debug socket left behind")
			}
		})
	}
}

// TestDnstapLogsTheRateLimitsSlips: a query over the rate limit that
// bbal answers truncated is logged, query and bbal's own response; one
// dropped is not logged.
func TestDnstapLogsTheRateLimitsSlips(t *testing.T) {
	sock := filepath.Join(testbed.SocketDir(t), "tap.sock")
	c := newCollector(t, sock, false)
	rate := remotes.NewRate(1, 1, 2) // one a second; every second one over answered truncated
	h := servertest.NewConfig(t, func(cfg *server.Config) {
		cfg.Dnstap = dnstap.Target{Network: "unix", Addr: sock}
		cfg.RateLimit = &rate
	}, nil)
	h.StartGo("5301")
	from := testbed.Loopback(21)
	if _, _, err := testbed.Query(h.Addr, from, false, "who.example.", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	c.expect(t, h, from, false) // within the limit: the backend's answer
	// Over it: the first dropped (not logged), the second slipped.
	testbed.QueryTimeout(h.Addr, from, false, "who.example.", dns.TypeTXT, 50*time.Millisecond)
	r, _, err := testbed.Query(h.Addr, from, false, "who.example.", dns.TypeTXT)
	if err != nil || !r.Truncated {
		t.Fatalf("slip: %v %v, want a truncated answer", r, err)
	}
	c.expect(t, h, from, true)
	if st := h.B.UDP.Stats(); st.Slips != 1 || st.Drops["ratelimited"] != 2 {
		t.Fatalf("slips %d, over the limit %d", st.Slips, st.Drops["ratelimited"])
	}
}
