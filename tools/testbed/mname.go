package testbed

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MnameDir is the directory of the node-mname backend script and its
// committed package-lock.json.
func MnameDir() string { return filepath.Join(RepoRoot(), "tools", "mname-backend") }

// Mname is a running node-mname backend process.
type Mname struct {
	Path string
	Name string

	cmd    *exec.Cmd
	done   chan struct{}
	mu     sync.Mutex
	stderr strings.Builder
}

// StartMname starts the node-mname backend on socket path, answering as
// name, and waits until it listens. The process is killed at the end of
// the test. Node and the npm packages must be installed (make test does
// it); without them the test fails with what to run.
func StartMname(t testing.TB, path, name string) *Mname {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: the interoperability tests need Node.js and `make test`")
	}
	dir := MnameDir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "mname", "package.json")); err != nil {
		t.Fatalf("npm packages missing: run `make test` or `npm ci --prefix %s`", dir)
	}
	m := &Mname{Path: path, Name: name, done: make(chan struct{})}
	m.cmd = exec.Command(node, filepath.Join(dir, "backend.js"), path, name)
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	m.cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.stderr.Write(p)
	})
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && sc.Text() == "ready" {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	go func() {
		m.cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(m.Kill)
	select {
	case ok := <-ready:
		if !ok {
			<-m.done
			t.Fatalf("node-mname %s exited before it was ready: %s", name, m.Stderr())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("node-mname %s not ready after 20 s: %s", name, m.Stderr())
	}
	return m
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Stderr returns what the process wrote to stderr.
func (m *Mname) Stderr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stderr.String()
}

// Pid returns the process ID.
func (m *Mname) Pid() int { return m.cmd.Process.Pid }

func (m *Mname) signal(sig syscall.Signal) {
	if err := m.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		panic(err)
	}
}

// Kill sends SIGKILL and waits for the process to exit. The socket file
// stays behind, as after a crash.
func (m *Mname) Kill() {
	m.signal(syscall.SIGKILL)
	<-m.done
}

// Term sends SIGTERM and waits for the process to exit; it unlinks its
// socket first.
func (m *Mname) Term() {
	m.signal(syscall.SIGTERM)
	<-m.done
}

// Stop suspends the process (SIGSTOP); Cont resumes it.
func (m *Mname) Stop() { m.signal(syscall.SIGSTOP) }

// Cont resumes a stopped process.
func (m *Mname) Cont() { m.signal(syscall.SIGCONT) }
