package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// loadResult is what one load generator run measured.
type loadResult struct {
	Sent, Received uint64
	Elapsed        time.Duration
	AvgLatency     time.Duration
	P99Latency     time.Duration
}

func (r loadResult) QPS() float64 { return float64(r.Received) / r.Elapsed.Seconds() }
func (r loadResult) Lost() uint64 { return r.Sent - r.Received }

// loadgen sends DNS queries to target over UDP from many source addresses
// with a single socket: each datagram's source is set with IP_PKTINFO, and
// every address in 127.0.0.0/8 is local, so replies come back to the same
// socket. It keeps window queries outstanding (a closed loop, like
// dnsperf), and stops after total queries or when d has passed.
type loadgen struct {
	target  netip.AddrPort
	sources []netip.Addr
	window  int
	total   int           // stop after this many queries; 0: no limit
	d       time.Duration // stop after this long; 0: no limit
	timeout time.Duration // a query unanswered this long is lost
}

// sourceRange returns n addresses counting up from first.
func sourceRange(first netip.Addr, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	a := first
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

func (g loadgen) run() (loadResult, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return loadResult{}, err
	}
	defer c.Close()
	c.SetReadBuffer(8 << 20)
	c.SetWriteBuffer(8 << 20)
	pc := ipv4.NewPacketConn(c)
	dst := net.UDPAddrFromAddrPort(g.target)

	// A query per ID slot; the ID says which slot a reply is for.
	q := new(dns.Msg)
	q.SetQuestion("load.example.", dns.TypeA)
	wire, _ := q.Pack()
	var (
		mu       sync.Mutex
		sentAt   = make([]time.Time, 65536)
		inflight = make([]bool, 65536)
		free     = make(chan uint16, g.window)
		res      loadResult
		lats     []time.Duration
		done     = make(chan struct{})
	)
	for i := range g.window {
		free <- uint16(i)
	}
	go func() { // replies
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			id := binary.BigEndian.Uint16(buf)
			mu.Lock()
			if inflight[id] {
				inflight[id] = false
				res.Received++
				lats = append(lats, time.Since(sentAt[id]))
				free <- id
			}
			mu.Unlock()
		}
	}()

	start := time.Now()
	cm := &ipv4.ControlMessage{}
	reaper := time.NewTicker(g.timeout / 4)
	defer reaper.Stop()
	for i := 0; g.total == 0 || i < g.total; i++ {
		if g.d > 0 && time.Since(start) > g.d {
			break
		}
		var id uint16
		select {
		case id = <-free:
		case <-reaper.C:
			// Give up on queries outstanding too long.
			mu.Lock()
			for j := range inflight {
				if inflight[j] && time.Since(sentAt[j]) > g.timeout {
					inflight[j] = false
					free <- uint16(j)
				}
			}
			mu.Unlock()
			i--
			continue
		}
		binary.BigEndian.PutUint16(wire, id)
		cm.Src = g.sources[i%len(g.sources)].AsSlice()
		mu.Lock()
		sentAt[id] = time.Now()
		inflight[id] = true
		res.Sent++
		mu.Unlock()
		if _, err := pc.WriteTo(wire, cm, dst); err != nil {
			return res, fmt.Errorf("send from %v: %w", cm.Src, err)
		}
	}
	res.Elapsed = time.Since(start)
	// Wait for the stragglers.
	deadline := time.Now().Add(g.timeout)
	for time.Now().Before(deadline) {
		mu.Lock()
		pending := res.Sent - res.Received
		mu.Unlock()
		if pending == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()
	<-done
	if len(lats) == 0 {
		return res, errors.New("no replies")
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	var sum time.Duration
	for _, l := range lats {
		sum += l
	}
	res.AvgLatency = sum / time.Duration(len(lats))
	res.P99Latency = lats[len(lats)*99/100]
	return res, nil
}
