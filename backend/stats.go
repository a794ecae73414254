package backend

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/bbal/bbal/backend/counter"
	"github.com/bbal/bbal/backend/placement"
)

// Reason is why a backend was faulted.
type Reason uint8

// Fault reasons. Their String values are the metric label values.
const (
	ReasonEOF                 Reason = iota // the backend closed the session
	ReasonReadError                         // reading the session failed
	ReasonWriteError                        // writing the session failed
	ReasonConnectTimeout                    // no SERVER_HELLO within the connect timeout
	ReasonHeartbeatTimeout                  // no SERVER_HEARTBEAT within the heartbeat timeout
	ReasonFrameBeforeHello                  // a frame other than SERVER_HELLO came first
	ReasonDuplicateHello                    // a second SERVER_HELLO
	ReasonUnexpectedHeartbeat               // a SERVER_HEARTBEAT with none outstanding
	ReasonUnknownFrame                      // a frame type the backend may not send
	ReasonOversizedUDP                      // an OUTBOUND_UDP with data over 1500 bytes
	ReasonTCPOKTimeout                      // a TCP proxy session got no INBOUND_TCP_OK in time
	ReasonProbeTimeout                      // no answer to a DNS probe within the probe timeout
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonEOF:                 "eof",
	ReasonReadError:           "read_error",
	ReasonWriteError:          "write_error",
	ReasonConnectTimeout:      "connect_timeout",
	ReasonHeartbeatTimeout:    "heartbeat_timeout",
	ReasonFrameBeforeHello:    "frame_before_hello",
	ReasonDuplicateHello:      "duplicate_hello",
	ReasonUnexpectedHeartbeat: "unexpected_heartbeat",
	ReasonUnknownFrame:        "unknown_frame",
	ReasonOversizedUDP:        "oversized_udp",
	ReasonTCPOKTimeout:        "tcp_ok_timeout",
	ReasonProbeTimeout:        "probe_timeout",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every fault reason, in order.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// counters are a backend's statistics, updated with atomics by whichever
// goroutine sees the event: the UDP readers, the session goroutines and
// the TCP proxies. The plain counts are in counterTable too.
type counters struct {
	udpFrames       atomic.Uint64 // INBOUND_UDP frames queued
	udpBytes        atomic.Uint64 // DNS bytes in those frames
	outboundUDP     atomic.Uint64 // OUTBOUND_UDP frames received
	outboundBytes   atomic.Uint64
	outboundErrors  atomic.Uint64 // OUTBOUND_UDP frames that could not be sent on
	stuckDrops      atomic.Uint64 // datagrams dropped: queue full
	downDrops       atomic.Uint64 // datagrams dropped: no ready session
	discarded       atomic.Uint64 // frames queued but thrown away by a fault
	expired         atomic.Uint64 // frames queued but too old to write
	tcpTotal        atomic.Uint64 // TCP proxy sessions opened
	tcpActive       atomic.Int64  // TCP proxy sessions open now
	tcpErrors       atomic.Uint64 // TCP proxy sessions that could not connect
	connectAttempts atomic.Uint64 // standing session connection attempts
	connectErrors   atomic.Uint64 // attempts that failed to connect
	heartbeats      atomic.Uint64 // heartbeat replies received
	heartbeatRTT    atomic.Int64  // nanoseconds, last heartbeat round trip
	faults          [numReasons]atomic.Uint64
}

// Counter is one of a backend's plain counts; Counters lists them.
type Counter = counter.Counter[counters, Counts]

const dropsHelp = "Datagrams for the backend dropped: stuck (queue full), down (no session), discarded (queued, then the session faulted), expired (queued too long)."

// counterTable is the one list of a backend's plain counts. It drives
// Backend.Stats, Backend.ResetCounters and, through Counters, the
// metrics. The packet path updates the fields directly.
var counterTable = counter.Table[counters, Counts]{
	{Metric: "bbal_backend_udp_frames_total", Help: "INBOUND_UDP frames queued to the backend.", Field: func(c *counters) counter.Value { return &c.udpFrames }, Stat: func(s *Counts) *uint64 { return &s.UDPFrames }},
	{Metric: "bbal_backend_udp_bytes_total", Help: "DNS bytes in INBOUND_UDP frames queued to the backend.", Field: func(c *counters) counter.Value { return &c.udpBytes }, Stat: func(s *Counts) *uint64 { return &s.UDPBytes }},
	{Metric: "bbal_backend_outbound_udp_total", Help: "OUTBOUND_UDP frames received from the backend.", Field: func(c *counters) counter.Value { return &c.outboundUDP }, Stat: func(s *Counts) *uint64 { return &s.OutboundUDP }},
	{Metric: "bbal_backend_outbound_bytes_total", Help: "DNS bytes in OUTBOUND_UDP frames received from the backend.", Field: func(c *counters) counter.Value { return &c.outboundBytes }, Stat: func(s *Counts) *uint64 { return &s.OutboundBytes }},
	{Metric: "bbal_backend_outbound_errors_total", Help: "OUTBOUND_UDP frames that could not be sent on.", Field: func(c *counters) counter.Value { return &c.outboundErrors }, Stat: func(s *Counts) *uint64 { return &s.OutboundErrors }},
	{Metric: "bbal_backend_drops_total", Help: dropsHelp, Reason: "stuck", Field: func(c *counters) counter.Value { return &c.stuckDrops }, Stat: func(s *Counts) *uint64 { return &s.StuckDrops }},
	{Metric: "bbal_backend_drops_total", Help: dropsHelp, Reason: "down", Field: func(c *counters) counter.Value { return &c.downDrops }, Stat: func(s *Counts) *uint64 { return &s.DownDrops }},
	{Metric: "bbal_backend_drops_total", Help: dropsHelp, Reason: "discarded", Field: func(c *counters) counter.Value { return &c.discarded }, Stat: func(s *Counts) *uint64 { return &s.Discarded }},
	{Metric: "bbal_backend_drops_total", Help: dropsHelp, Reason: "expired", Field: func(c *counters) counter.Value { return &c.expired }, Stat: func(s *Counts) *uint64 { return &s.Expired }},
	{Metric: "bbal_backend_tcp_sessions_total", Help: "TCP proxy sessions opened to the backend.", Field: func(c *counters) counter.Value { return &c.tcpTotal }, Stat: func(s *Counts) *uint64 { return &s.TCPTotal }},
	{Metric: "bbal_backend_tcp_errors_total", Help: "TCP proxy sessions that could not connect.", Field: func(c *counters) counter.Value { return &c.tcpErrors }, Stat: func(s *Counts) *uint64 { return &s.TCPErrors }},
	{Metric: "bbal_backend_connect_attempts_total", Help: "Standing session connection attempts.", Field: func(c *counters) counter.Value { return &c.connectAttempts }, Stat: func(s *Counts) *uint64 { return &s.ConnectAttempts }},
	{Metric: "bbal_backend_connect_errors_total", Help: "Standing session connection attempts that failed.", Field: func(c *counters) counter.Value { return &c.connectErrors }, Stat: func(s *Counts) *uint64 { return &s.ConnectErrors }},
	{Metric: "bbal_backend_heartbeats_total", Help: "Heartbeat replies received.", Field: func(c *counters) counter.Value { return &c.heartbeats }, Stat: func(s *Counts) *uint64 { return &s.Heartbeats }},
}

// Counters returns the table of a backend's plain counts, for the
// metrics. The gauges, the faults by Reason, the load's figures and the
// probes' are not in it.
func Counters() []Counter { return slices.Clone(counterTable) }

// reset zeroes the counters of the table and the faults.
func (c *counters) reset() {
	counterTable.Reset(c)
	for i := range c.faults {
		c.faults[i].Store(0)
	}
}

// Counts are a backend's plain counts, as counterTable loads them; the
// debug API shows them with these names.
type Counts struct {
	UDPFrames       uint64 `json:"udp_frames"`
	UDPBytes        uint64 `json:"udp_bytes"`
	OutboundUDP     uint64 `json:"outbound_udp"`
	OutboundBytes   uint64 `json:"outbound_bytes"`
	OutboundErrors  uint64 `json:"outbound_errors"`
	StuckDrops      uint64 `json:"stuck_drops"`
	DownDrops       uint64 `json:"down_drops"`
	Discarded       uint64 `json:"discarded"`
	Expired         uint64 `json:"expired_drops"`
	TCPTotal        uint64 `json:"tcp_total"`
	TCPErrors       uint64 `json:"tcp_errors"`
	ConnectAttempts uint64 `json:"connect_attempts"`
	ConnectErrors   uint64 `json:"connect_errors"`
	Heartbeats      uint64 `json:"heartbeats"`
}

// Stats is a snapshot of one backend's state and counters.
type Stats struct {
	ID             ID
	Path           string
	State          State
	Since          time.Time // when State was entered
	OK             bool
	Removed        bool
	Admin          Admin
	ReconnectDelay time.Duration
	QueuedBytes    int
	QueuedFrames   int
	Counts
	TCPActive    int64
	HeartbeatRTT time.Duration
	Probes       ProbeStats
	Faults       map[string]uint64 // by Reason.String(), only those seen
	// Load, as the UDP path measures it: weight, slowness, stalls and
	// the figures of its queries.
	placement.Figures
}
