package debugapi_test

import (
	"encoding/json"
	"io"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// jsonMetric says which metric carries a number of the JSON of /v1/stats
// or /v1/backends. A "*" in the JSON path stands for a key of a map (a
// reason, a limit), and a label value "*" takes that key.
type jsonMetric struct {
	json   string
	metric string
	labels map[string]string
	gauge  bool // else a counter, zeroed by POST /v1/counters/reset
	// derived: the JSON number is computed from the metric (a sum, a
	// count, a time), or moves by itself between two requests; the
	// metric must be there, its value is not compared.
	derived bool
}

// jsonMetrics covers every number of the two replies. Backend paths start
// with "backend.", and their metrics have the label backend too.
var jsonMetrics = []jsonMetric{
	{json: "uptime_seconds", metric: "bbal_start_time_seconds", gauge: true, derived: true},
	{json: "no_standin", metric: "bbal_remotes_no_standin_total"},
	{json: "udp.packets_in", metric: "bbal_udp_received_packets_total"},
	{json: "udp.bytes_in", metric: "bbal_udp_received_bytes_total"},
	{json: "udp.packets_out", metric: "bbal_udp_sent_packets_total"},
	{json: "udp.bytes_out", metric: "bbal_udp_sent_bytes_total"},
	{json: "udp.send_errors", metric: "bbal_udp_send_errors_total"},
	{json: "udp.servfails", metric: "bbal_udp_servfail_total"},
	{json: "udp.unmatched", metric: "bbal_udp_replies_unmatched_total"},
	{json: "udp.unsolicited", metric: "bbal_udp_replies_unsolicited_total"},
	{json: "udp.lost_replies", metric: "bbal_udp_replies_lost_total"},
	{json: "udp.duplicates", metric: "bbal_udp_duplicates_total"},
	{json: "udp.resent", metric: "bbal_udp_resent_total"},
	{json: "udp.unresent", metric: "bbal_udp_unresent_total"},
	{json: "udp.withheld", metric: "bbal_udp_withheld_total"},
	{json: "udp.quarantined", metric: "bbal_udp_quarantined_total"},
	{json: "udp.redundant", metric: "bbal_udp_replies_redundant_total"},
	{json: "udp.ratelimit_slips", metric: "bbal_udp_ratelimit_slips_total"},
	{json: "udp.sampled", metric: "bbal_udp_sampled_total"},
	{json: "udp.sampled_unparsed", metric: "bbal_udp_sampled_unparsed_total"},
	{json: "tcp.active", metric: "bbal_tcp_connections_active", gauge: true},
	{json: "tcp.total", metric: "bbal_tcp_connections_total"},
	{json: "tcp.accept_errors", metric: "bbal_tcp_accept_errors_total"},
	{json: "tcp.limits.*", metric: "bbal_tcp_limit_total", labels: map[string]string{"limit": "*"}},
	{json: "drops.udp.*", metric: "bbal_drops_total", labels: map[string]string{"proto": "udp", "reason": "*"}},
	{json: "drops.tcp.*", metric: "bbal_drops_total", labels: map[string]string{"proto": "tcp", "reason": "*"}},
	{json: "remotes", metric: "bbal_remotes", gauge: true},
	{json: "remotes_max", metric: "bbal_remotes_max", gauge: true},
	{json: "unpinned", metric: "bbal_remotes_unpinned_total"},
	{json: "scan_pause_max_seconds", metric: "bbal_remotes_scan_pause_max_seconds", gauge: true},
	{json: "backends", metric: "bbal_backend_up", gauge: true, derived: true},    // their count
	{json: "backends_ok", metric: "bbal_backend_up", gauge: true, derived: true}, // their sum
	{json: "goroutines", metric: "go_goroutines", gauge: true, derived: true},
	{json: "rss_bytes", metric: "process_resident_memory_bytes", gauge: true, derived: true},
	{json: "discovery.events", metric: "bbal_discovery_events_total"},
	{json: "discovery.watch_scans", metric: "bbal_discovery_watch_scans_total"},
	{json: "discovery.ignored", metric: "bbal_discovery_ignored_entries", gauge: true},
	{json: "discovery.forgotten", metric: "bbal_discovery_forgotten_total"},
	{json: "discovery.downs_lost", metric: "bbal_backend_down_events_lost_total"},
	{json: "log_dropped.full", metric: "bbal_log_records_dropped_total", labels: map[string]string{"reason": "full"}},
	{json: "log_dropped.write_error", metric: "bbal_log_records_dropped_total", labels: map[string]string{"reason": "write_error"}},
	// The requests of the test itself open and close connections.
	{json: "debug.conns", metric: "bbal_debug_connections", gauge: true, derived: true},
	{json: "debug.evicted", metric: "bbal_debug_connections_evicted_total"},
	{json: "debug.refused", metric: "bbal_debug_connections_refused_total"},
	{json: "dnstap.sent", metric: "bbal_dnstap_sent_total"},
	{json: "dnstap.dropped_queue_full", metric: "bbal_dnstap_dropped_total", labels: map[string]string{"reason": "queue_full"}},
	{json: "dnstap.dropped_no_collector", metric: "bbal_dnstap_dropped_total", labels: map[string]string{"reason": "no_collector"}},
	{json: "dnstap.reconnects", metric: "bbal_dnstap_reconnects_total"},
	{json: "dnstap.reconnect_errors", metric: "bbal_dnstap_reconnect_errors_total"},

	{json: "reader.reader", metric: "bbal_udp_reader_received_packets_total", derived: true}, // the label
	{json: "reader.datagrams", metric: "bbal_udp_reader_received_packets_total"},
	{json: "reader.reads", metric: "bbal_udp_reader_reads_total"},
	{json: "reader.share", metric: "bbal_udp_reader_received_packets_total", gauge: true, derived: true}, // a ratio of them
	{json: "backend.id", metric: "bbal_backend_info", gauge: true, derived: true},                        // the label
	{json: "backend.remotes", metric: "bbal_backend_remotes", gauge: true},
	{json: "backend.backup_remotes", metric: "bbal_backend_backup_remotes", gauge: true},
	{json: "backend.udp_frames", metric: "bbal_backend_udp_frames_total"},
	{json: "backend.udp_bytes", metric: "bbal_backend_udp_bytes_total"},
	{json: "backend.outbound_udp", metric: "bbal_backend_outbound_udp_total"},
	{json: "backend.outbound_bytes", metric: "bbal_backend_outbound_bytes_total"},
	{json: "backend.outbound_errors", metric: "bbal_backend_outbound_errors_total"},
	{json: "backend.stuck_drops", metric: "bbal_backend_drops_total", labels: map[string]string{"reason": "stuck"}},
	{json: "backend.down_drops", metric: "bbal_backend_drops_total", labels: map[string]string{"reason": "down"}},
	{json: "backend.discarded", metric: "bbal_backend_drops_total", labels: map[string]string{"reason": "discarded"}},
	{json: "backend.expired_drops", metric: "bbal_backend_drops_total", labels: map[string]string{"reason": "expired"}},
	{json: "backend.tcp_total", metric: "bbal_backend_tcp_sessions_total"},
	{json: "backend.tcp_active", metric: "bbal_backend_tcp_sessions_active", gauge: true},
	{json: "backend.tcp_errors", metric: "bbal_backend_tcp_errors_total"},
	{json: "backend.connect_attempts", metric: "bbal_backend_connect_attempts_total"},
	{json: "backend.connect_errors", metric: "bbal_backend_connect_errors_total"},
	{json: "backend.faults.*", metric: "bbal_backend_faults_total", labels: map[string]string{"reason": "*"}},
	{json: "backend.faults_total", metric: "bbal_backend_faults_total", derived: true}, // their sum
	{json: "backend.reconnect_delay_seconds", metric: "bbal_backend_reconnect_delay_seconds", gauge: true},
	{json: "backend.heartbeats", metric: "bbal_backend_heartbeats_total"},
	{json: "backend.heartbeat_rtt_seconds", metric: "bbal_backend_heartbeat_rtt_seconds", gauge: true},
	{json: "backend.queue_bytes", metric: "bbal_backend_queue_bytes", gauge: true},
	{json: "backend.queue_frames", metric: "bbal_backend_queue_frames", gauge: true},
	{json: "backend.weight", metric: "bbal_backend_weight", gauge: true},
	{json: "backend.outstanding", metric: "bbal_backend_outstanding_queries", gauge: true},
	{json: "backend.latency_seconds", metric: "bbal_backend_latency_seconds", gauge: true},
	{json: "backend.answered", metric: "bbal_backend_answered_total"},
	{json: "backend.unanswered", metric: "bbal_backend_unanswered_total"},
	{json: "backend.evicted", metric: "bbal_backend_evicted_total"},
	{json: "backend.resent", metric: "bbal_backend_resent_total"},
	{json: "backend.stalls", metric: "bbal_backend_stalls_total"},
	{json: "backend.stalled_seconds", metric: "bbal_backend_stalled_seconds_total"},
	{json: "backend.stalled_sent", metric: "bbal_backend_stalled_sent_total"},
	{json: "backend.silence_max_seconds", metric: "bbal_backend_silence_max_seconds", gauge: true},
	{json: "backend.probes.sent", metric: "bbal_backend_probes_sent_total"},
	{json: "backend.probes.answered", metric: "bbal_backend_probes_answered_total"},
	{json: "backend.probes.failed", metric: "bbal_backend_probes_failed_total"},
	{json: "backend.probes.rtt_seconds", metric: "bbal_backend_probe_rtt_seconds", gauge: true},
}

// numbers flattens the numbers of a JSON value into path → value, the
// elements of the backends array under "backend.", with their IDs.
func numbers(prefix string, v any, out map[string]float64, ids map[string]string) {
	switch v := v.(type) {
	case float64:
		out[prefix] = v
	case map[string]any:
		for k, e := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			numbers(p, e, out, ids)
		}
	case []any:
		for i, e := range v {
			b, _ := e.(map[string]any)
			if prefix == "readers" {
				// Labelled by address and number.
				p := "reader[" + strconv.Itoa(i) + "]"
				ids[p] = b["address"].(string) + " " + strconv.FormatFloat(b["reader"].(float64), 'f', -1, 64)
				numbers(p, e, out, ids)
				continue
			}
			id, _ := b["id"].(float64)
			p := "backend[" + strconv.FormatFloat(id, 'f', -1, 64) + "]"
			ids[p] = strconv.FormatFloat(id, 'f', -1, 64)
			numbers(p, e, out, ids)
		}
	}
}

