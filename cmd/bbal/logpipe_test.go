package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
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

	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/tools/testbed"
)

// logPipe is the read end of a pipe on bbal's stdout or stderr, parsed as
// it comes, whose reader the test can pause, resume or close.
type logPipe struct {
	logs   *testbed.Logs
	r      *os.File
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	done   chan struct{} // the reader has returned
}

// newLogPipe returns the pipe and its write end, for the child.
func newLogPipe(t *testing.T) (*logPipe, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &logPipe{logs: testbed.NewLogs(), r: r, done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	go p.read()
	t.Cleanup(func() {
		p.resume()
		r.Close()
		<-p.done
	})
	return p, w
}

func (p *logPipe) read() {
	defer close(p.done)
	br := bufio.NewReader(p.r)
	for {
		line, err := br.ReadBytes('\n')
		p.logs.Write(line)
		if err != nil {
			return
		}
		p.mu.Lock()
		for p.paused {
			p.cond.Wait()
		}
		p.mu.Unlock()
	}
}

// pause stops reading after the current line: the pipe fills.
func (p *logPipe) pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

func (p *logPipe) resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	p.cond.Broadcast()
}

// queued returns the bytes in the pipe, and its capacity.
func (p *logPipe) queued(t *testing.T) (n, size int) {
	t.Helper()
	rc, err := p.r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		if n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ); err == nil { // FIONREAD
			size, err = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, size
}

// exit closes the read end, as a log reader that exits does: bbal's next
// write to the pipe fails with EPIPE.
func (p *logPipe) exit() {
	p.r.Close()
	<-p.done
}

// startPiped starts bbal with a Go backend, the debug socket and the
// extra arguments, and waits until it serves.
func startPiped(t *testing.T, args ...string) (*process, *logPipe, *logPipe, string) {
	t.Helper()
	dir := testbed.SocketDir(t)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	debug := filepath.Join(testbed.SocketDir(t), "debug.sock")
	stdout, wout := newLogPipe(t)
	stderr, werr := newLogPipe(t)
	p := &process{cmd: bbalCmd(append([]string{"-s", dir, "-b", "127.0.0.1", "-p", "0", "-S", debug}, args...)...),
		logs: stdout.logs, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = wout, werr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wout.Close()
	werr.Close()
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	p.logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	p.logs.Wait(t, "debug socket ready", nil)
	return p, stdout, stderr, debug
}

// exited says how the process ended, if it has.
func (p *process) exited() string {
	select {
	case <-p.done:
		return "; bbal exited: " + p.cmd.ProcessState.String()
	default:
		return ""
	}
}

// metric returns the value of one sample of the debug socket's /metrics.
func metric(t *testing.T, debug, sample string) float64 {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", debug)
		}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://bbal/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in the metrics:\n%s", sample, body)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// droppedLogs returns bbal_log_records_dropped_total for a reason.
func droppedLogs(t *testing.T, debug, reason string) float64 {
	t.Helper()
	return metric(t, debug, `bbal_log_records_dropped_total{reason="`+reason+`"}`)
}

func stats(t *testing.T, debug string) debugapi.Stats {
	t.Helper()
	c := debugapi.NewClient(debug)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("debug socket: %v", err)
	}
	return st
}

// askKnown has the known clients (1 to 4) ask ten times each, and fails
// the test on any query unanswered.
func askKnown(t *testing.T, p *process) {
	t.Helper()
	addr := listenAddr(t, p)
	for i := 1; i <= 4; i++ {
		for q := range 10 {
			if _, err := testbed.WhoTimeout(addr, testbed.Loopback(i), false, 2*time.Second); err != nil {
				t.Fatalf("known client %d: query %d of 10: %v%s", i, q+1, err, p.exited())
			}
		}
	}
}

// load sends queries from new clients until stop is called.
func load(p *process, t *testing.T) (stop func()) {
	t.Helper()
	addr := listenAddr(t, p)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				testbed.QueryTimeout(addr, testbed.Loopback(1000+g*100000+n), false, "x.example.", 1, 200*time.Millisecond)
			}
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

