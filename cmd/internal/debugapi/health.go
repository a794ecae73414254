package debugapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Health is the body of GET /healthz and GET /readyz, for load
// balancers, route announcers and orchestrators (CoreDNS's health and
// ready are the convention): /healthz says the process is serving DNS;
// /readyz that, and that at least Min backends (1 unless ?min= says
// otherwise) are ok: their session up, not disabled, not stalled.
type Health struct {
	Status     string `json:"status"` // "serving", "ready"; "stopping", "not ready"
	Reason     string `json:"reason,omitempty"`
	BackendsOK int    `json:"backends_ok"`
	Backends   int    `json:"backends"`
	Min        int    `json:"min,omitempty"`
}

// MaxReadyMin bounds /readyz's ?min=.
const MaxReadyMin = 1000

// HealthHandlers returns the handlers of /healthz and /readyz on src, for
// the debug socket and for -m.
func HealthHandlers(src Sources) (healthz, readyz http.HandlerFunc) {
	healthz = func(w http.ResponseWriter, r *http.Request) {
		if !checkQuery(w, r) {
			return
		}
		h := health(src, 0)
		code := http.StatusOK
		if h.Status != "serving" {
			code = http.StatusServiceUnavailable
		}
		writeHealth(w, code, h)
	}
	readyz = func(w http.ResponseWriter, r *http.Request) {
		if !checkQuery(w, r, "min") {
			return
		}
		min := 1
		if v := r.URL.Query().Get("min"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxReadyMin {
				fail(w, http.StatusBadRequest, "bad min %q (want 1 to %d)", v, MaxReadyMin)
				return
			}
			min = n
		}
		h := health(src, min)
		code := http.StatusOK
		if h.Status != "ready" {
			code = http.StatusServiceUnavailable
		}
		writeHealth(w, code, h)
	}
	return healthz, readyz
}

// health is the balancer's health: min 0 for /healthz, else /readyz's.
func health(src Sources, min int) Health {
	var h Health
	for _, b := range src.Backends.All() {
		h.Backends++
		if b.Serving() && !b.Load().Stalled() {
			h.BackendsOK++
		}
	}
	switch serving := src.UDP.Serving() && src.TCP.Serving(); {
	case !serving:
		h.Status, h.Reason = "stopping", "not serving DNS: starting, stopping or handing over"
		if min > 0 {
			h.Status = "not ready"
		}
	case min == 0:
		h.Status = "serving"
	case h.BackendsOK < min:
		h.Status, h.Min = "not ready", min
		h.Reason = fmt.Sprintf("%d of %d backends ok, want %d", h.BackendsOK, h.Backends, min)
	default:
		h.Status, h.Min = "ready", min
	}
	return h
}

func writeHealth(w http.ResponseWriter, code int, h Health) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(h)
}