// lookupMetric finds the entry of jsonMetrics for a flattened path, and
// the labels of its sample.
func lookupMetric(path string, ids map[string]string) (jsonMetric, map[string]string, bool) {
	generic, labels := path, map[string]string{}
	if i := strings.Index(path, "]"); strings.HasPrefix(path, "backend[") && i > 0 {
		labels["backend"] = ids[path[:i+1]]
		generic = "backend" + path[i+1:]
	}
	if i := strings.Index(path, "]"); strings.HasPrefix(path, "reader[") && i > 0 {
		labels["address"], labels["reader"], _ = strings.Cut(ids[path[:i+1]], " ")
		generic = "reader" + path[i+1:]
	}
	for _, m := range jsonMetrics {
		key, ok := matchPath(m.json, generic)
		if !ok {
			continue
		}
		for k, v := range m.labels {
			if v == "*" {
				v = key
			}
			labels[k] = v
		}
		return m, labels, true
	}
	return jsonMetric{}, nil, false
}

// matchPath matches path against pattern, returning what "*" stood for.
func matchPath(pattern, path string) (string, bool) {
	if pre, ok := strings.CutSuffix(pattern, "*"); ok {
		key, found := strings.CutPrefix(path, pre)
		return key, found && key != "" && !strings.Contains(key, ".")
	}
	return "", pattern == path
}

