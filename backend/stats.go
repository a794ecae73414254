package backend

import (
	"sync/atomic"
	"time"
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
// the TCP proxies.
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

// Stats is a snapshot of one backend's state and counters.
type Stats struct {
	ID              ID
	Path            string
	State           State
	Since           time.Time // when State was entered
	OK              bool
	Removed         bool
	Admin           Admin
	ReconnectDelay  time.Duration
	QueuedBytes     int
	QueuedFrames    int
	UDPFrames       uint64
	UDPBytes        uint64
	OutboundUDP     uint64
	OutboundBytes   uint64
	OutboundErrors  uint64
	StuckDrops      uint64
	DownDrops       uint64
	Discarded       uint64
	Expired         uint64
	TCPTotal        uint64
	TCPActive       int64
	TCPErrors       uint64
	ConnectAttempts uint64
	ConnectErrors   uint64
	Heartbeats      uint64
	HeartbeatRTT    time.Duration
	Probes          ProbeStats
	Faults          map[string]uint64 // by Reason.String(), only those seen
	// Load, as the UDP path measures it.
	Weight      int
	Slow        bool          // answering far slower than its peers
	Outstanding int64         // UDP queries waiting for an answer
	Latency     time.Duration // moving average of answer times
	Answered    uint64        // UDP queries answered
	Unanswered  uint64        // UDP queries given up on (about 1 s)
	Evicted     uint64        // UDP queries forgotten for room (not counted unanswered)
	Resent      uint64        // UDP queries sent again to another backend after this one died
}
