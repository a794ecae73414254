// Package server assembles a running bbal from its parts: the listeners,
// the backends, the remotes table, the timers and the debug socket. The
// bbal command builds one from its flags; tests build one on a fake clock.
// Its log is bunyan JSON (NewLogger); the command's goes through a [Log],
// so that a slow or vanished log reader never holds up DNS.
package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy"
)

// Config is what the command line sets.
type Config struct {
	SocketDir   string       // the backend socket directory
	Listen      []netip.Addr // UDP and TCP, each; 0.0.0.0 when empty
	Port        uint16       // of every listen address; 0 picks one free for all
	DebugSocket string       // the debug socket's path; none when empty
	MetricsAddr string       // also serve /metrics on this TCP address; none when empty
	MaxRemotes  int          // bound of the remotes table (remotes.DefaultMaxRemotes when 0)
	PrefixBits  int          // pin clients by this prefix length (32 when 0)
	// Standins is the range of IPv6 clients' stand-in IPv4 addresses
	// (remotes.DefaultStandins when not valid).
	Standins netip.Prefix
	// Policy chooses the backend of a new remote.
	Policy backend.Policy
	// TCP connection limits; tcpproxy's defaults when 0.
	TCPMaxConns      int
	TCPMaxConnsPerIP int
	TCPIdleTimeout   time.Duration
	TCPMaxLifetime   time.Duration
	// ServfailWhenDown answers UDP queries SERVFAIL when no backend is
	// available, instead of dropping them.
	ServfailWhenDown bool
	// Probe, when its Name is set, is asked of every ok backend every
	// 5 s from ProbeSource, as a health check (-H): a backend that
	// answers none for 15 s is faulted.
	Probe Probe
	// User, when set, is who bbal runs as once its sockets are bound:
	// the debug socket is handed to that user and the process drops to
	// its uid and primary group before any backend is connected.
	User string
	// Inherited, when set, holds the sockets and state handed over by
	// the previous process (see Handover); nothing is bound, and the
	// caller starts serving with Serve.
	Inherited *Inherited
}

// Options are the settings the command line does not reach: the clock
// and the timers, which tests replace. The zero value is production's.
type Options struct {
	Clock     timeouts.Clock // timeouts.System when nil
	Backends  backend.Config // only the durations and limits are used
	Remotes   remotes.Config // likewise
	OKTimeout time.Duration
	// DebugLimits bound the debug socket's clients; zero fields take
	// debugapi.DefaultLimits.
	DebugLimits debugapi.Limits
	// LogDrops, when set, counts the log records lost (a *Log); the
	// debug socket shows them.
	LogDrops debugapi.LogCounters
}

// Balancer is a running bbal: the listeners, the backends, the remotes
// table and the timers, wired together. Start builds it; Close takes it
// down in order. The parts are exported for the debug socket and tests;
// they are not to be replaced.
type Balancer struct {
	Log      zerolog.Logger
	Clock    timeouts.Clock
	Started  time.Time
	Timeouts *timeouts.Set
	Backends *backend.Set
	Table    *remotes.Table
	UDP      *udpproxy.Proxy
	TCP      *tcpproxy.Proxy

	cfg        Config
	debug      *debugapi.Server
	debugLn    *net.UnixListener
	metrics    *http.Server
	metricsLn  net.Listener
	stopTimers context.CancelFunc
	timersDone sync.WaitGroup
}