// sample returns the value of the first sample of family name that has
// the labels given (others ignored), and whether there is one.
func sample(mf map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
next:
	for _, m := range mf[name].GetMetric() {
		for _, lp := range m.Label {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// snapshot is the numbers of /v1/stats and /v1/backends.
func snapshot(t *testing.T, sock string) (map[string]float64, map[string]string) {
	t.Helper()
	out, ids := map[string]float64{}, map[string]string{}
	for _, path := range []string{"/v1/stats", "/v1/backends"} {
		code, body := get(t, sock, "GET", path, nil)
		if code != 200 {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		var v map[string]any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if path == "/v1/backends" {
			numbers("", v["backends"], out, ids)
		} else {
			numbers("", v, out, ids)
		}
	}
	return out, ids
}

// TestEveryCounterHasAMetricAndResets drives traffic through a balancer,
// then checks that every number of the JSON of /v1/stats and /v1/backends
// has a metric of the same value, and that POST /v1/counters/reset zeroes
// every counter among them (the gauges stay).
func TestEveryCounterHasAMetricAndResets(t *testing.T) {
	var logOut *server.Log
	h := servertest.NewConfig(t, func(c *server.Config) {
		c.Probe = server.Probe{Name: "example.com.", Type: 1}
		c.Standins = netip.MustParsePrefix("198.18.0.0/30")
		c.Dnstap = dnstap.Target{Network: "file", Addr: filepath.Join(t.TempDir(), "tap")}
	}, func(o *server.Options) {
		logOut = server.NewLog(io.Discard, nil, zerolog.InfoLevel, time.Now)
		o.LogDrops = logOut
	})
	t.Cleanup(func() { logOut.Close(time.Second) })
	h.StartGo("5301")

	// Traffic: UDP and TCP queries, a heartbeat with its probe, and
	// IPv6 clients beyond the two stand-ins of the /30.
	from := testbed.Loopback(1)
	for range 3 {
		h.Who(from, false)
	}
	h.Who(from, true)
	h.Heartbeat()
	b := h.B.Backends.Get(5301)
	testbed.Eventually(t, "probe answered", func() bool { return b.Stats().Probes.Answered == 1 })
	for i := range 4 {
		h.B.Table.Route(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}))
	}
	testbed.Eventually(t, "the socket's creation scanned", func() bool { return h.B.Backends.Discovery().WatchScans > 0 })
	testbed.Eventually(t, "replies counted", func() bool {
		st := h.B.UDP.Stats()
		return st.PacketsOut == st.PacketsIn
	})
	testbed.Eventually(t, "dnstap messages written", func() bool {
		h.Advance(dnstap.FlushDelay) // to the stream's flush
		st := h.B.UDP.Stats()
		return h.B.Dnstap.Stats().Sent == st.PacketsIn+st.PacketsOut
	})

	before, ids := snapshot(t, h.DebugSocket)
	mf := metrics(t, h.DebugSocket)
	paths := make([]string, 0, len(before))
	for p := range before {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		m, labels, ok := lookupMetric(p, ids)
		if !ok {
			t.Errorf("JSON number %s = %v has no metric in jsonMetrics", p, before[p])
			continue
		}
		if _, ok := mf[m.metric]; !ok {
			t.Errorf("JSON number %s: no metric %s is scraped", p, m.metric)
			continue
		}
		if m.derived {
			continue
		}
		got, ok := sample(mf, m.metric, labels)
		if !ok {
			t.Errorf("JSON number %s: no sample of %s%v", p, m.metric, labels)
		} else if got != before[p] {
			t.Errorf("JSON number %s = %v, but %s%v = %v", p, before[p], m.metric, labels, got)
		}
	}

	// The traffic moved these, so that the reset has something to undo.
	for _, p := range []string{"no_standin", "udp.packets_in", "udp.bytes_out", "tcp.total", "discovery.events",
		"discovery.watch_scans", "dnstap.sent", "backend[5301].udp_frames", "backend[5301].outbound_udp", "backend[5301].tcp_total",
		"backend[5301].connect_attempts", "backend[5301].heartbeats", "backend[5301].answered",
		"backend[5301].probes.sent", "backend[5301].probes.answered"} {
		if before[p] == 0 {
			t.Errorf("%s is 0 before the reset", p)
		}
	}

	if code, body := get(t, h.DebugSocket, "POST", "/v1/counters/reset", nil); code != 200 {
		t.Fatalf("reset: %d %s", code, body)
	}
	after, _ := snapshot(t, h.DebugSocket)
	mf = metrics(t, h.DebugSocket)
	for _, p := range paths {
		m, labels, ok := lookupMetric(p, ids)
		if !ok || m.gauge {
			continue
		}
		if after[p] != 0 {
			t.Errorf("%s = %v after the reset (%v before)", p, after[p], before[p])
		}
		if v, ok := sample(mf, m.metric, labels); ok && !m.derived && v != 0 {
			t.Errorf("%s%v = %v after the reset", m.metric, labels, v)
		}
	}
}
