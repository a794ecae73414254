package debugapi_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
)

// patientLimits never time a client out: only eviction frees a slot.
var patientLimits = debugapi.Limits{MaxConns: 16, HeaderTimeout: time.Hour, WriteTimeout: time.Hour, IdleTimeout: time.Hour}

// answers gets the stats from sock, failing the test when there is no
// answer within a generous bound.
func answers(t *testing.T, sock string) debugapi.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := debugapi.NewClient(sock)
	defer c.Close()
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("no answer on the debug socket: %v", err)
	}
	return st
}

// dialIdle opens n connections to sock that send nothing, closed at the
// end of the test.
func dialIdle(t *testing.T, sock string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

// closed reports whether the server closed c (it never sends on an idle
// connection).
func closed(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

func TestIdleConnectionsAreEvicted(t *testing.T) {
	h := servertest.New(t, func(o *server.Options) { o.DebugLimits = patientLimits })
	h.StartGo("5301")
	conns := dialIdle(t, h.DebugSocket, 300)
	st := answers(t, h.DebugSocket)
	// 16 slots: each connection after the 16th evicted the oldest,
	// and the client's one more.
	if st.Debug.Evicted != 300-16+1 || st.Debug.Refused != 0 || st.Debug.Open != 16 {
		t.Errorf("debug connections %+v, want 285 evicted, 16 open", st.Debug)
	}
	if !closed(conns[0]) || !closed(conns[284]) {
		t.Error("the oldest idle connections are not the ones closed")
	}
	mf := metrics(t, h.DebugSocket)
	if v := value(t, mf, "bbal_debug_connections_evicted_total", nil); v < 285 {
		t.Errorf("bbal_debug_connections_evicted_total = %v", v)
	}
	value(t, mf, "bbal_debug_connections_refused_total", nil)
	value(t, mf, "bbal_debug_connections", nil)
	// Logged once per 10 s, with the count of those held back.
	if n := h.Logs.Count("debug socket connection evicted for a new one", nil); n != 1 {
		t.Errorf("eviction logged %d times, want once", n)
	}
	h.Advance(10 * time.Second)
	mark := h.Logs.Mark()
	dialIdle(t, h.DebugSocket, 3)
	r := h.Logs.WaitAfter(t, mark, "debug socket connection evicted for a new one", nil)
	if n, _ := r["suppressed"].(float64); n < 284 {
		t.Errorf("%v evictions said held back, want at least 284", r["suppressed"])
	}
}

// A client that fills the listen backlog before bbal accepts a thing
// does not keep another out for long: every connection is accepted, the
// idle ones evicted.
func TestFullBacklog(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	sock := filepath.Join(testbed.SocketDir(t), "full.sock")
	ln, err := debugapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < 20_000 {
		c, err := net.Dial("unix", sock)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if len(conns) == 20_000 {
		t.Fatal("the backlog never filled")
	}
	t.Logf("backlog full at %d connections", len(conns))
	src := debugapi.Sources{Backends: h.B.Backends, Table: h.B.Table, UDP: h.B.UDP, TCP: h.B.TCP,
		Timeouts: h.B.Timeouts, Clock: h.Clock, Started: h.B.Started, Log: h.B.Log}
	srv := debugapi.Serve(ln, src, patientLimits)
	defer srv.Close()
	st := answers(t, sock)
	if st.Debug.Evicted < uint64(len(conns)-16) {
		t.Errorf("%d connections evicted, want at least %d", st.Debug.Evicted, len(conns)-16)
	}
}

// streamRemotes asks for a long remotes list on a new connection and
// reads only the response's headers: its handler is then running, and
// stays so while the rest is unread.
func streamRemotes(t *testing.T, sock string) *http.Response {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.(*net.UnixConn).SetReadBuffer(4096)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	req, _ := http.NewRequest("GET", "http://bbal/v1/remotes", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("remotes: %v %v", resp, err)
	}
	return resp
}

// A connection in the middle of a request is never evicted; when every
// one is, a new connection is refused.
func TestBusyConnectionsAreKept(t *testing.T) {
	lim := patientLimits
	lim.MaxConns = 2
	h := servertest.New(t, func(o *server.Options) { o.DebugLimits = lim })
	for i := range 30_000 { // some 5 MB of JSON, far more than the socket buffers
		h.B.Table.Route(protocol.U32ToAddr(0x0a000000 + uint32(i)))
	}
	busy := []*http.Response{streamRemotes(t, h.DebugSocket), streamRemotes(t, h.DebugSocket)}
	for _, c := range dialIdle(t, h.DebugSocket, 20) {
		if !closed(c) {
			t.Fatal("a new connection got in while both were busy")
		}
	}
	for i, resp := range busy {
		rest, err := io.ReadAll(resp.Body)
		if err != nil || !strings.HasSuffix(string(rest), "\n]}\n") {
			t.Fatalf("busy connection %d cut off after %d bytes: %v", i, len(rest), err)
		}
	}
	if st := answers(t, h.DebugSocket); st.Debug.Refused != 20 {
		t.Errorf("%d connections refused, want 20", st.Debug.Refused)
	}
	if n := h.Logs.Count("debug socket connection refused: every one is busy", nil); n != 1 {
		t.Errorf("refusal logged %d times, want once", n)
	}
}

// The debug socket's counters are in the metrics of -m too.
func TestMetricsListenerHasDebugCounters(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) { c.MetricsAddr = "127.0.0.1:0" }, nil)
	dialIdle(t, h.DebugSocket, 1)
	testbed.Eventually(t, "the connection accepted", func() bool { return h.B.Debug().Conns() == 1 })
	resp, err := http.Get("http://" + h.B.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	mf := parseMetrics(t, "-m", resp.StatusCode, body)
	if v := value(t, mf, "bbal_debug_connections", nil); v != 1 {
		t.Errorf("bbal_debug_connections = %v, want 1", v)
	}
	value(t, mf, "bbal_debug_connections_evicted_total", nil)
}
