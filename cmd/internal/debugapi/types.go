package debugapi

import (
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// DefaultSocket is the debug socket's path when -S is not given.
const DefaultSocket = "/var/run/bbal.sock"

// Backend is one backend as the API shows it.
type Backend struct {
	ID uint16 `json:"id"`
	// Path is the socket's path, escaped by [backend.EscapePath].
	Path          string    `json:"path"`
	State         string    `json:"state"`
	Since         time.Time `json:"since"`
	OK            bool      `json:"ok"`
	Admin         string    `json:"admin"`
	Remotes       int       `json:"remotes"`
	BackupRemotes int       `json:"backup_remotes"`
	// The plain counts: udp_frames, stuck_drops, heartbeats and the
	// rest, by the names backend.Counts gives them.
	backend.Counts
	TCPActive             int64             `json:"tcp_active"`
	Faults                map[string]uint64 `json:"faults"`
	FaultsTotal           uint64            `json:"faults_total"`
	ReconnectDelaySeconds float64           `json:"reconnect_delay_seconds"`
	HeartbeatRTTSeconds   float64           `json:"heartbeat_rtt_seconds"`
	QueueBytes            int               `json:"queue_bytes"`
	QueueFrames           int               `json:"queue_frames"`
	// Load, as bbal measures it from the UDP queries and answers.
	Weight         int     `json:"weight"`
	Slow           bool    `json:"slow"`
	Outstanding    int64   `json:"outstanding"`
	LatencySeconds float64 `json:"latency_seconds"`
	Answered       uint64  `json:"answered"`
	Unanswered     uint64  `json:"unanswered"`
	Evicted        uint64  `json:"evicted"`
	Resent         uint64  `json:"resent"`
	// Stalls: whether the backend answers nothing now (and since when),
	// whether its clients go elsewhere meanwhile (avoided: another
	// backend is available), the stalls begun, the time spent stalled,
	// and the queries sent to it while stalled, for want of a better
	// backend.
	Stalled        bool       `json:"stalled"`
	StallSince     *time.Time `json:"stall_since,omitempty"`
	Avoided        bool       `json:"avoided"`
	Stalls         uint64     `json:"stalls"`
	StalledSeconds float64    `json:"stalled_seconds"`
	StalledSent    uint64     `json:"stalled_sent"`
	// SilenceMaxSeconds is the longest the backend answered nothing
	// with queries waiting, short of a stall, since the last reset
	// (seen at the stall checks, every 50 ms): what -A must stay above.
	SilenceMaxSeconds float64 `json:"silence_max_seconds"`
	// Probes is there only with health checks by DNS (-H).
	Probes *Probes `json:"probes,omitempty"`
}

// Probes are a backend's health checks by DNS. Every probe sent is in
// the end answered or failed (no answer within the timeout, not queued,
// or still waiting when the session ended).
type Probes struct {
	Sent       uint64  `json:"sent"`
	Answered   uint64  `json:"answered"`
	Failed     uint64  `json:"failed"`
	RTTSeconds float64 `json:"rtt_seconds"` // of the last answered probe
}

// BackendsReply is GET /v1/backends.
type BackendsReply struct {
	Now      time.Time `json:"now"`
	Backends []Backend `json:"backends"`
}

// Remote is one client.
type Remote struct {
	IP        string    `json:"ip"`
	Standin   string    `json:"standin,omitempty"` // an IPv6 client's stand-in IPv4 address
	Backend   uint16    `json:"backend"`           // primary; 0 for none
	Backup    uint16    `json:"backup"`            // 0 for none
	UDP       uint64    `json:"udp"`
	TCP       uint64    `json:"tcp"`
	Drops     uint64    `json:"drops"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// RateLimited counts its UDP queries over the rate limit (-q);
	// Limited: one was within the last second.
	RateLimited uint64 `json:"ratelimited"`
	Limited     bool   `json:"limited"`
}

// RemotesReply is GET /v1/remotes; the server streams it.
type RemotesReply struct {
	Now     time.Time `json:"now"`
	Remotes []Remote  `json:"remotes"`
}

// Timeout is one scheduled timer.
type Timeout struct {
	Name      string    `json:"name"`
	Due       time.Time `json:"due"`
	InSeconds float64   `json:"in_seconds"`
}

// TimeoutsReply is GET /v1/timeouts.
type TimeoutsReply struct {
	Now      time.Time `json:"now"`
	Timeouts []Timeout `json:"timeouts"`
}

// Reader is one UDP socket's reader, in Stats.
type Reader struct {
	Address string `json:"address"`
	// Number is the reader's among its address's, from 0.
	Number    int    `json:"reader"`
	Datagrams uint64 `json:"datagrams"`
	// Reads counts its recvmmsg calls that returned datagrams: the
	// datagrams per read say how busy it is (up to 64).
	Reads uint64 `json:"reads"`
	// Active: given new datagrams now. bbal gives an address's
	// datagrams to as many of its readers as the load needs, from one.
	Active bool `json:"active"`
	// Share is the reader's part of its address's datagrams, 0 to 1
	// (0 before any came).
	Share float64 `json:"share"`
	// Retired: a socket inherited at a restart beyond this process's
	// readers, read until it exits but given no new datagrams.
	Retired bool `json:"retired,omitempty"`
}

// Stats is GET /v1/stats.
type Stats struct {
	Version       string    `json:"version"`
	Now           time.Time `json:"now"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	ListenUDP     string    `json:"listen_udp"`
	ListenTCP     string    `json:"listen_tcp"`
	Listen        []string  `json:"listen"` // every address, UDP and TCP alike
	// Readers are the UDP sockets' readers (-r per address), in order:
	// each one's datagrams and its share of its address's.
	Readers []Reader `json:"readers"`
	// Standins is the range of IPv6 clients' stand-in addresses;
	// NoStandin counts queries and connections of IPv6 clients that
	// could be given none.
	Standins  string `json:"standins"`
	NoStandin uint64 `json:"no_standin"`
	// RateLimit is the per-client limit, QPS/BURST/SLIP as -q takes
	// it; "" for none.
	RateLimit string `json:"rate_limit,omitempty"`
	// UDP is the UDP proxy's plain counts (packets_in, servfails,
	// resent and the rest), by the names udpproxy.Counts gives them.
	UDP udpproxy.Counts `json:"udp"`
	TCP struct {
		tcpproxy.Counts
		Active int64             `json:"active"`
		Limits map[string]uint64 `json:"limits"`
	} `json:"tcp"`
	// Drops by protocol ("udp", "tcp") and reason.
	Drops   map[string]map[string]uint64 `json:"drops"`
	Remotes int                          `json:"remotes"`
	// RemotesMax bounds the table; Unpinned counts queries and
	// connections from clients served by hash because it was full.
	RemotesMax int    `json:"remotes_max"`
	Unpinned   uint64 `json:"unpinned"`
	// ScanPauseMaxSeconds is the longest hold of the table's lock by
	// expiry or rebalancing.
	ScanPauseMaxSeconds float64 `json:"scan_pause_max_seconds"`
	Backends            int     `json:"backends"`
	BackendsOK          int     `json:"backends_ok"`
	Goroutines          int     `json:"goroutines"`
	RSSBytes            int64   `json:"rss_bytes"`
	// Discovery is how changes to the socket directory are found: the
	// inotify watch (when active) besides the periodic scan.
	Discovery backend.Discovery `json:"discovery"`
	// LogDropped counts the log records lost.
	LogDropped LogDrops `json:"log_dropped"`
	// Debug is the debug socket's connections: open now, idle ones
	// evicted for a new one, new ones refused because all were busy.
	Debug ConnStats `json:"debug"`
	// Dnstap is the dnstap stream's counts (-D; all 0 without it):
	// messages sent, dropped for a full queue or a lost collector, and
	// reconnects.
	Dnstap dnstap.Counts `json:"dnstap"`
}

// LogDrops are the log records lost: dropped while the log's buffer was
// full (its reader too slow), or for want of an output that takes them
// (stdout and stderr failed).
type LogDrops struct {
	Full       uint64 `json:"full"`
	WriteError uint64 `json:"write_error"`
}

// LogCounters is the log's side of the counters.
type LogCounters interface {
	Drops() LogDrops
	ResetCounters()
}

// ErrorReply is the body of every error response.
type ErrorReply struct {
	Error string `json:"error"`
}
