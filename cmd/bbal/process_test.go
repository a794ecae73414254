package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// bbalCmd returns a command running bbal (this test binary in main mode).
func bbalCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "BBAL_TEST_MAIN=1")
	cmd.Env = slicesDeleteEnv(cmd.Env, "LOG_LEVEL")
	return cmd
}

func slicesDeleteEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, key+"=") {
			out = append(out, e)
		}
	}
	return out
}

func TestCommandLineErrors(t *testing.T) {
	dir := testbed.SocketDir(t)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	tests := []struct {
		args []string
		env  string
		want string
	}{
		{nil, "", "bbal: must specify socket directory (-s)"},
		{[]string{"-b", "127.0.0.1"}, "", "bbal: must specify socket directory (-s)"},
		{[]string{"-s", dir, "-z"}, "", "bbal: flag provided but not defined: -z"},
		{[]string{"-s", dir, "-c", "0"}, "", `bbal: invalid -c "0" (want ENTRIES, 8 to 4194304, and optionally /MAXTTL, seconds from 1 to 604800)`},
		{[]string{"-s", dir, "-c", "lots"}, "", `bbal: invalid -c "lots" (want ENTRIES, 8 to 4194304, and optionally /MAXTTL, seconds from 1 to 604800)`},
		{[]string{"-s", dir, "-c", "5000000"}, "", `bbal: invalid -c "5000000" (want ENTRIES, 8 to 4194304, and optionally /MAXTTL, seconds from 1 to 604800)`},
		{[]string{"-s", dir, "-c", "1000/0"}, "", `bbal: invalid -c "1000/0" (want ENTRIES, 8 to 4194304, and optionally /MAXTTL, seconds from 1 to 604800)`},
		{[]string{"-s", dir, "-c", "1000", "-x", "-1"}, "", `bbal: invalid -x "-1" (want seconds, 0 to 604800)`},
		{[]string{"-s", dir, "-c", "1000", "-x", "1e9"}, "", `bbal: invalid -x "1e9" (want seconds, 0 to 604800)`},
		{[]string{"-s", dir, "-x", "60"}, "", `bbal: -x needs -c: serve-stale answers from the answer cache`},
		{[]string{"-s", dir, "-q", "0"}, "", `bbal: invalid -q "0" (want QPS[/BURST[/SLIP]], e.g. 100 or 100/200/2: QPS above 0 up to 10000000, BURST 1 to 1048576, SLIP 0 to 100)`},
		{[]string{"-s", dir, "-q", "100/0"}, "", `bbal: invalid -q "100/0" (want QPS[/BURST[/SLIP]], e.g. 100 or 100/200/2: QPS above 0 up to 10000000, BURST 1 to 1048576, SLIP 0 to 100)`},
		{[]string{"-s", dir, "-A", "5"}, "", `bbal: invalid -A "5" (want milliseconds, 10 to 800, or 0 for no stall detection)`},
		{[]string{"-s"}, "", "bbal: flag needs an argument: -s"},
		{[]string{"-s", dir, "-l", "loud"}, "", `bbal: -l: invalid log level "loud" (want trace, debug, info, warn, error or fatal)`},
		{[]string{"-s", dir}, "LOG_LEVEL=loud", `bbal: LOG_LEVEL: invalid log level "loud" (want trace, debug, info, warn, error or fatal)`},
		{[]string{"-s", dir, "-b", "localhost"}, "", `bbal: invalid value "localhost" for flag -b: want an IPv4 or IPv6 address`},
		{[]string{"-s", dir, "-b", "fe80::1%lo"}, "", `bbal: invalid value "fe80::1%lo" for flag -b: want an IPv4 or IPv6 address`},
		{[]string{"-s", dir, "-b", "::1", "-b", "::1"}, "", `bbal: invalid value "::1" for flag -b: given twice`},
		{[]string{"-s", dir, "-6", "10.0.0.0/31"}, "", `bbal: invalid -6 "10.0.0.0/31" (want an IPv4 prefix, /1 to /30, such as 240.0.0.0/4)`},
		{[]string{"-s", dir, "-6", "fd00::/8"}, "", `bbal: invalid -6 "fd00::/8" (want an IPv4 prefix, /1 to /30, such as 240.0.0.0/4)`},
		{[]string{"-s", dir, "-b", "127.0.0.1", "-6", "127.0.0.0/8,force"}, "", `bbal: listen address 127.0.0.1 is within the stand-in range -6 127.0.0.0/8`},
		{[]string{"-s", dir, "-P", "64"}, "", `bbal: invalid -P "64": -P takes a policy, rr or least-loaded (the per-address TCP connection limit is -C)`},
		{[]string{"-s", dir, "-P", "fastest"}, "", `bbal: invalid -P "fastest" (want rr or least-loaded)`},
		{[]string{"-s", dir, "-C", "0"}, "", `bbal: invalid -C 0 (want at least 1)`},
		{[]string{"-s", dir, "-T", "8", "-C", "0"}, "", `bbal: invalid -C 0 (want at least 1)`},
		{[]string{"-s", dir, "-p", "65536"}, "", `bbal: invalid port for -p: "65536" (want 0 to 65535)`},
		{[]string{"-s", dir, "-p", "dns"}, "", `bbal: invalid port for -p: "dns" (want 0 to 65535)`},
		{[]string{"-s", dir, "extra"}, "", `bbal: unexpected argument "extra"`},
		{[]string{"-s", file}, "", "bbal: -s " + file + ": not a directory"},
		{[]string{"-s", dir, "-S", dir + "/bbal.sock"}, "", "bbal: the debug socket -S " + dir + "/bbal.sock must not be inside the backend socket directory " + dir},
		{[]string{"-s", dir, "-S", dir + "/../" + filepath.Base(dir) + "/sub/bbal.sock"}, "", "bbal: the debug socket -S " + dir + "/../" + filepath.Base(dir) + "/sub/bbal.sock must not be inside the backend socket directory " + dir},
		{[]string{"-s", dir, "-m", "9100"}, "", `bbal: invalid address for -m: "9100" (want ADDR:PORT)`},
		{[]string{"-s", dir, "-R", "0"}, "", `bbal: invalid -R 0 (want at least 1)`},
		{[]string{"-s", dir, "-M", "33"}, "", `bbal: invalid -M 33 (want 1 to 32)`},
		{[]string{"-s", dir, "-r", "0"}, "", `bbal: invalid -r "0" (want 1 to 64 UDP readers per listen address)`},
		{[]string{"-s", dir, "-r", "65"}, "", `bbal: invalid -r "65" (want 1 to 64 UDP readers per listen address)`},
		{[]string{"-s", dir, "-r", "two"}, "", `bbal: invalid -r "two" (want 1 to 64 UDP readers per listen address)`},
		{[]string{"-s", dir, "-r", "64", "-b", "127.0.0.1", "-b", "127.0.0.2", "-b", "127.0.0.3", "-b", "127.0.0.4", "-b", "127.0.0.5"}, "",
			`bbal: -r 64 readers for each of 5 listen addresses is 320 UDP sockets (want at most 256)`},
		{[]string{"-s", dir, "-T", "0"}, "", `bbal: invalid -T 0 (want at least 1)`},
		{[]string{"-s", dir, "-H", ""}, "", `bbal: -H needs a name, e.g. -H example.com/SOA (leave -H out for no health checks)`},
		{[]string{"-s", dir, "-6", "10.0.0.0/8"}, "", `bbal: -6 10.0.0.0/8 may hold real clients' addresses, whose queries would be dropped; use a range within 240.0.0.0/4, 198.18.0.0/15 or a documentation block, or write -6 10.0.0.0/8,force to use it anyway`},
		{[]string{"-s", dir, "-6", "224.0.0.0/3"}, "", `bbal: -6 224.0.0.0/3 may hold real clients' addresses, whose queries would be dropped; use a range within 240.0.0.0/4, 198.18.0.0/15 or a documentation block, or write -6 224.0.0.0/3,force to use it anyway`},
		{[]string{"-s", dir, "-6", "10.0.0.0/8,forced"}, "", `bbal: invalid -6 "10.0.0.0/8,forced" (want an IPv4 prefix, /1 to /30, such as 240.0.0.0/4)`},
		{[]string{"-s", dir, "-I", "soon"}, "", `bbal: invalid -I "soon" (want seconds, more than 0)`},
		{[]string{"-s", dir, "-L", "-1"}, "", `bbal: invalid -L "-1" (want seconds, more than 0)`},
		{[]string{"-s", dir, "-H", "a..b"}, "", `bbal: -H: invalid name "a..b" (want a domain name, e.g. example.com)`},
		{[]string{"-s", dir, "-H", "/A"}, "", `bbal: -H: invalid name "" (want a domain name, e.g. example.com)`},
		{[]string{"-s", dir, "-H", "example.com/BOGUS"}, "", `bbal: -H: invalid type "BOGUS" (want a query type, e.g. A or SOA)`},
		{[]string{"-s", dir, "-H", "example.com/AXFR"}, "", `bbal: -H: type AXFR cannot be asked in a UDP query`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " ")+tt.env, func(t *testing.T) {
			cmd := bbalCmd(tt.args...)
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit %d (%v), want 1; stderr %q", code, err, stderr.String())
			}
			if got := stderr.String(); got != tt.want+"\n" {
				t.Fatalf("stderr %q, want %q", got, tt.want+"\n")
			}
			if stdout.Len() != 0 {
				t.Fatalf("stdout %q", stdout.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	out, err := bbalCmd("-h").Output()
	if err != nil || !strings.HasPrefix(string(out), "usage: bbal -s DIR") {
		t.Fatalf("-h: %v %q", err, out)
	}
}

// process is bbal running as a child, its stdout parsed as it comes. A
// successor it hands over to writes to the same stdout.
type process struct {
	cmd  *exec.Cmd
	logs *testbed.Logs
	raw  *bytes.Buffer
	mu   sync.Mutex
	done chan struct{} // the process has exited
	read chan struct{} // stdout is closed, or the test over
}

func startProcess(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: bbalCmd(args...), logs: testbed.NewLogs(), raw: new(bytes.Buffer),
		done: make(chan struct{}), read: make(chan struct{})}
	p.cmd.Env = append(p.cmd.Env, env...)
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = w
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() {
		defer close(p.read)
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadBytes('\n')
			p.mu.Lock()
			p.raw.Write(line)
			p.mu.Unlock()
			p.logs.Write(line)
			if err != nil {
				return
			}
		}
	}()
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		out.Close()
		<-p.read
	})
	return p
}

