package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tools/testbed"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestMain(m *testing.M) {
	// The test binary doubles as balstat for the tests that need a
	// process of their own (another user).
	if os.Getenv("BALSTAT_TEST_MAIN") == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// newBed is a balancer with backends 5301 and 5302 and three clients:
// 127.0.0.2 and 127.0.0.10 on 5301, 127.0.0.9 on 5302, seen at different
// times on the fake clock, and one heartbeat answered.
func newBed(t *testing.T) *servertest.Harness {
	t.Helper()
	h := servertest.New(t, nil)
	h.StartGo("5301", "5302")
	h.Who(testbed.Loopback(1), false) // 127.0.0.2 -> 5301
	h.Who(testbed.Loopback(8), false) // 127.0.0.9 -> 5302
	h.Advance(2 * time.Second)
	h.Who(testbed.Loopback(9), false) // 127.0.0.10 -> 5301
	h.Who(testbed.Loopback(1), true)
	h.Heartbeat()
	return h
}

// balstat runs balstat against h's debug socket.
func balstat(t *testing.T, h *servertest.Harness, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"-S", h.DebugSocket}, args...), &out, &errb)
	// Paths differ per run.
	return strings.ReplaceAll(out.String(), h.Dir, "$DIR"), errb.String(), code
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := "testdata/" + name + ".golden"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("output differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestTables(t *testing.T) {
	h := newBed(t)
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"all", nil},
		{"backend", []string{"-b", "5302"}},
		{"remote", []string{"-r", "127.0.0.10"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := balstat(t, h, tt.args...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d: %s", code, errs)
			}
			golden(t, tt.name, out)
		})
	}
}

