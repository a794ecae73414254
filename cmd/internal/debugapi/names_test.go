package debugapi_test

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
)

// parseMetrics parses a /metrics body with the Prometheus text parser.
func parseMetrics(t *testing.T, where string, code int, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	if code != 200 {
		t.Fatalf("%s /metrics: %d %.300s", where, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("%s /metrics does not parse as Prometheus text: %v", where, err)
	}
	return mf
}

// infoPaths returns the path labels of bbal_backend_info by backend.
func infoPaths(mf map[string]*dto.MetricFamily) map[string]string {
	out := map[string]string{}
	for _, m := range mf["bbal_backend_info"].GetMetric() {
		var id, path string
		for _, lp := range m.Label {
			switch lp.GetName() {
			case "backend":
				id = lp.GetValue()
			case "path":
				path = lp.GetValue()
			}
		}
		out[id] = path
	}
	return out
}

// A backend's path is any string of bytes: the metrics, over the debug
// socket and -m, and the JSON carry it escaped, reversibly, while its
// entry is there and after it is gone.
func TestNonUTF8SocketNames(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) { c.MetricsAddr = "127.0.0.1:0" }, nil)
	live := "live\xff\xfe"       // a listening backend
	dead := "dead\xff\x1b[31m\\" // a stale socket, never answers
	testbed.StartGo(t, h.Sock(live), "live")
	testbed.StaleSocket(t, h.Sock(dead))
	h.B.Backends.Scan()
	testbed.Eventually(t, "the live backend up", func() bool {
		for _, b := range h.B.Backends.All() {
			if b.Path() == h.Sock(live) && b.OK() {
				return true
			}
		}
		return false
	})
	want := map[string]string{} // escaped path by backend ID
	for _, b := range h.B.Backends.All() {
		want[strconv.Itoa(int(b.ID()))] = backend.EscapePath(b.Path())
	}
	if len(want) != 2 {
		t.Fatalf("backends %v, want 2", want)
	}
	for _, w := range want {
		if p, err := strconv.Unquote(`"` + w + `"`); err != nil || (p != h.Sock(live) && p != h.Sock(dead)) {
			t.Fatalf("escaped path %q does not unquote to a socket's path: %q %v", w, p, err)
		}
	}

	scrape := func() {
		t.Helper()
		code, body := get(t, h.DebugSocket, "GET", "/metrics", nil)
		if got := infoPaths(parseMetrics(t, "debug socket", code, body)); !maps.Equal(got, want) {
			t.Errorf("debug socket: bbal_backend_info paths %q, want %q", got, want)
		}
		resp, err := http.Get("http://" + h.B.MetricsAddr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := infoPaths(parseMetrics(t, "-m", resp.StatusCode, body)); !maps.Equal(got, want) {
			t.Errorf("-m: bbal_backend_info paths %q, want %q", got, want)
		}

		code, body = get(t, h.DebugSocket, "GET", "/v1/backends", nil)
		var br debugapi.BackendsReply
		if err := json.Unmarshal(body, &br); err != nil || code != 200 {
			t.Fatalf("/v1/backends: %d %v", code, err)
		}
		for _, b := range br.Backends {
			if id := strconv.Itoa(int(b.ID)); b.Path != want[id] {
				t.Errorf("/v1/backends: backend %s path %q, want %q", id, b.Path, want[id])
			}
		}
	}
	scrape()
	// The logs carry the paths escaped alike, as valid UTF-8 with no
	// control characters.
	for _, w := range want {
		h.Logs.Wait(t, "new backend", map[string]any{"be_path": w})
	}
	for _, l := range h.Logs.Lines() {
		if !utf8.ValidString(l) || strings.ContainsFunc(l, unicode.IsControl) || strings.Contains(l, "\ufffd") {
			t.Errorf("log line not clean: %q", l)
		}
	}
	// Gone from the directory, the backends are still known.
	os.Remove(h.Sock(live))
	os.Remove(h.Sock(dead))
	h.B.Backends.Scan()
	scrape()
}