// stdout returns what the process wrote, once its stdout is closed.
func (p *process) stdout() []byte {
	select {
	case <-p.read:
	case <-time.After(10 * time.Second):
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.raw.Bytes())
}

// wait waits up to limit for the process to exit and returns its status.
func (p *process) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(limit):
		t.Fatalf("bbal still running after %v", limit)
		return -1
	}
}

func TestBindFailureIsFatal(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			var port int
			if proto == "udp" {
				busy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer busy.Close()
				port = busy.LocalAddr().(*net.UDPAddr).Port
			} else {
				busy, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer busy.Close()
				port = busy.Addr().(*net.TCPAddr).Port
			}
			debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
			p := startProcess(t, nil, "-s", testbed.SocketDir(t), "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-S", debug)
			if code := p.wait(t, 10*time.Second); code != 1 {
				t.Fatalf("exit %d, want 1", code)
			}
			r := p.logs.Wait(t, "failed to create listen sockets", map[string]any{"level": 60, "port": port})
			if _, err := os.Stat(debug); err == nil {
				t.Fatal("debug socket left behind after a failed start")
			}
			if err := r["err"].(string); !strings.Contains(err, "address already in use") ||
				!strings.HasPrefix(err, strings.ToUpper(proto)+":") {
				t.Fatalf("err %q", err)
			}
		})
	}
}