// Start binds the listen address and starts everything. A bind failure is
// logged as fatal and returned.
func Start(cfg Config, opt Options, log zerolog.Logger) (*Balancer, error) {
	if opt.Clock == nil {
		opt.Clock = timeouts.System
	}
	// On a start-up failure, what was opened is closed again (the debug
	// socket is unlinked) and the failure logged as fatal.
	var undo []func() error
	fail := func(err error) *zerolog.Event {
		for _, f := range undo {
			f()
		}
		return log.WithLevel(zerolog.FatalLevel).Err(err)
	}
	var (
		debugLn   *net.UnixListener
		metricsLn net.Listener
		uconns    []*net.UDPConn
		tlns      []*net.TCPListener
		err       error
		probe     []byte
		debugDir  string // the debug socket's directory, when bbal made it
	)
	if cfg.Probe.Name != "" {
		if probe, err = cfg.Probe.Query(); err != nil {
			fail(err).Msg("invalid DNS health check")
			return nil, err
		}
	}
	if in := cfg.Inherited; in != nil {
		debugLn, metricsLn, uconns, tlns = in.Debug, in.Metrics, in.UDP, in.TCP
		if debugLn != nil {
			debugLn.SetUnlinkOnClose(true) // ours to remove at exit now
			undo = append(undo, func() error { debugLn.SetUnlinkOnClose(false); return debugLn.Close() })
		}
	} else {
		if cfg.DebugSocket != "" {
			made, err := makeSocketDir(cfg.DebugSocket)
			if err != nil {
				fail(err).Str("path", cfg.DebugSocket).Msg("failed to create debug socket")
				return nil, err
			}
			if made != "" {
				log.Info().Str("path", made).Msg("created the debug socket's directory")
				debugDir = made
			}
			ln, err := debugapi.Listen(cfg.DebugSocket)
			if err != nil {
				fail(err).Str("path", cfg.DebugSocket).Msg("failed to create debug socket")
				return nil, err
			}
			debugLn = ln
			undo = append(undo, ln.Close)
		}
		if cfg.MetricsAddr != "" {
			ln, err := net.Listen("tcp", cfg.MetricsAddr)
			if err != nil {
				fail(err).Str("address", cfg.MetricsAddr).Msg("failed to create metrics listener")
				return nil, err
			}
			metricsLn = ln
			undo = append(undo, ln.Close)
		}
		addrs := cfg.Listen
		if len(addrs) == 0 {
			addrs = []netip.Addr{netip.IPv4Unspecified()}
		}
		port := cfg.Port
		for _, a := range addrs {
			u, t, err := listen(netip.AddrPortFrom(a, port))
			if err != nil {
				fail(err).Str("address", a.String()).Uint16("port", port).Msg("failed to create listen sockets")
				return nil, err
			}
			undo = append(undo, u.Close, t.Close)
			uconns, tlns = append(uconns, u), append(tlns, t)
			port = u.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		}
	}
	if cfg.Inherited != nil {
		for _, u := range uconns {
			undo = append(undo, u.Close)
		}
		for _, t := range tlns {
			undo = append(undo, t.Close)
		}
	}
	if cfg.User != "" {
		var owned []string
		if cfg.DebugSocket != "" {
			owned = append(owned, cfg.DebugSocket)
		}
		if debugDir != "" {
			owned = append(owned, debugDir)
		}
		if err := dropPrivileges(cfg.User, owned...); err != nil {
			fail(err).Str("user", cfg.User).Msg("failed to drop privileges")
			return nil, err
		}
		log.Info().Str("user", cfg.User).Int("uid", os.Getuid()).Int("gid", os.Getgid()).Msg("running as user")
		if cfg.DebugSocket != "" {
			if dir := filepath.Dir(cfg.DebugSocket); unix.Access(dir, unix.W_OK) != nil {
				log.Warn().Str("path", cfg.DebugSocket).Str("user", cfg.User).
					Msg("the debug socket's directory is not writable by the user: the socket will stay behind at exit (a new bbal replaces it)")
			}
		}
	}
	for _, u := range uconns {
		addr := u.LocalAddr().(*net.UDPAddr).AddrPort()
		log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Msg("listening for UDP packets")
	}
	for _, t := range tlns {
		addr := t.Addr().(*net.TCPAddr).AddrPort()
		log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Msg("listening for TCP packets")
	}

	b := &Balancer{Log: log, Clock: opt.Clock, Started: opt.Clock.Now(), Timeouts: timeouts.New(opt.Clock)}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopTimers = cancel
	b.timersDone.Add(1)
	go func() {
		defer b.timersDone.Done()
		b.Timeouts.Run(ctx)
	}()

	if b.UDP, err = udpproxy.New(uconns, b.Timeouts, log); err != nil {
		cancel()
		b.timersDone.Wait()
		fail(err).Msg("UDP socket")
		return nil, err
	}

	if cfg.ServfailWhenDown {
		b.UDP.ServfailWhenDown()
	}

	bc := opt.Backends
	bc.Dir, bc.Log, bc.Timeouts, bc.Replies = cfg.SocketDir, log, b.Timeouts, b.UDP.Replies
	bc.Down, bc.Policy = b.UDP.Resend, cfg.Policy
	if probe != nil {
		src := ProbeSource
		if cfg.Standins.IsValid() {
			src = remotes.ProbeSource(cfg.Standins)
		}
		bc.Probe, bc.ProbeSource = probe, src
		log.Info().Str("probe", cfg.Probe.String()).Str("probe_source", src.String()).
			Msg("health checks by DNS")
	}
	// The table is made after the Set, and asked only by the Set's scans,
	// which begin at Start.
	bc.Primaries = func() map[backend.ID]int {
		out := map[backend.ID]int{}
		for id, c := range b.Table.Counts() {
			if c.Primary > 0 {
				out[id] = c.Primary
			}
		}
		return out
	}
	b.Backends = backend.NewSet(bc)

	rc := opt.Remotes
	rc.Backends, rc.Timeouts, rc.Log = b.Backends, b.Timeouts, log
	rc.MaxRemotes, rc.PrefixBits, rc.Standins = cfg.MaxRemotes, cfg.PrefixBits, cfg.Standins
	b.Table = remotes.New(rc)

	b.TCP = tcpproxy.New(tlns, tcpproxy.Config{
		Table: b.Table, Backends: b.Backends, Timeouts: b.Timeouts, Log: log, OKTimeout: opt.OKTimeout,
		MaxConns: cfg.TCPMaxConns, MaxConnsPerIP: cfg.TCPMaxConnsPerIP,
		IdleTimeout: cfg.TCPIdleTimeout, MaxLifetime: cfg.TCPMaxLifetime,
	})

	if in := cfg.Inherited; in != nil && in.State != nil {
		if err := b.restore(in.State); err != nil {
			b.Close()
			fail(err).Msg("failed to take over the previous process's state")
			return nil, err
		}
	}
	b.Backends.Start()
	b.Table.Start()
	b.debugLn, b.metricsLn = debugLn, metricsLn

	src := debugapi.Sources{
		Backends: b.Backends, Table: b.Table, UDP: b.UDP, TCP: b.TCP,
		Timeouts: b.Timeouts, Clock: b.Clock, Started: b.Started, Log: log,
		LogDrops: opt.LogDrops,
	}
	if debugLn != nil {
		b.debug = debugapi.Serve(debugLn, src, opt.DebugLimits)
		src.Debug = b.debug // its counters in the -m metrics too
		log.Info().Str("path", cfg.DebugSocket).Msg("debug socket ready")
	}
	b.cfg = cfg
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", debugapi.MetricsHandler(src))
		b.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}
		b.metricsLn = metricsLn
		go b.metrics.Serve(metricsLn)
		log.Info().Str("address", metricsLn.Addr().String()).Msg("serving metrics")
	}
	if cfg.Inherited == nil {
		b.Serve()
	}
	return b, nil
}

