package scale_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test's kit: network namespaces, commands in them, processes that
// are stopped when the test ends, and polling with a deadline.

// nsPrefix starts the name of every namespace the test makes; the
// process id after it tells a live run's namespaces from a dead one's.
const nsPrefix = "bbs-"

// run runs a command to completion, failing the test with its output if
// it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipBatch runs ip's commands (one a line) in namespace ns.
func ipBatch(t testing.TB, ns string, cmds []string) {
	t.Helper()
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s -batch: %v\n%s\n%s", ns, err, strings.Join(cmds, "\n"), out)
	}
}

// sysctl sets a sysctl of namespace ns, key written as a path under
// /proc/sys (net/ipv4/ip_forward), and reads it back.
func sysctl(t testing.TB, ns, key, value string) {
	t.Helper()
	path := "/proc/sys/" + key
	got := run(t, "ip", "netns", "exec", ns, "sh", "-c", `echo "$1" >"$2" && cat "$2"`, "sh", value, path)
	if strings.TrimSpace(got) != value {
		t.Fatalf("%s in %s: set %s, reads %q", key, ns, value, got)
	}
}

// addNetns makes namespace name, with its loopback up, and deletes it
// (and ends what still runs in it) when the test ends.
func addNetns(t testing.TB, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { delNetns(t, name) })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// delNetns ends the processes in namespace name and deletes it, and
// with it its interfaces (a veth's peer goes too).
func delNetns(t testing.TB, name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v\n%s", name, err, out)
	}
}

// removeLeftovers deletes what earlier runs that died before their
// cleanup left: the namespaces and temporary directories named with this
// test's prefix whose process is gone.
func removeLeftovers(t testing.TB) {
	t.Helper()
	namespaces, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range namespaces {
		if deadRun(e.Name()) {
			t.Logf("deleting namespace %s, left by an earlier run", e.Name())
			delNetns(t, e.Name())
		}
	}
	dirs, err := os.ReadDir(os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range dirs {
		if e.IsDir() && deadRun(e.Name()) {
			t.Logf("deleting %s, left by an earlier run", e.Name())
			os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// deadRun reports whether name is one of this test's, bbs-PID-…, from a
// process that is gone.
func deadRun(name string) bool {
	rest, ok := strings.CutPrefix(name, nsPrefix)
	if !ok {
		return false
	}
	pid, _, _ := strings.Cut(rest, "-")
	if _, err := strconv.Atoi(pid); err != nil {
		return false
	}
	_, err := os.Stat("/proc/" + pid)
	return errors.Is(err, os.ErrNotExist)
}

// veth joins namespaces a and b by a veth pair, named na in a and nb in
// b, made in them directly (nothing appears in the test's namespace),
// with the given addresses, up.
func veth(t testing.TB, a, na, addrA, b, nb, addrB string) {
	t.Helper()
	run(t, "ip", "link", "add", na, "netns", a, "type", "veth", "peer", "name", nb, "netns", b)
	ipBatch(t, a, []string{"addr add " + addrA + " dev " + na, "link set " + na + " up"})
	ipBatch(t, b, []string{"addr add " + addrB + " dev " + nb, "link set " + nb + " up"})
}

// inNetns runs f on an OS thread moved into namespace ns, then moves the
// thread back. Sockets opened in f stay in ns; f must open them itself,
// not in goroutines of its own.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(self)
		target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// The thread stays locked, and so ends with this goroutine.
			errc <- fmt.Errorf("setns back from %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// proc is a process started in a namespace, its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // of Wait, once done is closed
}

// start starts argv in namespace ns, its output appended to dir/name.log,
// and stops it when the test ends.
func start(t testing.TB, dir, ns, name string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	// ip netns exec execs argv, so the signal reaches it; it is a
	// safety net should the test binary die before its cleanup.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop ends the process with SIGTERM, or SIGKILL when it has not ended
// 10 s later, and returns how it exited.
func (p *proc) stop(t testing.TB) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not end 10 s after SIGTERM: killed", p.name)
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll checks cond every 20 ms until it holds and returns how long that
// took, failing the test, with what cond last said, after limit. It is
// for the state of the kernel and of daemons, which announce no event.
func poll(t testing.TB, what string, limit time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	begin := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(begin)
		}
		if time.Since(begin) > limit {
			t.Fatalf("timed out after %v waiting for %s; last: %s", limit, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// firstLine returns the first line of the file at path.
func firstLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return "", err
	}
	return string(bytes.TrimSpace(line)), nil
}
