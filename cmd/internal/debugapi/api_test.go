package debugapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// get fetches path from the debug socket at sock.
func get(t *testing.T, sock, method, path string, body io.Reader) (int, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(method, "http://bbal"+path, body)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func metrics(t *testing.T, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, sock, "GET", "/metrics", nil)
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	return mf
}

// value returns the value of the sample of family name with the labels.
func value(t *testing.T, mf map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	if _, ok := mf[name]; !ok {
		t.Fatalf("no metric %s", name)
	}
	v, ok := sample(mf, name, labels)
	if !ok {
		t.Fatalf("no sample of %s with %v", name, labels)
	}
	return v
}

func TestMetricsParseAndMove(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301", "5302")
	from := testbed.Loopback(1)
	// A reply is counted just after it is sent: the client can have it
	// first.
	counted := func() {
		testbed.Eventually(t, "replies counted", func() bool {
			st := h.B.UDP.Stats()
			return st.PacketsOut == st.PacketsIn
		})
	}
	h.Who(from, false)
	counted()
	before := metrics(t, h.DebugSocket)
	for range 5 {
		h.Who(from, false)
	}
	h.Who(from, true)
	counted()
	after := metrics(t, h.DebugSocket)

	b5301 := map[string]string{"backend": "5301"}
	for _, m := range []struct {
		name   string
		labels map[string]string
		delta  float64
	}{
		{"bbal_backend_udp_frames_total", b5301, 5},
		{"bbal_backend_outbound_udp_total", b5301, 5},
		{"bbal_backend_tcp_sessions_total", b5301, 1},
		{"bbal_udp_received_packets_total", nil, 5},
		{"bbal_udp_sent_packets_total", nil, 5},
		{"bbal_tcp_connections_total", nil, 1},
		{"bbal_backend_answered_total", b5301, 5},
		{"bbal_backend_unanswered_total", b5301, 0},
		{"bbal_udp_replies_unmatched_total", nil, 0},
		{"bbal_udp_replies_unsolicited_total", nil, 0},
		{"bbal_udp_duplicates_total", nil, 0},
	} {
		if d := value(t, after, m.name, m.labels) - value(t, before, m.name, m.labels); d != m.delta {
			t.Errorf("%s%v moved by %v, want %v", m.name, m.labels, d, m.delta)
		}
	}
	for name, want := range map[string]float64{"bbal_backend_up": 1, "bbal_backend_remotes": 1,
		"bbal_backend_weight": 1, "bbal_backend_slow": 0, "bbal_backend_outstanding_queries": 0} {
		if v := value(t, after, name, b5301); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if v := value(t, after, "bbal_backend_state", map[string]string{"backend": "5302", "state": "ok"}); v != 1 {
		t.Errorf("bbal_backend_state{5302,ok} = %v", v)
	}
	if v := value(t, after, "bbal_remotes", nil); v != 1 {
		t.Errorf("bbal_remotes = %v", v)
	}
	// The sockets' creation was seen by the directory watch.
	if v := value(t, after, "bbal_discovery_watch_active", nil); v != 1 {
		t.Errorf("bbal_discovery_watch_active = %v", v)
	}
	if v := value(t, after, "bbal_discovery_events_total", nil); v < 2 {
		t.Errorf("bbal_discovery_events_total = %v, want at least the 2 sockets' creation", v)
	}
	value(t, after, "bbal_drops_total", map[string]string{"proto": "udp", "reason": "stuck"})
	value(t, after, "bbal_backend_faults_total", map[string]string{"backend": "5301", "reason": "heartbeat_timeout"})
	value(t, after, "go_goroutines", nil)
	value(t, after, "bbal_discovery_ignored_entries", nil)
	value(t, after, "bbal_discovery_forgotten_total", nil)
	if _, ok := after["bbal_backend_probes_sent_total"]; ok {
		t.Error("probe metrics without -H")
	}
	for name := range after {
		if strings.HasPrefix(name, "bbal_") && strings.Contains(name, "remote_ip") {
			t.Errorf("per-remote metric %s", name)
		}
	}
}

func TestProbeMetrics(t *testing.T) {
	probe, err := server.ParseProbe("probe.example")
	if err != nil {
		t.Fatal(err)
	}
	h := servertest.NewConfig(t, func(c *server.Config) { c.Probe = probe }, nil)
	h.StartGo("5301")
	h.Heartbeat() // and a probe
	b := h.B.Backends.Get(5301)
	testbed.Eventually(t, "probe answered", func() bool { return b.Stats().Probes.Answered == 1 })
	mf := metrics(t, h.DebugSocket)
	b5301 := map[string]string{"backend": "5301"}
	for name, want := range map[string]float64{
		"bbal_backend_probes_sent_total":     1,
		"bbal_backend_probes_answered_total": 1,
		"bbal_backend_probes_failed_total":   0,
		"bbal_backend_probe_rtt_seconds":     0,
	} {
		if v := value(t, mf, name, b5301); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	value(t, mf, "bbal_backend_faults_total", map[string]string{"backend": "5301", "reason": "probe_timeout"})
}

func TestEndpoints(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	h.Who(testbed.Loopback(1), false)
	sock := h.DebugSocket
	for _, tt := range []struct {
		method, path string
		body         string
		code         int
		contains     string
	}{
		{"GET", "/v1/backends", "", 200, `"id": 5301`},
		{"GET", "/v1/backends/5301", "", 200, `"state": "ok"`},
		{"GET", "/v1/backends/9999", "", 404, `{"error":"no backend 9999"}`},
		{"GET", "/v1/backends/x", "", 400, `{"error":"bad backend ID \"x\""}`},
		{"POST", "/v1/backends/5301/explode", "", 404, `unknown action \"explode\"`},
		{"GET", "/v1/backends/5301/disable", "", 405, ``},
		{"POST", "/v1/backends/5301/drain", "x=1", 413, `requests take no body`},
		{"GET", "/v1/remotes?ip=127.0.0.2", "", 200, `"ip":"127.0.0.2"`},
		{"GET", "/v1/remotes?ip=fe80::1%25eth0", "", 400, `bad IP address`},
		{"GET", "/v1/remotes?ip=nonsense", "", 400, `bad IP address`},
		{"POST", "/v1/backends/5301/weight?value=0", "", 400, `(want 1 to 1000)`},
		{"POST", "/v1/backends/5301/weight", "", 400, `(want 1 to 1000)`},
		{"GET", "/v1/remotes?backend=9999", "", 404, `no backend 9999`},
		{"GET", "/v1/remotes?backend=5301", "", 200, `"backend":5301`},
		{"GET", "/v1/remotes?colour=red", "", 400, `unknown parameter \"colour\"`},
		{"GET", "/v1/timeouts", "", 200, `"name": "backend 5301 heartbeat"`},
		{"GET", "/v1/stats", "", 200, `"remotes": 1`},
		{"GET", "/v1/nothing", "", 404, `no such endpoint: GET /v1/nothing`},
	} {
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		code, got := get(t, sock, tt.method, tt.path, body)
		if code != tt.code || !strings.Contains(string(got), tt.contains) {
			t.Errorf("%s %s: %d %s; want %d containing %s", tt.method, tt.path, code, got, tt.code, tt.contains)
		}
	}

	var st debugapi.Stats
	_, b := get(t, sock, "GET", "/v1/stats", nil)
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.ListenUDP != h.Addr.String() || st.ListenTCP != h.Addr.String() || st.Backends != 1 || st.BackendsOK != 1 ||
		st.UDP.PacketsIn != 1 || st.Goroutines == 0 || st.RSSBytes == 0 || st.Version == "" || !st.Now.Equal(h.Clock.Now()) ||
		!st.Discovery.WatchActive || st.Discovery.Events == 0 {
		t.Errorf("stats %+v", st)
	}
	var to debugapi.TimeoutsReply
	_, b = get(t, sock, "GET", "/v1/timeouts", nil)
	json.Unmarshal(b, &to)
	for i := 1; i < len(to.Timeouts); i++ {
		if to.Timeouts[i].Due.Before(to.Timeouts[i-1].Due) {
			t.Errorf("timeouts not in due order: %+v", to.Timeouts)
		}
	}
	var hb *debugapi.Timeout
	for i, e := range to.Timeouts {
		if e.Name == "backend 5301 heartbeat" {
			hb = &to.Timeouts[i]
		}
	}
	if hb == nil || hb.InSeconds != 5 {
		t.Errorf("heartbeat timeout %+v, want 5 s away", hb)
	}
}

func TestListen(t *testing.T) {
	dir := testbed.SocketDir(t)
	path := filepath.Join(dir, "bbal.sock")

	// A stale socket (nobody listening) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ln, err := debugapi.Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("mode %v, want a 0600 socket", fi.Mode())
	}
	// A live one is refused, and left alone.
	if _, err := debugapi.Listen(path); !errors.Is(err, debugapi.ErrInUse) {
		t.Fatalf("second Listen: %v, want ErrInUse", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the live socket was removed")
	}
	ln.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("socket not removed on close")
	}
	// Something that is not a socket is not touched.
	os.WriteFile(path, []byte("precious"), 0o644)
	if _, err := debugapi.Listen(path); err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
		t.Fatalf("Listen over a file: %v", err)
	}
}