func TestSignalsStopCleanly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := testbed.SocketDir(t)
			testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
			debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
			p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
			p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
			addr := listenAddr(t, p)
			testbed.MustWho(t, addr, testbed.Loopback(1), true)
			idle, err := net.Dial("tcp", addr.String()) // a session left open
			if err != nil {
				t.Fatal(err)
			}
			defer idle.Close()
			p.cmd.Process.Signal(sig)
			if code := p.wait(t, 5*time.Second); code != 0 {
				t.Fatalf("exit %d, want 0", code)
			}
			p.logs.Wait(t, "shut down", nil)
			if _, err := os.Stat(debug); err == nil {
				t.Fatal("debug socket left behind after shutdown")
			}
			// Nothing listens any more.
			if c, err := net.Dial("tcp", addr.String()); err == nil {
				c.Close()
				t.Fatal("still accepting after shutdown")
			}
		})
	}
}

func listenAddr(t *testing.T, p *process) netip.AddrPort {
	t.Helper()
	r := p.logs.Wait(t, "listening for UDP packets", nil)
	port := int(r["port"].(float64))
	return netip.AddrPortFrom(netip.MustParseAddr(r["address"].(string)), uint16(port))
}

var timeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

func TestLogsAreBunyan(t *testing.T) {
	dir := testbed.SocketDir(t)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	os.WriteFile(filepath.Join(dir, "not-a-socket"), nil, 0o644)
	testbed.StaleSocket(t, filepath.Join(dir, "5302")) // for an error record
	p := startProcess(t, []string{"LOG_LEVEL=debug"}, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-l", "error",
		"-S", filepath.Join(testbed.SocketDir(t), "debug.sock"))
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	addr := listenAddr(t, p)
	testbed.MustWho(t, addr, testbed.Loopback(1), false)
	testbed.MustWho(t, addr, testbed.Loopback(2), true)
	p.logs.Wait(t, "not a socket (ignored)", map[string]any{"socket_path": filepath.Join(dir, "not-a-socket")})
	p.logs.Wait(t, "failed to connect", map[string]any{"be_id": 5302})
	big, _ := net.Dial("udp", addr.String())
	big.Write(make([]byte, 2000))
	big.Close()
	p.logs.Wait(t, "dropping oversized UDP packet", nil)
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 5*time.Second)

	out := p.stdout()
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	levels := map[float64]bool{}
	for _, line := range lines {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if r["v"] != float64(0) || r["name"] != "mname-balancer" || r["pid"] != float64(p.cmd.Process.Pid) {
			t.Fatalf("core fields wrong: %q", line)
		}
		if h, _ := r["hostname"].(string); h == "" {
			t.Fatalf("no hostname: %q", line)
		}
		if ts, _ := r["time"].(string); !timeRE.MatchString(ts) {
			t.Fatalf("time %q not ISO 8601 UTC with milliseconds", r["time"])
		}
		if m, _ := r["msg"].(string); m == "" {
			t.Fatalf("no msg: %q", line)
		}
		lvl, ok := r["level"].(float64)
		if !ok || lvl < 20 || lvl > 60 || int(lvl)%10 != 0 {
			t.Fatalf("level %v: LOG_LEVEL=debug should override -l error", r["level"])
		}
		levels[lvl] = true
	}
	if !levels[20] || !levels[30] || !levels[40] || !levels[50] {
		t.Fatalf("levels seen %v, want debug, info, warn and error records", levels)
	}
	for _, key := range []string{`"be_id":5301`, `"be_path":"` + filepath.Join(dir, "5301") + `"`, `"remote_ip":"127.0.0.2"`, `"conn_id":1`, `"backend":5301`, `"remote_port":`} {
		if !bytes.Contains(out, []byte(key)) {
			t.Fatalf("no record with %s", key)
		}
	}

	// The bunyan CLI, in strict mode, renders every line.
	bunyan := filepath.Join(testbed.MnameDir(), "node_modules", ".bin", "bunyan")
	if _, err := os.Stat(bunyan); err != nil {
		t.Fatalf("bunyan CLI missing: run `make test` or `npm ci --prefix %s`", testbed.MnameDir())
	}
	cmd := exec.Command(bunyan, "--strict", "--no-color", "-o", "short")
	cmd.Stdin = bytes.NewReader(out)
	rendered, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bunyan: %v\n%s", err, rendered)
	}
	// One line per record, plus indented continuation lines for
	// multi-line values such as err.
	records := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{3}Z `).FindAll(rendered, -1)
	if len(records) != len(lines) {
		t.Fatalf("bunyan --strict rendered %d of %d records:\n%s", len(records), len(lines), rendered)
	}
	for i, want := range []string{"DEBUG", "INFO", "WARN", "ERROR"} {
		if !strings.Contains(string(rendered), want+" mname-balancer: ") {
			t.Fatalf("no %s record rendered (%d)", want, i)
		}
	}
	if !strings.Contains(string(rendered), "backend socket established (be_id=5301") {
		t.Fatalf("rendering lacks fields:\n%s", rendered)
	}
}

func TestSecondBbalOnTheSameDebugSocketFails(t *testing.T) {
	dir := testbed.SocketDir(t)
	debug := filepath.Join(testbed.SocketDir(t), "bbal.sock")
	first := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug, "-m", "127.0.0.1:0")
	first.logs.Wait(t, "debug socket ready", nil)
	if fi, err := os.Stat(debug); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("debug socket: %v %v", fi, err)
	}

	second := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
	if code := second.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("second bbal exited %d, want 1", code)
	}
	r := second.logs.Wait(t, "failed to create debug socket", map[string]any{"level": 60, "path": debug})
	if want := debug + ": debug socket is in use by another process"; r["err"] != want {
		t.Fatalf("err %q, want %q", r["err"], want)
	}

	// The first is untouched: its socket answers, and so do its metrics
	// on TCP (-m).
	c := debugapi.NewClient(debug)
	defer c.Close()
	if _, err := c.Stats(context.Background()); err != nil {
		t.Fatalf("first bbal's debug socket: %v", err)
	}
	m := first.logs.Wait(t, "serving metrics", nil)
	resp, err := http.Get("http://" + m["address"].(string) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("bbal_udp_received_packets_total 0")) {
		t.Fatalf("metrics on TCP: %d\n%s", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + m["address"].(string) + "/v1/stats")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Fatalf("the TCP metrics listener serves /v1/stats: %d", resp.StatusCode)
		}
	}
	first.cmd.Process.Signal(syscall.SIGTERM)
	first.wait(t, 5*time.Second)
	if _, err := os.Stat(debug); err == nil {
		t.Fatal("debug socket left behind after shutdown")
	}
}

// cpuSeconds returns the CPU time process pid has used.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

// spin busy-loops on a thread of its own for d of real time and returns
// the CPU seconds that thread got: what a thread of bbal's spinning over
// the same span would cost, on this machine under its load of the
// moment.
func spin(d time.Duration) float64 {
	got := make(chan float64)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r0, r1 unix.Rusage
		unix.Getrusage(unix.RUSAGE_THREAD, &r0)
		for start := time.Now(); time.Since(start) < d; {
		}
		unix.Getrusage(unix.RUSAGE_THREAD, &r1)
		cpu := func(r *unix.Rusage) int64 { return r.Utime.Nano() + r.Stime.Nano() }
		got <- float64(cpu(&r1)-cpu(&r0)) / 1e9
	}()
	return <-got
}

func TestAcceptFailuresBackOff(t *testing.T) {
	dir := testbed.SocketDir(t)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	p := startProcess(t, []string{"BBAL_TEST_NOFILE=40"}, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	addr := listenAddr(t, p)
	start := time.Now() // no accept failed before
	// Each connection costs bbal two descriptors: soon accept fails with
	// EMFILE while connections wait in the backlog.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 60; i++ {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	r := p.logs.Wait(t, "incoming TCP accept failure", nil)
	if !strings.Contains(r["err"].(string), "too many open files") {
		t.Fatalf("accept failed with %q", r["err"])
	}
	// Backing off, not spinning: over two seconds of EMFILE the process
	// uses a small part of the CPU that a thread spinning over the same
	// span gets on this machine, however loaded.
	cpu0 := cpuSeconds(t, p.cmd.Process.Pid)
	spun := spin(2 * time.Second) // the span measured, not synchronisation
	if used := cpuSeconds(t, p.cmd.Process.Pid) - cpu0; used > spun/4 {
		t.Fatalf("%.2f s of CPU in 2 s of accept failures (a spinning thread got %.2f s): spinning", used, spun)
	}
	if n := p.logs.Count("incoming TCP accept failure", nil); n > 1 {
		t.Fatalf("accept failure logged %d times in 2 s", n)
	}
	// Descriptors freed, service resumes.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	testbed.Eventually(t, "TCP served again", func() bool {
		_, err := testbed.WhoTimeout(addr, testbed.Loopback(5), true, 500*time.Millisecond)
		return err == nil
	})
	// And the failures were no more than the back-off allows, whatever
	// the load (a slow machine only waits longer): each waits at least
	// 5 ms (doubling from there while accepts fail, back to 5 ms after
	// one succeeds, as one does whenever a session's descriptors are
	// freed), while a loop without back-off fails every few
	// microseconds.
	episode := time.Since(start)
	c := debugapi.NewClient(debug)
	defer c.Close()
	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if most := uint64(episode/(5*time.Millisecond)) + 1; st.TCP.AcceptErrors == 0 || st.TCP.AcceptErrors > most {
		t.Fatalf("%d accept failures in %v, at most %d with back-off", st.TCP.AcceptErrors, episode, most)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 5*time.Second)
}

func TestIdleWithNoBackendsCostsNothing(t *testing.T) {
	dir := testbed.SocketDir(t)
	// A socket that refuses connections: bbal retries with back-off.
	ln, _ := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "5301"), Net: "unix"})
	ln.SetUnlinkOnClose(false)
	ln.Close()
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-F", "-S", debug)
	p.logs.Wait(t, "failed to connect", map[string]any{"be_id": 5301})
	addr := listenAddr(t, p)
	r, _, err := testbed.QueryTimeout(addr, testbed.Loopback(1), false, "x.example.", 1, time.Second)
	if err != nil || r.Rcode != 2 {
		t.Fatalf("-F with no backend: %v %v, want SERVFAIL", r, err)
	}
	c := debugapi.NewClient(debug)
	defer c.Close()
	attempts := func() uint64 {
		bs, err := c.Backends(context.Background())
		if err != nil || len(bs.Backends) != 1 {
			t.Fatalf("backends %+v: %v", bs, err)
		}
		return bs.Backends[0].ConnectAttempts
	}
	// Over two seconds, a small part of the CPU that a thread spinning
	// over the same span gets on this machine, however loaded, and the
	// connection attempts that the back-off allows (a second after the
	// first failure, 2 s more after each next one): a retry loop without
	// back-off would make thousands.
	a0, start, cpu0 := attempts(), time.Now(), cpuSeconds(t, p.cmd.Process.Pid)
	spun := spin(2 * time.Second) // the span measured, not synchronisation
	used, span := cpuSeconds(t, p.cmd.Process.Pid)-cpu0, time.Since(start)
	if used > spun/10 {
		t.Fatalf("%.2f s of CPU in 2 s with no backend up (a spinning thread got %.2f s)", used, spun)
	}
	if n, most := attempts()-a0, uint64(span/time.Second)+1; n > most {
		t.Fatalf("%d connection attempts in %v, at most %d with back-off", n, span, most)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 5*time.Second)
}

func TestRunAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	dir := testbed.SocketDir(t)
	os.Chmod(dir, 0o755)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	os.Chmod(filepath.Join(dir, "5301"), 0o777) // nobody must be able to connect
	// The debug socket's directory belongs to the user, so that it can
	// remove the socket at exit.
	debugDir := testbed.SocketDir(t)
	os.Chown(debugDir, 65534, 65534)
	debug := filepath.Join(debugDir, "debug.sock")
	p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug, "-u", "nobody")
	p.logs.Wait(t, "running as user", map[string]any{"user": "nobody", "uid": 65534})
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	status, _ := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/status")
	for _, field := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534", "Groups:\t65534"} {
		if !strings.Contains(string(status), field) {
			t.Fatalf("process status lacks %q:\n%s", field, status)
		}
	}
	fi, err := os.Stat(debug)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("debug socket owned by %d, mode %v", st.Uid, fi.Mode().Perm())
	}
	testbed.MustWho(t, listenAddr(t, p), testbed.Loopback(1), false)
	if p.logs.Count("the debug socket's directory is not writable by the user: the socket will stay behind at exit (a new bbal replaces it)", nil) != 0 {
		t.Fatal("warned about a writable directory")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(debug); err == nil {
		t.Fatal("debug socket left behind")
	}
}

func TestRunAsUnknownUserFails(t *testing.T) {
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	p := startProcess(t, nil, "-s", testbed.SocketDir(t), "-b", "127.0.0.1", "-p", "0", "-S", debug, "-u", "no-such-user-here")
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	p.logs.Wait(t, "failed to drop privileges", map[string]any{"level": 60, "user": "no-such-user-here"})
	if _, err := os.Stat(debug); err == nil {
		t.Fatal("debug socket left behind")
	}
}

func TestZeroDowntimeRestart(t *testing.T) {
	dir := testbed.SocketDir(t)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	testbed.StartGo(t, filepath.Join(dir, "5302"), "two")
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	// Two addresses of two readers each: all four sockets are handed
	// over, and an IPv6 client keeps its stand-in.
	p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-b", "::1", "-p", "0", "-S", debug, "-r", "2")
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5302})
	addr := listenAddr(t, p)
	addr6 := netip.AddrPortFrom(netip.IPv6Loopback(), addr.Port())

	// Load: clients asking in a loop over UDP, and over TCP on a new
	// connection each time, each query waited for (up to 2 s).
	type result struct {
		client  int
		tcp     bool
		backend string
		err     error
		at      time.Time
	}
	results := make(chan result, 100000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	standins := make(chan string, 100000)
	for i := range 25 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tcp := i%4 == 3
			for {
				select {
				case <-stop:
					return
				default:
				}
				if i == 24 { // the IPv6 client
					r, _, err := testbed.QueryTimeout(addr6, netip.IPv6Loopback(), false, "who.example.", dns.TypeTXT, 2*time.Second)
					var got map[string]string
					if err == nil {
						got, err = dnsbackend.TXTFields(r)
						standins <- netip.MustParseAddrPort(got["client"]).Addr().String()
					}
					results <- result{client: i, backend: got["backend"], err: err, at: time.Now()}
					continue
				}
				got, err := testbed.WhoTimeout(addr, testbed.Loopback(10+i), tcp, 2*time.Second)
				results <- result{client: i, tcp: tcp, backend: got["backend"], err: err, at: time.Now()}
			}
		}()
	}
	time.Sleep(time.Second) // load before the restart: the span is the test's
	p.cmd.Process.Signal(syscall.SIGUSR2)
	r := p.logs.Wait(t, "serving: took over from the previous process", nil)
	newPid := int(r["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(newPid, syscall.SIGKILL) })
	if r["backends_up"] != float64(2) {
		t.Fatalf("took over with %v backends up", r["backends_up"])
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("the old process exited %d", code)
	}
	p.logs.Wait(t, "exiting after the handover", map[string]any{"pid": p.cmd.Process.Pid})
	time.Sleep(time.Second) // load after the restart
	close(stop)
	wg.Wait()
	close(results)

	byClient := map[int]string{}
	n := 0
	for res := range results {
		n++
		if res.err != nil {
			t.Fatalf("client %d (tcp %v) lost a query across the restart: %v", res.client, res.tcp, res.err)
		}
		// The remote map came across: a client keeps its backend.
		if prev, ok := byClient[res.client]; ok && prev != res.backend {
			t.Fatalf("client %d moved from %s to %s across the restart", res.client, prev, res.backend)
		}
		byClient[res.client] = res.backend
	}
	t.Logf("%d queries, none lost; new pid %d", n, newPid)
	close(standins)
	seen := map[string]bool{}
	for s := range standins {
		seen[s] = true
	}
	if len(seen) != 1 {
		t.Fatalf("the IPv6 client was seen as %v, want one stand-in throughout", seen)
	}

	// The new process serves the debug socket, and stops cleanly.
	c := debugapi.NewClient(debug)
	defer c.Close()
	st, err := c.Stats(context.Background())
	if err != nil || st.Remotes < 24 {
		t.Fatalf("new process's stats: %+v, %v", st, err)
	}
	if len(st.Readers) != 4 || st.Readers[0].Datagrams == 0 || st.Readers[2].Datagrams == 0 || st.Readers[1].Retired ||
		st.Readers[3].Retired || st.Readers[3].Address != addr6.String() {
		t.Fatalf("new process's readers: %+v, want two for each address, the first of each reading", st.Readers)
	}
	syscall.Kill(newPid, syscall.SIGTERM)
	testbed.Eventually(t, "new process gone", func() bool { return syscall.Kill(newPid, 0) != nil })
	if _, err := os.Stat(debug); err == nil {
		t.Fatal("debug socket left behind by the new process")
	}
}

// TestStandinRangeFlag: -6 takes reserved, benchmarking and
// documentation space as it is, and any other range only when forced.
func TestStandinRangeFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want string // the range taken; "" for refused
	}{
		{"240.0.0.0/4", "240.0.0.0/4"},
		{"250.1.2.3/16", "250.1.0.0/16"},
		{"198.18.0.0/15", "198.18.0.0/15"},
		{"198.19.4.0/24", "198.19.4.0/24"},
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"203.0.113.0/26", "203.0.113.0/26"},
		{"10.0.0.0/8", ""},
		{"100.64.0.0/10", ""},
		{"192.0.0.0/16", ""}, // wider than the documentation block in it
		{"0.0.0.0/1", ""},
		{"10.0.0.0/8,force", "10.0.0.0/8"},
		{"100.64.0.0/10,force", "100.64.0.0/10"},
	} {
		cfg, err := parseArgs([]string{"-s", "/tmp", "-6", tt.arg}, func(string) string { return "" })
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("-6 %s taken as %v, want it refused", tt.arg, cfg.standins)
		case tt.want != "" && (err != nil || cfg.standins.String() != tt.want):
			t.Errorf("-6 %s: %v, %v; want %s", tt.arg, cfg.standins, err, tt.want)
		}
	}
}

// TestMissingDebugSocketDirectory: bbal makes the -S socket's directory
// when it is missing (/var/run/bbal after a reboot), and says plainly when
// it cannot.
func TestMissingDebugSocketDirectory(t *testing.T) {
	dir := testbed.SocketDir(t)
	run := filepath.Join(testbed.SocketDir(t), "run", "bbal")
	debug := filepath.Join(run, "bbal.sock")
	p := startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
	p.logs.Wait(t, "created the debug socket's directory", map[string]any{"path": run})
	p.logs.Wait(t, "debug socket ready", nil)
	c := debugapi.NewClient(debug)
	defer c.Close()
	if _, err := c.Stats(context.Background()); err != nil {
		t.Fatalf("debug socket in the directory made: %v", err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A directory that cannot be made: a file stands in the way.
	file := filepath.Join(testbed.SocketDir(t), "file")
	os.WriteFile(file, nil, 0o644)
	debug = filepath.Join(file, "bbal", "bbal.sock")
	p = startProcess(t, nil, "-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug)
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	r := p.logs.Wait(t, "failed to create debug socket", map[string]any{"level": 60, "path": debug})
	if err, _ := r["err"].(string); !strings.HasPrefix(err, "the debug socket's directory "+filepath.Dir(debug)+" is missing and could not be created: ") {
		t.Fatalf("err %q", err)
	}
}