func TestJSON(t *testing.T) {
	h := newBed(t)
	out, errs, code := balstat(t, h, "-j")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got struct {
		Now      time.Time          `json:"now"`
		Backends []debugapi.Backend `json:"backends"`
		Remotes  []debugapi.Remote  `json:"remotes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if !got.Now.Equal(h.Clock.Now()) {
		t.Errorf("now %v, want the balancer's clock %v", got.Now, h.Clock.Now())
	}
	if len(got.Backends) != 2 || got.Backends[0].ID != 5301 || got.Backends[0].Remotes != 2 ||
		got.Backends[0].UDPFrames != 2 || got.Backends[0].TCPTotal != 1 || got.Backends[1].Remotes != 1 {
		t.Errorf("backends %+v", got.Backends)
	}
	if got.Backends[0].Probes != nil {
		t.Errorf("probes %+v shown without -H", got.Backends[0].Probes)
	}
	var ips []string
	for _, r := range got.Remotes {
		ips = append(ips, r.IP)
	}
	if strings.Join(ips, " ") != "127.0.0.2 127.0.0.9 127.0.0.10" {
		t.Errorf("remotes in order %v, want numeric order", ips)
	}
	if r := got.Remotes[0]; r.Backend != 5301 || r.UDP != 1 || r.TCP != 1 || !r.LastSeen.Equal(testbed.Epoch.Add(2*time.Second)) ||
		!r.FirstSeen.Equal(testbed.Epoch) {
		t.Errorf("remote %+v", r)
	}

	out, _, _ = balstat(t, h, "-j", "-b", "5302")
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Backends) != 1 || len(got.Remotes) != 1 ||
		got.Remotes[0].IP != "127.0.0.9" {
		t.Errorf("-j -b 5302: %v %+v", err, got)
	}
}

func TestControlActionsSteerQueries(t *testing.T) {
	h := newBed(t)
	a, b, c := testbed.Loopback(1), testbed.Loopback(8), testbed.Loopback(9) // 5301, 5302, 5301
	who := func(from netip.Addr) string { return h.Who(from, false)["backend"] }

	out, _, code := balstat(t, h, "disable", "5301")
	if code != 0 || out != "backend 5301: disabled ($DIR/5301)\n" {
		t.Fatalf("disable: %d %q", code, out)
	}
	h.Logs.Wait(t, "backend disabled by operator", map[string]any{"be_id": 5301, "uid": os.Getuid(), "from": "enabled"})
	if got := who(a); got != "5302" {
		t.Fatalf("client of a disabled backend answered by %s", got)
	}
	if got := h.Who(c, true)["backend"]; got != "5302" {
		t.Fatalf("TCP client of a disabled backend answered by %s", got)
	}
	if got := who(testbed.Loopback(20)); got != "5302" {
		t.Fatalf("new client given to %s while 5301 is disabled", got)
	}

	balstat(t, h, "enable", "5301")
	if got := who(a); got != "5301" {
		t.Fatalf("client did not return to its enabled primary: %s", got)
	}

	balstat(t, h, "drain", "5302")
	if got := who(b); got != "5302" {
		t.Fatalf("client of a draining backend moved to %s", got)
	}
	for i := 30; i < 33; i++ {
		if got := who(testbed.Loopback(i)); got != "5301" {
			t.Fatalf("new client given to draining backend %s", got)
		}
	}
	out, _, _ = balstat(t, h, "-b", "5302")
	if !strings.Contains(out, "ok,draining") {
		t.Fatalf("draining state not shown:\n%s", out)
	}

	balstat(t, h, "enable", "5302")
	if out, _, code := balstat(t, h, "weight", "5302", "3"); code != 0 || !strings.HasPrefix(out, "backend 5302: weight 3 (") {
		t.Fatalf("weight: %d %q", code, out)
	}
	h.Logs.Wait(t, "backend weight set by operator", map[string]any{"be_id": 5302, "from": 1, "to": 3})
	if h.B.Backends.Get(5302).Weight() != 3 {
		t.Fatal("weight not set")
	}

	if out, _, code := balstat(t, h, "reset"); code != 0 || out != "counters reset\n" {
		t.Fatalf("reset: %d %q", code, out)
	}
	h.Logs.Wait(t, "counters reset by operator", map[string]any{"uid": os.Getuid()})
	out, _, _ = balstat(t, h, "-j")
	var got debugapi.BackendsReply
	json.Unmarshal([]byte(out), &got)
	for _, be := range got.Backends {
		if be.UDPFrames != 0 || be.TCPTotal != 0 {
			t.Fatalf("backend %d counters not reset: %+v", be.ID, be)
		}
	}
}

func TestErrors(t *testing.T) {
	h := newBed(t)
	dir := testbed.SocketDir(t)
	missing := dir + "/none.sock"
	stale := dir + "/stale.sock"
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens

	run1 := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := run(context.Background(), args, &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-S", missing}, 1, "balstat: bbal is not running at " + missing + "\n"},
		{[]string{"-S", stale}, 1, "balstat: bbal is not running at " + stale + "\n"},
		{[]string{"-S", missing, "reset"}, 1, "balstat: bbal is not running at " + missing + "\n"},
		{[]string{"-S", h.DebugSocket, "-b", "9999"}, 1, "balstat: no backend 9999\n"},
		{[]string{"-S", h.DebugSocket, "disable", "9999"}, 1, "balstat: no backend 9999\n"},
		{[]string{"-S", h.DebugSocket, "-j", "-b", "9999"}, 1, "balstat: no backend 9999\n"},
	} {
		out, errs, code := run1(tt.args...)
		if code != tt.code || errs != tt.want || out != "" {
			t.Errorf("balstat %v: exit %d, stderr %q, stdout %q; want %d, %q", tt.args, code, errs, out, tt.code, tt.want)
		}
	}
	// A bad command line: what is wrong, and where help is.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-b", "x"}, `bad backend ID "x"`},
		{[]string{"-b", "0"}, `bad backend ID "0"`},
		{[]string{"-r", "fe80::1%eth0"}, `bad IP address for -r: "fe80::1%eth0"`},
		{[]string{"-r", "nope"}, `bad IP address for -r: "nope"`},
		{[]string{"-w", "0"}, `bad interval for -w: "0" (want seconds, more than 0)`},
		{[]string{"-n", "3"}, `-n goes with -w and takes a count`},
		{[]string{"frobnicate"}, `unknown command "frobnicate" (want disable, drain, enable, weight, reset, health, top, cache or readers)`},
		{[]string{"disable"}, `disable takes one backend ID, got 0 arguments`},
		{[]string{"drain", "1", "2"}, `drain takes one backend ID, got 2 arguments`},
		{[]string{"disable", "x"}, `bad backend ID "x"`},
		{[]string{"reset", "now"}, `reset takes no arguments, got ["now"]`},
		{[]string{"-x"}, `flag provided but not defined: -x`},
		{[]string{"weight", "5301"}, `weight takes a backend ID and a weight, got 1 arguments`},
		{[]string{"weight", "5301", "0"}, `bad weight "0" (want 1 to 1000)`},
		{[]string{"weight", "5301", "1001"}, `bad weight "1001" (want 1 to 1000)`},
		{[]string{"weight", "x", "2"}, `bad backend ID "x"`},
	} {
		_, errs, code := run1(append([]string{"-S", h.DebugSocket}, tt.args...)...)
		if want := "balstat: " + tt.want + "\nbalstat: run 'balstat -h' for usage\n"; code != 2 || errs != want {
			t.Errorf("balstat %v: exit %d, stderr %q; want 2, %q", tt.args, code, errs, want)
		}
	}
}

// -S naming something other than a socket says what it is.
func TestNotASocket(t *testing.T) {
	dir := testbed.SocketDir(t)
	file := dir + "/file"
	os.WriteFile(file, nil, 0o644)
	for _, tt := range []struct{ path, want string }{
		{dir, dir + " is a directory, not a socket"},
		{file, file + " is a regular file, not a socket"},
		{"/dev/null", "/dev/null is a device, not a socket"},
		{file + "/sock", file + "/sock: a part of the path is not a directory"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{"-S", tt.path}, &out, &errb)
		if want := "balstat: " + tt.want + "\n"; code != 1 || errb.String() != want {
			t.Errorf("balstat -S %s: exit %d, stderr %q; want 1, %q", tt.path, code, errb.String(), want)
		}
	}
}

func TestPermissionDenied(t *testing.T) {
	h := newBed(t)
	fi, err := os.Stat(h.DebugSocket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("debug socket mode %v, want 0600", fi.Mode().Perm())
	}
	// Another user: as root, run balstat as nobody; otherwise take the
	// owner's permission away.
	cmd := exec.Command(copyExecutable(t), "-S", h.DebugSocket)
	cmd.Env = append(os.Environ(), "BALSTAT_TEST_MAIN=1")
	if os.Getuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	} else {
		os.Chmod(h.DebugSocket, 0)
		defer os.Chmod(h.DebugSocket, 0o600)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.Run()
	want := "balstat: permission denied on " + h.DebugSocket + "\n"
	if code := cmd.ProcessState.ExitCode(); code != 1 || errb.String() != want {
		t.Fatalf("exit %d, stderr %q; want 1, %q", code, errb.String(), want)
	}
}

// copyExecutable copies the test binary where any user may run it.
func copyExecutable(t *testing.T) string {
	t.Helper()
	dir := testbed.SocketDir(t)
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	path := dir + "/balstat"
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWatchShowsRates(t *testing.T) {
	h := newBed(t)
	pr, pw := io.Pipe()
	done := make(chan int)
	go func() {
		code := run(context.Background(), []string{"-S", h.DebugSocket, "-w", "0.5", "-n", "3"}, pw, io.Discard)
		pw.Close()
		done <- code
	}()
	// Queries sent as the first refresh is drawn show up as a rate in
	// the second.
	r := bufio.NewReader(pr)
	var frames []string
	var cur strings.Builder
	for {
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, "\x1b[H\x1b[2J") {
			if cur.Len() > 0 {
				frames = append(frames, cur.String())
				cur.Reset()
			} else {
				for range 5 {
					h.Who(testbed.Loopback(1), false)
				}
			}
		}
		cur.WriteString(line)
		if err != nil {
			frames = append(frames, cur.String())
			break
		}
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	if len(frames) != 3 {
		t.Fatalf("%d refreshes, want 3", len(frames))
	}
	if !strings.Contains(frames[0], "RATE") || !strings.Contains(frames[0], "3 remote peers (-b ID or -r IP lists them)") {
		t.Fatalf("first frame:\n%s", frames[0])
	}
	var rate float64
	for _, l := range strings.Split(frames[1], "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[0] == "5301" {
			fmt.Sscanf(f[4], "%f/s", &rate)
		}
	}
	if rate <= 0 {
		t.Fatalf("no query rate for 5301 in the second frame:\n%s", frames[1])
	}
}

func TestProbesColumnAndJSON(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) {
		c.Probe = server.Probe{Name: "probe.example.", Type: dns.TypeSOA}
	}, nil)
	h.StartGo("5301", "5302")
	h.Who(testbed.Loopback(1), false)
	h.Heartbeat() // and a probe to each backend
	for _, b := range h.B.Backends.All() {
		testbed.Eventually(t, "probe answered", func() bool { return b.Stats().Probes.Answered == 1 })
	}
	out, errs, code := balstat(t, h, "-b", "5301")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	golden(t, "probes", out)

	out, _, _ = balstat(t, h, "-j", "-b", "5302")
	var got debugapi.BackendsReply
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Backends) != 1 {
		t.Fatalf("-j: %v %s", err, out)
	}
	if p := got.Backends[0].Probes; p == nil || *p != (debugapi.Probes{Sent: 1, Answered: 1}) {
		t.Fatalf("probes %+v, want 1 sent and answered", p)
	}
}

func TestIPv6RemoteWithItsStandin(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) {
		c.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	}, nil)
	h.StartGo("5301", "5302")
	v6 := netip.AddrPortFrom(netip.IPv6Loopback(), h.Addr.Port())
	if _, _, err := testbed.Query(v6, netip.IPv6Loopback(), false, "who.example.", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	h.Who(testbed.Loopback(1), false)
	out, errs, code := balstat(t, h)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	golden(t, "ipv6", out)
	// -r takes an IPv6 address.
	out, _, _ = balstat(t, h, "-r", "::1")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); !strings.HasPrefix(lines[len(lines)-1], "::1 ") || len(lines) != 8 {
		t.Fatalf("balstat -r ::1:\n%s", out)
	}
}

// Hundreds of idle clients of the debug socket do not keep balstat out.
func TestIdleClientsDoNotLockOut(t *testing.T) {
	h := servertest.New(t, func(o *server.Options) {
		// Only eviction frees a slot.
		o.DebugLimits = debugapi.Limits{HeaderTimeout: time.Hour, IdleTimeout: time.Hour}
	})
	h.StartGo("5301")
	for range 300 {
		c, err := net.Dial("unix", h.DebugSocket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"-S", h.DebugSocket, "-b", "5301"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "5301  ok") {
		t.Fatalf("exit %d, %s%s", code, errb.String(), out.String())
	}
}

// TestStalledBackendShowsStalled: a backend that answers heartbeats but
// no queries is stalled: STATE says so, and the JSON gives when the
// stall began and the count.
func TestStalledBackendShowsStalled(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) { c.StallFloor = placement.DefaultStallFloor }, nil)
	h.StartGo("5301")
	fake := testbed.NewFake(t, h.Sock("5302"))
	mark := h.Logs.Mark()
	h.B.Backends.Scan()
	conn := fake.Accept(t)
	conn.Hello(t)
	h.Established(mark, 5302)
	go conn.Serve(func(f protocol.Frame) []byte {
		if f.Type == protocol.FrameClientHeartbeat {
			return protocol.AppendType(nil, protocol.FrameServerHeartbeat)
		}
		return nil // no answers
	})
	from := h.PinTo(5302)
	if _, _, err := testbed.QueryTimeout(h.Addr, from, false, "who.example.", dns.TypeTXT, 10*time.Millisecond); err == nil {
		t.Fatal("answered")
	}
	be := h.B.Backends.Get(5302)
	testbed.Eventually(t, "query outstanding", func() bool { return be.Outstanding() == 1 })
	for i := 0; !be.Stats().Stalled; i++ {
		if i > 20 {
			t.Fatal("not stalled")
		}
		h.StallStep()
	}
	out, errs, code := balstat(t, h, "-b", "5302")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	if f := strings.Fields(lines[2]); len(f) < 2 || f[0] != "5302" || f[1] != "stalled" {
		t.Fatalf("STATE not stalled:\n%s", out)
	}
	out, _, _ = balstat(t, h, "-j", "-b", "5302")
	var got debugapi.BackendsReply
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Backends) != 1 {
		t.Fatalf("-j: %v %s", err, out)
	}
	b := got.Backends[0]
	if !b.Stalled || !b.Avoided || b.Stalls != 1 || b.StallSince == nil || b.StallSince.After(h.Clock.Now()) ||
		b.StalledSeconds != h.Clock.Now().Sub(*b.StallSince).Seconds() {
		t.Fatalf("backend %+v", b)
	}
}

// TestHealth: balstat health exits 0 when bbal is ready, 1 when it is not
// or cannot be asked, and 2 for a bad minimum.
func TestHealth(t *testing.T) {
	h := servertest.New(t, nil)
	if out, _, code := balstat(t, h, "health"); code != 1 || out != "not ready: 0 of 0 backends ok, want 1\n" {
		t.Fatalf("no backends: exit %d, %q", code, out)
	}
	h.StartGo("5301")
	if out, _, code := balstat(t, h, "health"); code != 0 || out != "ready: 1 of 1 backends ok\n" {
		t.Fatalf("one backend: exit %d, %q", code, out)
	}
	if out, _, code := balstat(t, h, "health", "2"); code != 1 || out != "not ready: 1 of 1 backends ok, want 2\n" {
		t.Fatalf("min 2: exit %d, %q", code, out)
	}
	for _, bad := range [][]string{{"health", "0"}, {"health", "x"}, {"health", "1", "2"}} {
		if _, errs, code := balstat(t, h, bad...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, %q", bad, code, errs)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"-S", h.Dir + "/none.sock", "health"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "not running") {
		t.Fatalf("no bbal: exit %d, %q", code, errb.String())
	}
}

// TestTop: balstat top names the busiest client and question first, as
// a table and with -j (before or after the command), and -w refreshes.
func TestTop(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	heavy, light := testbed.Loopback(700), testbed.Loopback(701)
	for i := range 2000 {
		from, name := heavy, "Heavy.Example."
		if i%4 == 0 {
			from, name = light, "light.example."
		}
		if _, _, err := testbed.QueryTimeout(h.Addr, from, false, name, dns.TypeA, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	h.Advance(5 * time.Second) // the window whole
	out, errs, code := balstat(t, h, "top")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 8 || !strings.HasPrefix(lines[2], heavy.String()+" ") || !strings.Contains(out, "\nTOP QUESTIONS\n") {
		t.Fatalf("top:\n%s", out)
	}
	i := slices.Index(lines, "TOP QUESTIONS")
	if f := strings.Fields(lines[i+2]); len(f) != 3 || f[1] != "A" || f[2] != "heavy.example." {
		t.Fatalf("first question %q in\n%s", lines[i+2], out)
	}
	for _, args := range [][]string{{"top", "-j"}, {"-j", "top"}} {
		out, _, code := balstat(t, h, args...)
		var got debugapi.TopReply
		if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || len(got.Clients) != 2 ||
			got.Clients[0].IP != heavy.String() || got.Clients[0].Backend != 5301 || got.Names[0].Name != "heavy.example." {
			t.Fatalf("%v: exit %d, %v\n%s", args, code, err, out)
		}
	}
	out, _, code = balstat(t, h, "top", "-w", "0.01", "-n", "2")
	if code != 0 || strings.Count(out, "TOP CLIENTS") != 2 || strings.Count(out, "\x1b[H\x1b[2J") != 2 {
		t.Fatalf("-w: exit %d\n%q", code, out)
	}
	for _, bad := range [][]string{{"top", "x"}, {"top", "-w", "0"}, {"top", "-n", "2"}} {
		if _, errs, code := balstat(t, h, bad...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, %q", bad, code, errs)
		}
	}
}

// TestLimitedRemotes: balstat -q lists only the clients over their rate
// limit.
func TestLimitedRemotes(t *testing.T) {
	rate := remotes.NewRate(1, 1, 0)
	h := servertest.NewConfig(t, func(c *server.Config) { c.RateLimit = &rate }, nil)
	h.StartGo("5301")
	calm, busy := testbed.Loopback(800), testbed.Loopback(801)
	h.Who(calm, false)
	h.Who(busy, false)
	if _, _, err := testbed.QueryTimeout(h.Addr, busy, false, "who.example.", dns.TypeTXT, 50*time.Millisecond); err == nil {
		t.Fatal("a query over the limit answered")
	}
	testbed.Eventually(t, "over the limit", func() bool { in, _ := h.B.Table.Lookup(busy); return in.RateLimited == 1 })
	out, errs, code := balstat(t, h, "-q")
	if code != 0 || errs != "" || !strings.Contains(out, busy.String()) || strings.Contains(out, calm.String()) {
		t.Fatalf("exit %d %s:\n%s", code, errs, out)
	}
}
