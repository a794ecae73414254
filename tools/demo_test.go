package tools_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bbal/bbal/tools/testbed"
)

// The demo script (tools/demo.sh, `make demo`) as a new user meets it.

// demoBin builds the demo's three programs once into a directory.
var demoBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bbal-demo-bin")
	if err != nil {
		return "", err
	}
	for _, pkg := range []string{"./cmd/bbal", "./cmd/balstat", "./tools/demo-backend"} {
		cmd := exec.Command("go", "build", "-o", dir, pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", &buildError{pkg, out, err}
		}
	}
	return dir, nil
})

type buildError struct {
	pkg string
	out []byte
	err error
}

func (e *buildError) Error() string { return e.pkg + ": " + e.err.Error() + "\n" + string(e.out) }

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := demoBin(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// demo is a running demo script.
type demo struct {
	cmd    *exec.Cmd
	port   int
	stdout *testbed.Output
	stderr *testbed.Output
	dir    string // its temporary directory, once it has said it

	waitOnce sync.Once
	waited   chan struct{} // closed once the script's parent has exited
}

// wait waits, once whoever asks, for the script's parent to exit.
func (d *demo) wait() {
	d.waitOnce.Do(func() {
		d.cmd.Wait()
		close(d.waited)
	})
	<-d.waited
}

// waitFor waits up to limit for the script's parent to exit, failing
// with what the demo wrote when it does not.
func (d *demo) waitFor(t *testing.T, limit time.Duration, what string) {
	t.Helper()
	go d.wait()
	select {
	case <-d.waited:
	case <-time.After(limit):
		t.Fatalf("%s\nstderr:\n%s\nlast of stdout:\n%s", what, d.stderr.String(), tail(d.stdout.String(), 20))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freePort returns a port free for UDP and TCP on 127.0.0.1 just now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		tl.Close()
		if err == nil {
			ul.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startDemo runs the script, as `make demo` does, under a parent shell
// (so that the test can kill the parent) in a process group of its own
// (so that the test can send Ctrl-C's SIGINT to it, as a terminal does).
func startDemo(t *testing.T, port int) *demo {
	t.Helper()
	bin, err := demoBin()
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{port: port, stdout: &testbed.Output{}, stderr: &testbed.Output{}, waited: make(chan struct{})}
	d.cmd = exec.Command("sh", "-c", "tools/demo.sh; exit $?")
	d.cmd.Dir = ".."
	d.cmd.Env = append(os.Environ(), "DEMO_PORT="+strconv.Itoa(port), "DEMO_BIN="+bin)
	// Pipes of the test's own, so that Wait returns when the script's
	// parent exits, whoever else holds them.
	d.cmd.Stdout, d.cmd.Stderr = d.pipe(t, d.stdout), d.pipe(t, d.stderr)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		d.wait()
		if d.dir != "" {
			for _, pid := range processesWith(d.dir) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			os.RemoveAll(d.dir)
		}
	})
	return d
}

// pipe returns the write end of a pipe whose read end is copied to b.
func (d *demo) pipe(t *testing.T, b *testbed.Output) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(b, r)
		r.Close()
	}()
	t.Cleanup(func() { w.Close() })
	return w
}

var demoDir = regexp.MustCompile(`balstat -S (/tmp/bbal-demo\.[A-Za-z0-9]+)/bbal\.sock`)

// waitReady waits for the script to say that bbal is listening, and
// returns what it had written to stderr by then.
func (d *demo) waitReady(t *testing.T) string {
	t.Helper()
	var said string
	testbed.Eventually(t, "the demo to say it listens", func() bool {
		said = d.stderr.String()
		return strings.Contains(said, "bbal is listening on")
	})
	m := demoDir.FindStringSubmatch(said)
	if m == nil {
		t.Fatalf("no balstat line in %q", said)
	}
	d.dir = m[1]
	return said
}

// processesWith lists the processes whose command line mentions s.
func processesWith(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cl, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkGone waits for the demo's processes and directory to be gone.
func (d *demo) checkGone(t *testing.T) {
	t.Helper()
	testbed.Eventually(t, "the demo's processes to exit", func() bool { return len(processesWith(d.dir)) == 0 })
	testbed.Eventually(t, "the demo's directory to be removed", func() bool {
		_, err := os.Stat(d.dir)
		return os.IsNotExist(err)
	})
}

// records parses bbal's bunyan records from the demo's stdout.
func records(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("not a bunyan record on stdout: %q", sc.Text())
		}
		recs = append(recs, r)
	}
	return recs
}

func TestDemo(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	d := startDemo(t, freePort(t))
	d.waitReady(t)
	// The moment it says so, bbal answers, over UDP and TCP, from both
	// backends.
	server := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(d.port))
	one := testbed.MustWho(t, server, testbed.Loopback(0), false)
	if tcp := testbed.MustWho(t, server, testbed.Loopback(0), true); tcp["backend"] != one["backend"] {
		t.Fatalf("UDP went to %s, TCP to %s", one["backend"], tcp["backend"])
	}
	if two := testbed.MustWho(t, server, testbed.Loopback(1), false); two["backend"] == one["backend"] {
		t.Fatalf("both clients on %s", one["backend"])
	}

	// Ctrl-C: the terminal sends SIGINT to the foreground process group.
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT)
	d.waitFor(t, 20*time.Second, "the demo did not stop on Ctrl-C")
	d.checkGone(t)
	recs := records(t, d.stdout.String())
	if len(recs) == 0 || recs[len(recs)-1]["msg"] != "shut down" {
		t.Fatalf("bbal's last record is not \"shut down\": %v", recs)
	}
	for _, r := range recs {
		if lvl, _ := r["level"].(float64); lvl >= 50 {
			t.Errorf("error record on Ctrl-C: %v", r)
		}
	}
}

func TestDemoPortInUse(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.LocalAddr().(*net.UDPAddr).Port
	d := startDemo(t, port)
	d.waitFor(t, 20*time.Second, "the demo did not exit with its port in use")
	if code := d.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	said := d.stderr.String()
	if strings.Contains(said, "bbal is listening") {
		t.Errorf("said it listens: %q", said)
	}
	if !strings.Contains(said, "DEMO_PORT=") {
		t.Errorf("no hint to use DEMO_PORT: %q", said)
	}
	if !strings.Contains(d.stdout.String(), "address already in use") {
		t.Errorf("bbal's fatal record does not say why: %q", d.stdout.String())
	}
}

// TestDemoStopsWithItsParent: killing make (the script's parent) stops
// the script, bbal and the backends, and removes the directory.
func TestDemoStopsWithItsParent(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	d := startDemo(t, freePort(t))
	d.waitReady(t)
	if n := len(processesWith(d.dir)); n < 3 {
		t.Fatalf("%d processes mention %s, want bbal and two backends", n, d.dir)
	}
	d.cmd.Process.Signal(syscall.SIGKILL) // the parent shell alone
	d.wait()
	d.checkGone(t)
	// The script itself is gone too (it removes the directory last,
	// then exits).
	testbed.Eventually(t, "the demo script to exit", func() bool {
		for _, pid := range processesWith("tools/demo.sh") {
			if pgid, _ := syscall.Getpgid(pid); pgid == d.cmd.Process.Pid {
				return false
			}
		}
		return true
	})
}
