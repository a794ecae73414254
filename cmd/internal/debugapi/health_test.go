package debugapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
)

// TestHealthAndReadiness: /healthz says bbal serves DNS, /readyz that it
// does with enough backends ok, on the debug socket and on -m alike.
func TestHealthAndReadiness(t *testing.T) {
	h := servertest.NewConfig(t, func(c *server.Config) { c.MetricsAddr = "127.0.0.1:0" }, nil)
	overTCP := func(path string) (int, []byte) {
		resp, err := http.Get("http://" + h.B.MetricsAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	check := func(path string, wantCode int, want debugapi.Health) {
		t.Helper()
		for _, fetch := range []func(string) (int, []byte){
			func(p string) (int, []byte) { return get(t, h.DebugSocket, "GET", p, nil) },
			overTCP,
		} {
			code, body := fetch(path)
			var got debugapi.Health
			if err := json.Unmarshal(body, &got); err != nil || code != wantCode || got != want {
				t.Fatalf("%s: %d %s, want %d %+v", path, code, body, wantCode, want)
			}
		}
	}
	check("/healthz", 200, debugapi.Health{Status: "serving"})
	check("/readyz", 503, debugapi.Health{Status: "not ready", Min: 1, Reason: "0 of 0 backends ok, want 1"})

	h.StartGo("5301", "5302")
	check("/readyz", 200, debugapi.Health{Status: "ready", Min: 1, BackendsOK: 2, Backends: 2})
	check("/readyz?min=2", 200, debugapi.Health{Status: "ready", Min: 2, BackendsOK: 2, Backends: 2})
	h.B.Backends.Get(5302).SetAdmin(backend.AdminDisabled)
	check("/readyz?min=2", 503, debugapi.Health{Status: "not ready", Min: 2, BackendsOK: 1, Backends: 2,
		Reason: "1 of 2 backends ok, want 2"})
	check("/healthz", 200, debugapi.Health{Status: "serving", BackendsOK: 1, Backends: 2})

	for _, bad := range []string{"/readyz?min=0", "/readyz?min=x", "/readyz?min=1001", "/readyz?other=1", "/healthz?min=1"} {
		if code, body := get(t, h.DebugSocket, "GET", bad, nil); code != 400 {
			t.Errorf("%s: %d %s, want 400", bad, code, body)
		}
	}
	if code, _ := get(t, h.DebugSocket, "POST", "/readyz", nil); code != 405 {
		t.Errorf("POST /readyz: %d", code)
	}

	// Handing over: it stops reading, and says so.
	h.B.UDP.StopReading()
	h.B.TCP.StopAccepting()
	check("/healthz", 503, debugapi.Health{Status: "stopping", BackendsOK: 1, Backends: 2,
		Reason: "not serving DNS: starting, stopping or handing over"})
	check("/readyz", 503, debugapi.Health{Status: "not ready", BackendsOK: 1, Backends: 2,
		Reason: "not serving DNS: starting, stopping or handing over"})
}
