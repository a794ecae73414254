package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy"
)

// options are the settings the command line does not reach: the clock and
// the timers, which tests replace.
type options struct {
	clock     timeouts.Clock
	backends  backend.Config // only the durations and limits are used
	remotes   remotes.Config // likewise
	okTimeout time.Duration
}

// balancer is a running bbal: the listeners, the backends, the remotes
// table and the timers, wired together. start builds it; close takes it
// down in order.
type balancer struct {
	log      zerolog.Logger
	timeouts *timeouts.Set
	backends *backend.Set
	table    *remotes.Table
	udp      *udpproxy.Proxy
	tcp      *tcpproxy.Proxy

	stopTimers context.CancelFunc
	timersDone sync.WaitGroup
}

// start binds the listen address and starts everything. A bind failure is
// logged as fatal and returned.
func start(cfg config, opt options, log zerolog.Logger) (*balancer, error) {
	if opt.clock == nil {
		opt.clock = timeouts.System
	}
	uconn, tln, err := listen(cfg.listen)
	if err != nil {
		log.WithLevel(zerolog.FatalLevel).Str("address", cfg.listen.Addr().String()).
			Uint16("port", cfg.listen.Port()).Err(err).Msg("failed to create listen sockets")
		return nil, err
	}
	addr := uconn.LocalAddr().(*net.UDPAddr).AddrPort()
	log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Msg("listening for UDP packets")
	log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Msg("listening for TCP packets")

	b := &balancer{log: log, timeouts: timeouts.New(opt.clock)}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopTimers = cancel
	b.timersDone.Add(1)
	go func() {
		defer b.timersDone.Done()
		b.timeouts.Run(ctx)
	}()

	b.udp = udpproxy.New(uconn, opt.clock, log)

	bc := opt.backends
	bc.Dir, bc.Log, bc.Timeouts, bc.Reply = cfg.socketDir, log, b.timeouts, b.udp.Reply
	b.backends = backend.NewSet(bc)

	rc := opt.remotes
	rc.Backends, rc.Timeouts, rc.Log = b.backends, b.timeouts, log
	b.table = remotes.New(rc)

	b.tcp = tcpproxy.New(tln, tcpproxy.Config{
		Table: b.table, Backends: b.backends, Timeouts: b.timeouts, Log: log, OKTimeout: opt.okTimeout,
	})

	b.backends.Start()
	b.table.Start()
	b.udp.Start(b.table, b.backends)
	b.tcp.Start()
	return b, nil
}

// addr returns the address the balancer listens on.
func (b *balancer) addr() netip.AddrPort { return b.udp.Addr() }

// close stops accepting, closes every session and stops every goroutine.
func (b *balancer) close() {
	b.udp.Close()
	b.tcp.Close()
	b.backends.Close()
	b.table.Close()
	b.stopTimers()
	b.timersDone.Wait()
}

// socketBuffer is the UDP socket buffer size asked for.
const socketBuffer = 4 << 20

// listen binds UDP and TCP on the same address and port. With port 0 it
// looks for a port free for both.
func listen(addr netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	tries := 1
	if addr.Port() == 0 {
		tries = 20
	}
	for i := 0; ; i++ {
		u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return nil, nil, fmt.Errorf("UDP: %w", err)
		}
		port := u.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		t, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr.Addr(), port)))
		if err == nil {
			// Room for bursts; the kernel caps these at its
			// net.core.[rw]mem_max.
			u.SetReadBuffer(socketBuffer)
			u.SetWriteBuffer(socketBuffer)
			return u, t, nil
		}
		u.Close()
		if i+1 >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("TCP: %w", err)
		}
	}
}
