package debugapi

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/counter"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/cache"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// The metrics. They are read from the balancer's own counters at scrape
// time, so the data path pays nothing for them. Backend metrics are
// labelled by backend ID; there are no per-remote labels. The list is in
// README.md.
var (
	mBuildInfo   = desc("bbal_build_info", "The version bbal was built from; always 1.", "version")
	mStartTime   = desc("bbal_start_time_seconds", "When bbal started, in seconds since the epoch.")
	mDrops       = desc("bbal_drops_total", "Queries and connections dropped, by protocol and reason.", "proto", "reason")
	mTCPActive   = desc("bbal_tcp_connections_active", "Client TCP connections open now.")
	mTCPLimits   = desc("bbal_tcp_limit_total", "Client TCP connections closed by a limit: max_conns, max_conns_per_ip, idle_timeout, unread_timeout, answer_timeout, max_lifetime.", "limit")
	mNoStandin   = desc("bbal_remotes_no_standin_total", "Queries and connections of IPv6 clients that could be given no stand-in address.")
	mRemotes     = desc("bbal_remotes", "Clients in the remotes table.")
	mRemotesMax  = desc("bbal_remotes_max", "The remotes table's bound (-R).")
	mUnpinned    = desc("bbal_remotes_unpinned_total", "Queries and connections from clients served by address hash because the table was full.")
	mScanPause   = desc("bbal_remotes_scan_pause_max_seconds", "The longest hold of the remotes table's lock by expiry or rebalancing.")
	mWatchActive = desc("bbal_discovery_watch_active", "1 while the socket directory is watched with inotify; 0 when only the periodic scan finds changes.")
	mWatchEvents = desc("bbal_discovery_events_total", "inotify events read for the socket directory.")
	mWatchScans  = desc("bbal_discovery_watch_scans_total", "Scans of the socket directory that inotify events triggered.")
	mIgnored     = desc("bbal_discovery_ignored_entries", "Entries of the socket directory that are no backend (not a socket, a second name for one), at the last scan.")
	mForgotten   = desc("bbal_discovery_forgotten_total", "Backends forgotten after their socket was gone for a minute.")
	mDownsLost   = desc("bbal_backend_down_events_lost_total", "Events of a backend going down that the full queue could not take: its queries were not sent again.")
	mLogDropped  = desc("bbal_log_records_dropped_total", "Log records lost: full (the log's buffer was full, its reader too slow), write_error (stdout and stderr failed).", "reason")
	mDebugConns  = desc("bbal_debug_connections", "Connections open on the debug socket.")
	mDebugEvict  = desc("bbal_debug_connections_evicted_total", "Idle debug socket connections closed to make room for a new one.")
	mDebugRefuse = desc("bbal_debug_connections_refused_total", "New debug socket connections closed because every open one was in the middle of a request.")

	mBackendInfo     = desc("bbal_backend_info", "A backend's socket path (escaped as Go's %q writes it, without the quotes); always 1.", "backend", "path")
	mBackendUp       = desc("bbal_backend_up", "1 when the backend's session is up (SERVER_HELLO received).", "backend")
	mBackendState    = desc("bbal_backend_state", "1 for the backend's session state.", "backend", "state")
	mBackendAdmin    = desc("bbal_backend_admin", "1 for the operator's setting: enabled, disabled or draining.", "backend", "admin")
	mBackendRemotes  = desc("bbal_backend_remotes", "Remotes whose primary backend this is.", "backend")
	mBackendBackups  = desc("bbal_backend_backup_remotes", "Remotes this backend serves as a backup.", "backend")
	mBackendTCPAct   = desc("bbal_backend_tcp_sessions_active", "TCP proxy sessions open to the backend now.", "backend")
	mBackendFaults   = desc("bbal_backend_faults_total", "Faults of the standing session, by reason.", "backend", "reason")
	mBackendRTT      = desc("bbal_backend_heartbeat_rtt_seconds", "Round trip of the last heartbeat.", "backend")
	mBackendWeight   = desc("bbal_backend_weight", "The backend's weight: its share of remotes relative to the others'.", "backend")
	mBackendSlow     = desc("bbal_backend_slow", "1 when the backend answers far slower than its peers (-P least-loaded sheds its remotes).", "backend")
	mBackendOutst    = desc("bbal_backend_outstanding_queries", "UDP queries sent to the backend and not yet answered.", "backend")
	mBackendLatency  = desc("bbal_backend_latency_seconds", "Moving average of the backend's UDP answer times.", "backend")
	mBackendAnswered = desc("bbal_backend_answered_total", "UDP queries the backend answered.", "backend")
	mBackendUnans    = desc("bbal_backend_unanswered_total", "UDP queries the backend left unanswered for 1 s.", "backend")
	mBackendEvicted  = desc("bbal_backend_evicted_total", "UDP queries of the backend forgotten to make room for newer ones (not counted unanswered).", "backend")
	mBackendResent   = desc("bbal_backend_resent_total", "UDP queries of the backend sent again to another after it died.", "backend")
	mBackendProbes   = desc("bbal_backend_probes_sent_total", "DNS health-check probes sent (-H).", "backend")
	mBackendProbeOK  = desc("bbal_backend_probes_answered_total", "DNS health-check probes answered.", "backend")
	mBackendProbeErr = desc("bbal_backend_probes_failed_total", "DNS health-check probes not answered within the timeout, not queued, or waiting when the session ended.", "backend")
	mBackendProbeRTT = desc("bbal_backend_probe_rtt_seconds", "Round trip of the last answered DNS health-check probe.", "backend")
	mBackendDelay    = desc("bbal_backend_reconnect_delay_seconds", "Delay before the next reconnect attempt after a failure.", "backend")
	mBackendQueue    = desc("bbal_backend_queue_bytes", "Bytes queued for the backend, not yet written.", "backend")
	mBackendStalled  = desc("bbal_backend_stalled", "1 while the backend answers none of its UDP queries (stalled): its clients go to their backups while another backend is available.", "backend")
	mBackendStalls   = desc("bbal_backend_stalls_total", "Stalls of the backend begun.", "backend")
	mBackendStallSec = desc("bbal_backend_stalled_seconds_total", "Time the backend spent stalled.", "backend")
	mBackendStallSnt = desc("bbal_backend_stalled_sent_total", "UDP queries sent to the backend while it was stalled, for want of a better backend.", "backend")
	mBackendSilence  = desc("bbal_backend_silence_max_seconds", "The longest the backend answered nothing with UDP queries waiting, short of a stall, since the counters were reset (seen every 50 ms): what -A must stay above.", "backend")
	mBackendQueueFr  = desc("bbal_backend_queue_frames", "Frames queued for the backend, not yet written.", "backend")
	mCacheEntries    = desc("bbal_cache_entries", "Answers in the answer cache (-c).")
	mCacheBytes      = desc("bbal_cache_bytes", "Bytes of the answers in the answer cache (and their records' TTL offsets).")
	mCacheCapacity   = desc("bbal_cache_capacity_entries", "Answers the answer cache can hold (-c; 0 without it).")
	mReaderPackets   = desc("bbal_udp_reader_received_packets_total", "Datagrams read by each UDP reader (-r per listen address): reader is its number among its address's.", "address", "reader")
	mReaderReads     = desc("bbal_udp_reader_reads_total", "recvmmsg calls of each UDP reader that returned datagrams (up to 64 each).", "address", "reader")
	mReaderActive    = desc("bbal_udp_reader_active", "1 while the UDP reader is given new datagrams: an address's go to as many of its readers as the load needs.", "address", "reader")
)