// Serve starts reading the UDP socket and accepting TCP connections.
// Start calls it, except for a successor process, which first waits for
// its backends (see WaitBackends).
func (b *Balancer) Serve() {
	b.UDP.Start(b.Table, b.Backends)
	b.TCP.Start()
}

// Debug returns the debug socket's server, or nil.
func (b *Balancer) Debug() *debugapi.Server { return b.debug }

// MetricsAddr returns the metrics listener's address, if there is one.
func (b *Balancer) MetricsAddr() net.Addr {
	if b.metricsLn == nil {
		return nil
	}
	return b.metricsLn.Addr()
}

// Addr returns the (first) address the balancer listens on.
func (b *Balancer) Addr() netip.AddrPort { return b.UDP.Addr() }

// Addrs returns every address the balancer listens on.
func (b *Balancer) Addrs() []netip.AddrPort { return b.UDP.Addrs() }

// Close stops accepting, closes every session and stops every goroutine.
func (b *Balancer) Close() {
	if b.debug != nil {
		b.debug.Close() // removes the socket
	}
	if b.metrics != nil {
		b.metrics.Close()
	}
	b.UDP.Close()
	b.TCP.Close()
	b.Backends.Close()
	b.Table.Close()
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
	// An IPv6 socket is IPv6 only (IPV6_V6ONLY, as "udp6" and "tcp6"
	// make it), so that :: and 0.0.0.0 can both be bound.
	udp, tcp := "udp4", "tcp4"
	if addr.Addr().Is6() {
		udp, tcp = "udp6", "tcp6"
	}
	for i := 0; ; i++ {
		u, err := net.ListenUDP(udp, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return nil, nil, fmt.Errorf("UDP: %w", err)
		}
		port := u.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		t, err := net.ListenTCP(tcp, net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr.Addr(), port)))
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

// makeSocketDir creates the directory of the socket at path when it is
// missing (as /var/run/bbal is after a reboot where nothing made it), mode
// 0755, and returns it; "" when it was there already.
func makeSocketDir(path string) (string, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return "", nil // there, or an error that Listen will report
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("the debug socket's directory %s is missing and could not be created: %w", dir, err)
	}
	return dir, nil
}