// A log reader that stops reading (a stuck `| bunyan`) does not stop DNS:
// records are dropped and counted, and a record says how many once the
// reader reads again.
func TestStuckLogReaderDoesNotStopDNS(t *testing.T) {
	p, stdout, _, debug := startPiped(t, "-l", "trace") // a record for every packet
	for i := 1; i <= 4; i++ {
		testbed.MustWho(t, listenAddr(t, p), testbed.Loopback(i), false)
	}
	stdout.pause()
	stop := load(p, t)
	defer stop()
	// The pipe fills: past half its size, it grows no more for 200 ms
	// while every query is logged.
	deadline := time.Now().Add(30 * time.Second)
	for last, still := 0, 0; still < 20; {
		n, size := stdout.queued(t)
		if n > size/2 && n == last {
			still++
		} else {
			still = 0
		}
		last = n
		if time.Now().After(deadline) {
			t.Fatalf("the pipe holds %d bytes of %d after 30 s", n, size)
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel's pipe
	}
	// ... known clients are answered ...
	askKnown(t, p)
	// ... records are dropped, and counted, and the debug socket answers.
	for droppedLogs(t, debug, "full") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no log records dropped with the log's reader stopped")
		}
		time.Sleep(10 * time.Millisecond) // polling a counter
	}
	askKnown(t, p)
	if st := stats(t, debug); st.BackendsOK != 1 {
		t.Fatalf("stats: %d backends ok", st.BackendsOK)
	}
	stop()

	stdout.resume()
	stdout.logs.Wait(t, "log records dropped", map[string]any{"level": 40})
	// Every drop is in a record: their sum is what the metric counts.
	testbed.Eventually(t, "the drops all reported", func() bool {
		var sum float64
		for _, r := range stdout.logs.Records() {
			if r.Msg() == "log records dropped" {
				sum += r["dropped"].(float64)
			}
		}
		return sum == droppedLogs(t, debug, "full")
	})
	var notices []string
	recs := stdout.logs.Records()
	lines := stdout.logs.Lines() // in step with recs, and perhaps longer
	for i, r := range recs {
		switch r.Msg() {
		case "UNPARSABLE":
			t.Fatalf("not a bunyan record: %q", r["line"])
		case "log records dropped":
			notices = append(notices, lines[i])
		}
	}
	// The notices are bunyan records too.
	bunyan := exec.Command(filepath.Join(testbed.MnameDir(), "node_modules", ".bin", "bunyan"), "--strict", "--no-color", "-o", "short")
	bunyan.Stdin = strings.NewReader(strings.Join(notices, "\n") + "\n")
	rendered, err := bunyan.CombinedOutput()
	if n := strings.Count(string(rendered), "WARN mname-balancer: log records dropped"); err != nil || n != len(notices) {
		t.Fatalf("bunyan --strict rendered %d of %d notices (%v):\n%s", n, len(notices), err, rendered)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	stdout.logs.Wait(t, "shut down", nil)
}

// A log reader that exits does not kill bbal: the log goes on on stderr,
// or is counted as lost when stderr is gone too.
func TestExitedLogReaderDoesNotKill(t *testing.T) {
	for _, stderrOpen := range []bool{true, false} {
		t.Run("stderr open "+strconv.FormatBool(stderrOpen), func(t *testing.T) {
			p, stdout, stderr, debug := startPiped(t)
			addr := listenAddr(t, p)
			stdout.exit()
			if !stderrOpen {
				stderr.exit()
			}
			// Each new client is a record ("new remote peer"), which
			// finds the pipe closed.
			for i := 1; i <= 4; i++ {
				if _, err := testbed.WhoTimeout(addr, testbed.Loopback(i), false, 2*time.Second); err != nil {
					t.Fatalf("client %d after the log's reader exited: %v%s", i, err, p.exited())
				}
			}
			askKnown(t, p)
			if stderrOpen {
				stderr.logs.Wait(t, "log output failed: writing to stderr", map[string]any{"err": "write /dev/stdout: broken pipe"})
				stderr.logs.Wait(t, "new remote peer", map[string]any{"remote_ip": testbed.Loopback(4).String()})
			} else {
				testbed.Eventually(t, "records counted as lost", func() bool {
					return droppedLogs(t, debug, "write_error") > 0
				})
			}
			p.cmd.Process.Signal(syscall.SIGTERM)
			if code := p.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("exit %d, want 0", code)
			}
			if _, err := os.Stat(debug); err == nil {
				t.Fatal("debug socket left behind")
			}
			if stderrOpen {
				stderr.logs.Wait(t, "shut down", nil)
			}
		})
	}
}

// SIGHUP (an operator's reload, a lost terminal) rescans the socket
// directory and carries on.
func TestSIGHUPRescans(t *testing.T) {
	p, stdout, _, debug := startPiped(t)
	addr := listenAddr(t, p)
	testbed.MustWho(t, addr, testbed.Loopback(1), false)
	p.cmd.Process.Signal(syscall.SIGHUP)
	stdout.logs.Wait(t, "rescanning the socket directory", map[string]any{"signal": "hangup"})
	askKnown(t, p)
	if st := stats(t, debug); st.BackendsOK != 1 {
		t.Fatalf("after SIGHUP: %d backends ok", st.BackendsOK)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	stdout.logs.Wait(t, "shut down", nil)
	if _, err := os.Stat(debug); err == nil {
		t.Fatal("debug socket left behind")
	}
}