// The metrics of the plain counts come from their packages' tables.
var (
	udpCounters     = counterMetrics(udpproxy.Counters())
	tcpCounters     = counterMetrics(tcpproxy.Counters())
	backendCounters = counterMetrics(backend.Counters(), "backend")
	dnstapCounters  = counterMetrics(dnstap.Counters())
	cacheCounters   = counterMetrics(cache.Counters())
)

// counterMetric is the metric of one count of a table.
type counterMetric[O, S any] struct {
	counter.Counter[O, S]
	desc *prometheus.Desc
}

// counterMetrics makes the metrics of a table, with the labels given
// and, for counts that share a metric, reason.
func counterMetrics[O, S any](cs []counter.Counter[O, S], labels ...string) []counterMetric[O, S] {
	var out []counterMetric[O, S]
	descs := map[string]*prometheus.Desc{}
	for _, c := range cs {
		d := descs[c.Metric]
		if d == nil {
			ls := labels
			if c.Reason != "" {
				ls = append(slices.Clip(labels), "reason")
			}
			d = desc(c.Metric, c.Help, ls...)
			descs[c.Metric] = d
		}
		out = append(out, counterMetric[O, S]{c, d})
	}
	return out
}

// labelValues returns the values of the metric's labels: those given,
// and its reason.
func (m counterMetric[O, S]) labelValues(values ...string) []string {
	if m.Reason != "" {
		return append(values, m.Reason)
	}
	return values
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

type collector struct{ src Sources }

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	gauge(mBuildInfo, 1, Version())
	gauge(mStartTime, float64(c.src.Started.UnixNano())/1e9)
	us := c.src.UDP.Stats()
	for _, m := range udpCounters {
		counter(m.desc, m.Value(&us.Counts), m.labelValues()...)
	}
	for r, n := range us.Drops {
		counter(mDrops, n, "udp", r)
	}
	for _, r := range readers(c.src.UDP.Readers()) {
		n := strconv.Itoa(r.Number)
		counter(mReaderPackets, r.Datagrams, r.Address, n)
		counter(mReaderReads, r.Reads, r.Address, n)
		gauge(mReaderActive, bool01(r.Active), r.Address, n)
	}
	ts := c.src.TCP.Stats()
	for _, m := range tcpCounters {
		counter(m.desc, m.Value(&ts.Counts), m.labelValues()...)
	}
	gauge(mTCPActive, float64(ts.Active))
	for r, n := range ts.Drops {
		counter(mDrops, n, "tcp", r)
	}
	for l, n := range ts.Limits {
		counter(mTCPLimits, n, l)
	}
	counter(mNoStandin, c.src.Table.NoStandin())
	gauge(mRemotes, float64(c.src.Table.Len()))
	gauge(mRemotesMax, float64(c.src.Table.MaxRemotes()))
	counter(mUnpinned, c.src.Table.Unpinned())
	gauge(mScanPause, c.src.Table.MaxPause().Seconds())
	ds := c.src.Backends.Discovery()
	gauge(mWatchActive, bool01(ds.WatchActive))
	counter(mWatchEvents, ds.Events)
	counter(mWatchScans, ds.WatchScans)
	gauge(mIgnored, float64(ds.Ignored))
	counter(mForgotten, ds.Forgotten)
	counter(mDownsLost, ds.DownsLost)
	dc := c.src.Dnstap.Stats()
	for _, m := range dnstapCounters {
		counter(m.desc, m.Value(&dc), m.labelValues()...)
	}
	cs := c.src.UDP.Cache().Stats()
	for _, m := range cacheCounters {
		counter(m.desc, m.Value(&cs.Counts), m.labelValues()...)
	}
	gauge(mCacheEntries, float64(cs.Entries))
	gauge(mCacheBytes, float64(cs.Bytes))
	gauge(mCacheCapacity, float64(cs.Capacity))
	if c.src.LogDrops != nil {
		ld := c.src.LogDrops.Drops()
		counter(mLogDropped, ld.Full, "full")
		counter(mLogDropped, ld.WriteError, "write_error")
	}
	if c.src.Debug != nil {
		dc := c.src.Debug.Stats()
		gauge(mDebugConns, float64(dc.Open))
		counter(mDebugEvict, dc.Evicted)
		counter(mDebugRefuse, dc.Refused)
	}

	counts := c.src.Table.Counts()
	for _, b := range c.src.Backends.All() {
		st := b.Stats()
		id := strconv.Itoa(int(st.ID))
		gauge(mBackendInfo, 1, id, backend.EscapePath(st.Path))
		gauge(mBackendUp, bool01(st.OK), id)
		for s := backend.StateConnecting; s <= backend.StateStopped; s++ {
			gauge(mBackendState, bool01(st.State == s), id, s.String())
		}
		for a := backend.AdminEnabled; a <= backend.AdminDraining; a++ {
			gauge(mBackendAdmin, bool01(st.Admin == a), id, a.String())
		}
		gauge(mBackendRemotes, float64(counts[st.ID].Primary), id)
		gauge(mBackendBackups, float64(counts[st.ID].Backup), id)
		for _, m := range backendCounters {
			counter(m.desc, m.Value(&st.Counts), m.labelValues(id)...)
		}
		gauge(mBackendTCPAct, float64(st.TCPActive), id)
		for _, r := range backend.Reasons() {
			counter(mBackendFaults, st.Faults[r.String()], id, r.String())
		}
		gauge(mBackendRTT, st.HeartbeatRTT.Seconds(), id)
		gauge(mBackendWeight, float64(st.Weight), id)
		gauge(mBackendSlow, bool01(st.Slow), id)
		gauge(mBackendOutst, float64(st.Outstanding), id)
		gauge(mBackendLatency, st.Latency.Seconds(), id)
		counter(mBackendAnswered, st.Answered, id)
		counter(mBackendUnans, st.Unanswered, id)
		counter(mBackendEvicted, st.Evicted, id)
		counter(mBackendResent, st.Resent, id)
		gauge(mBackendStalled, bool01(st.Stalled), id)
		counter(mBackendStalls, st.Stalls, id)
		ch <- prometheus.MustNewConstMetric(mBackendStallSec, prometheus.CounterValue, st.StalledTime.Seconds(), id)
		counter(mBackendStallSnt, st.StalledSent, id)
		gauge(mBackendSilence, st.SilenceMax.Seconds(), id)
		if p := st.Probes; p.Enabled {
			counter(mBackendProbes, p.Sent, id)
			counter(mBackendProbeOK, p.Answered, id)
			counter(mBackendProbeErr, p.Failed, id)
			gauge(mBackendProbeRTT, p.RTT.Seconds(), id)
		}
		gauge(mBackendDelay, st.ReconnectDelay.Seconds(), id)
		gauge(mBackendQueue, float64(st.QueuedBytes), id)
		gauge(mBackendQueueFr, float64(st.QueuedFrames), id)
	}
}

// NewRegistry returns a registry with bbal's metrics and the Go runtime's
// and process's standard ones.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collector{src},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// MetricsHandler serves the metrics in the Prometheus text format.
func MetricsHandler(src Sources) http.Handler {
	return promhttp.HandlerFor(NewRegistry(src), promhttp.HandlerOpts{})
}