func TestHostileClients(t *testing.T) {
	lim := debugapi.Limits{MaxConns: 4, HeaderTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, IdleTimeout: 200 * time.Millisecond}
	h := servertest.New(t, func(o *server.Options) { o.DebugLimits = lim })
	h.StartGo("5301")
	dbg := h.B.Debug()

	// 100 connections that send nothing, 5 more at each step: the
	// server never holds more than 4 (it evicts the oldest idle one for
	// a new one, and drops each when its header timeout passes), as the
	// kernel counts the sockets it holds, a balstat-style client still
	// gets its answers, and the data path does not notice.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	idle := func(n int) {
		for range n {
			c, err := net.Dial("unix", h.DebugSocket)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	idle(100)
	balstat := debugapi.NewClient(h.DebugSocket)
	defer balstat.Close()
	for i := range 20 {
		idle(5)
		h.Who(testbed.Loopback(i), i%2 == 0)
		if n := dbg.Conns(); n > lim.MaxConns {
			t.Fatalf("%d debug connections served at once, cap %d", n, lim.MaxConns)
		}
		// One more while it admits a new connection, before it has
		// closed the one that makes room.
		if n := serverSockets(t, h.DebugSocket); n > lim.MaxConns+1 {
			t.Fatalf("the server holds %d connections, cap %d", n, lim.MaxConns)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := balstat.Stats(ctx)
		cancel()
		if err != nil {
			t.Fatalf("stats request among %d idle connections: %v", len(conns), err)
		}
		if st.Debug.Open > lim.MaxConns {
			t.Fatalf("stats report %d debug connections, cap %d", st.Debug.Open, lim.MaxConns)
		}
	}
	if st := dbg.Stats(); st.Evicted == 0 {
		t.Fatalf("no idle connection evicted for %d new ones: %+v", len(conns), st)
	}
	// Every idle client has been let go (evicted or timed out) but the
	// few still held: the server holds no more than it counts.
	for i, c := range conns {
		if i >= len(conns)-lim.MaxConns {
			break
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("idle connection got data")
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle connection %d of %d still held by the server", i, len(conns))
		}
	}
	for _, c := range conns {
		c.Close()
	}
	testbed.Eventually(t, "idle connections gone", func() bool { return dbg.Conns() == 0 })
	testbed.Eventually(t, "the server's sockets closed", func() bool { return serverSockets(t, h.DebugSocket) == 0 })

	// Garbage gets a 400 and the connection closed.
	g, err := net.Dial("unix", h.DebugSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Write([]byte("\x16\x03\x01 not HTTP at all\r\n\r\n"))
	g.SetReadDeadline(time.Now().Add(20 * time.Second))
	reply, _ := io.ReadAll(g)
	if !strings.HasPrefix(string(reply), "HTTP/1.1 400") {
		t.Fatalf("garbage got %q", reply)
	}

	// A client that asks for a large remotes list and never reads it is
	// cut off by the write deadline; the server's memory stays bounded.
	const n = 30_000 // some 5 MB of JSON, far more than the socket buffers
	for i := range n {
		h.B.Table.Route(protocol.U32ToAddr(0x0a000000 + uint32(i)))
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapInuse
	slow, err := net.Dial("unix", h.DebugSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.(*net.UnixConn).SetReadBuffer(4096)
	slow.Write([]byte("GET /v1/remotes HTTP/1.1\r\nHost: bbal\r\n\r\n"))
	testbed.Eventually(t, "slow reader cut off", func() bool { return dbg.Conns() == 0 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapInuse) - int64(heapBefore); grew > 2<<20 {
		t.Fatalf("heap grew by %d bytes serving a client that does not read", grew)
	}
	h.Who(testbed.Loopback(1), false)
}

// serverSockets counts the connections the server (this process) holds
// on the socket at path, as the kernel lists them: the sockets of
// /proc/self/fd that /proc/net/unix shows connected (state 03) with the
// listener's path, as accepted ones are. Those still in the listen
// backlog have that path too, but no descriptor yet; the clients' have
// no path.
func serverSockets(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil {
			if inode, ok := strings.CutPrefix(l, "socket:["); ok {
				open[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		// Num RefCount Protocol Flags Type St Inode Path
		if f := strings.Fields(line); len(f) == 8 && f[7] == path && f[5] == "03" && open[f[6]] {
			n++
		}
	}
	return n
}
