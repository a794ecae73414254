// Package server assembles a running bbal from its parts: the listeners,
// the backends, the remotes table, the timers and the debug socket. The
// bbal command builds one from its flags; tests build one on a fake clock.
// Its log is bunyan JSON (NewLogger); the command's goes through a [Log],
// so that a slow or vanished log reader never holds up DNS.
//
// # Start
//
// [Start] runs three steps: bind (the sockets bound, or inherited from a
// predecessor, and privileges dropped), wire (the parts built in
// dependency order and a predecessor's state restored into them) and
// startServing (the parts started; reading and accepting, unless a
// successor waits for its backends first). A failure in any step is
// logged as fatal and what was opened is closed again.
//
// # Restarts
//
// The package owns the mechanics of a restart without downtime
// ([Balancer.Handover], [Inherit], [Balancer.TakeOver]): the successor
// process, the descriptors it inherits, the ready pipe, and the state
// stream: a JSON line naming the backends and the remote records'
// format, then the records. What is in them, and how they are restored,
// belongs to their owners: [backend.Saved] and [backend.Set.RestoreSaved]
// for the backends, [remotes.Table.WriteSnapshot], [remotes.ReadSnapshot]
// and [remotes.Table.RestoreSnapshot] for the table.
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
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/cache"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// Config is what the command line sets.
type Config struct {
	SocketDir string       // the backend socket directory
	Listen    []netip.Addr // UDP and TCP, each; 0.0.0.0 when empty
	Port      uint16       // of every listen address; 0 picks one free for all
	// Readers is the number of UDP sockets, each with its reader, bound
	// to each listen address (-r); 1 when 0.
	Readers     int
	DebugSocket string // the debug socket's path; none when empty
	MetricsAddr string // also serve /metrics on this TCP address; none when empty
	MaxRemotes  int    // bound of the remotes table (remotes.DefaultMaxRemotes when 0)
	PrefixBits  int    // pin clients by this prefix length (32 when 0)
	// Standins is the range of IPv6 clients' stand-in IPv4 addresses;
	// the table applies its default (remotes.StandinRange).
	Standins netip.Prefix
	// Policy chooses the backend of a new remote.
	Policy placement.Policy
	// TCP connection limits; tcpproxy's defaults when 0.
	TCPMaxConns      int
	TCPMaxConnsPerIP int
	TCPIdleTimeout   time.Duration
	TCPMaxLifetime   time.Duration
	// ServfailWhenDown answers UDP queries SERVFAIL when no backend is
	// available, instead of dropping them.
	ServfailWhenDown bool
	// RateLimit, when set, limits each client's UDP queries (-q): one
	// over it is dropped, or answered truncated at the slip.
	RateLimit *remotes.Rate
	// StallFloor is the least threshold of stall detection (-A; see
	// placement.Stalls): a backend that answers none of its queries for
	// that long, or longer as its usual answer time says, is passed over
	// until it answers again. 0: no stall detection.
	StallFloor time.Duration
	// Probe, when its Name is set, is asked of every ok backend every
	// 5 s from ProbeSource, as a health check (-H): a backend that
	// answers none for 15 s is faulted.
	Probe Probe
	// User, when set, is who bbal runs as once its sockets are bound:
	// the debug socket is handed to that user and the process drops to
	// its uid and primary group before any backend is connected.
	User string
	// Cache, when set, is the answer cache's configuration (-c, -x).
	Cache *cache.Config
	// Dnstap, when its Network is set, is where each UDP client query
	// and response is logged in dnstap (-D).
	Dnstap dnstap.Target
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
	StallHold time.Duration // placement.DefaultStallHold when 0
	// AllReaders gives every UDP reader datagrams from the start,
	// rather than as many as the load needs (udpproxy.SteerReaders).
	AllReaders bool
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
	Picker   *Picker
	Table    *remotes.Table
	UDP      *udpproxy.Proxy
	TCP      *tcpproxy.Proxy
	Dnstap   *dnstap.Writer // nil without -D

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
	ls := &listeners{log: log}
	var probe []byte
	if cfg.Probe.Name != "" {
		var err error
		if probe, err = cfg.Probe.Query(); err != nil {
			ls.fail(err).Msg("invalid DNS health check")
			return nil, err
		}
	}
	if err := ls.bind(cfg); err != nil {
		return nil, err
	}
	b, err := wire(cfg, opt, ls, probe)
	if err != nil {
		return nil, err
	}
	b.startServing(opt, ls)
	return b, nil
}

// listeners are the sockets a Balancer serves on, bound or inherited,
// and what closes them again when the start fails.
type listeners struct {
	log     zerolog.Logger
	debug   *net.UnixListener // nil without a debug socket
	metrics net.Listener      // nil without -m
	udp     []*net.UDPConn    // Readers per listen address, in order
	retired []*net.UDPConn    // of udp, those inherited beyond Readers
	// steered: every address of more than one socket is steered by
	// DNS ID, so that the proxy may give its datagrams to as few
	// readers as the load needs.
	steered  bool
	tcp      []*net.TCPListener // one per listen address, in order
	debugDir string             // the debug socket's directory, when bbal made it
	undo     []func() error     // close what was opened (unlinking the debug socket)
}

// fail closes what was opened and returns the fatal log record of a
// start-up failure, for the caller to complete.
func (ls *listeners) fail(err error) *zerolog.Event {
	for _, f := range ls.undo {
		f()
	}
	return ls.log.WithLevel(zerolog.FatalLevel).Err(err)
}

// bind is Start's first step: it takes over the inherited sockets or
// binds the configured ones, drops privileges (-u) and logs the listen
// addresses. A failure is logged as fatal, with what was opened closed.
func (ls *listeners) bind(cfg Config) error {
	if cfg.Inherited != nil {
		ls.inherit(cfg.Inherited)
		ls.adjustReaders(max(cfg.Readers, 1))
	} else if err := ls.bindAll(cfg); err != nil {
		return err
	}
	if cfg.User != "" {
		if err := ls.dropTo(cfg); err != nil {
			return err
		}
	}
	ls.logAddrs()
	return nil
}

// inherit takes over the previous process's sockets.
func (ls *listeners) inherit(in *Inherited) {
	ls.debug, ls.metrics, ls.udp, ls.tcp = in.Debug, in.Metrics, in.UDP, in.TCP
	if d := ls.debug; d != nil {
		d.SetUnlinkOnClose(true) // ours to remove at exit now
		ls.undo = append(ls.undo, func() error { d.SetUnlinkOnClose(false); return d.Close() })
	}
	for _, u := range ls.udp {
		ls.undo = append(ls.undo, u.Close)
	}
	for _, t := range ls.tcp {
		ls.undo = append(ls.undo, t.Close)
	}
}

// bindAll binds the debug socket, the metrics listener, and UDP and TCP
// on every listen address (the port of the first for all, when cfg's is
// 0).
func (ls *listeners) bindAll(cfg Config) error {
	if cfg.DebugSocket != "" {
		if err := ls.bindDebug(cfg.DebugSocket); err != nil {
			return err
		}
	}
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			ls.fail(err).Str("address", cfg.MetricsAddr).Msg("failed to create metrics listener")
			return err
		}
		ls.metrics = ln
		ls.undo = append(ls.undo, ln.Close)
	}
	addrs := cfg.Listen
	if len(addrs) == 0 {
		addrs = []netip.Addr{netip.IPv4Unspecified()}
	}
	port := cfg.Port
	readers := max(cfg.Readers, 1)
	ls.steered = true
	for _, a := range addrs {
		u, t, err := listen(netip.AddrPortFrom(a, port))
		if err != nil {
			ls.fail(err).Str("address", a.String()).Uint16("port", port).Msg("failed to create listen sockets")
			return err
		}
		ls.undo = append(ls.undo, u.Close, t.Close)
		ls.udp, ls.tcp = append(ls.udp, u), append(ls.tcp, t)
		bound := u.LocalAddr().(*net.UDPAddr).AddrPort()
		port = bound.Port()
		for range readers - 1 {
			r, err := listenUDP(bound)
			if err != nil {
				ls.fail(err).Str("address", a.String()).Uint16("port", port).Msg("failed to create a reader's UDP socket")
				return err
			}
			ls.undo = append(ls.undo, r.Close)
			ls.udp = append(ls.udp, r)
		}
		if readers > 1 && !ls.steer(u, readers) {
			ls.steered = false
		}
	}
	return nil
}

// steer has the kernel spread the datagrams of first's address over
// the first n sockets of its group (udpproxy.SteerByID). Where it
// cannot (a kernel without SO_ATTACH_REUSEPORT_CBPF), the kernel's own
// hash of addresses and ports spreads them over all of the group, and
// that is logged.
func (ls *listeners) steer(first *net.UDPConn, n int) bool {
	if err := udpproxy.SteerByID(first, n); err != nil {
		ls.log.Warn().Err(err).Str("address", first.LocalAddr().String()).
			Msg("cannot steer datagrams to readers by DNS ID and port: the kernel spreads them by its own hash of addresses and ports")
		return false
	}
	return true
}

// adjustReaders makes the inherited UDP sockets readers per address:
// it binds more where fewer were handed over, and retires the rest
// where more were (they are read until the process ends, but given no
// new datagram and not handed on: closing one would lose what it
// holds). A socket that cannot be bound (the predecessor's were bound
// without SO_REUSEPORT, by a bbal before -r, or as root, which this
// process, run with -u, no longer is) leaves the address with fewer
// readers, and that is logged; so is a group whose extra sockets
// cannot be retired for want of steering: they stay readers.
func (ls *listeners) adjustReaders(readers int) {
	var udp, retired []*net.UDPConn
	ls.steered = true
	for _, group := range groupByAddr(ls.udp) {
		first := group[0]
		addr := first.LocalAddr().(*net.UDPAddr).AddrPort()
		inherited := len(group)
		for len(group) < readers {
			r, err := listenUDP(addr)
			if err != nil {
				ls.log.Warn().Err(err).Str("address", addr.String()).Int("readers", len(group)).Int("wanted", readers).
					Msg("cannot add a reader to the inherited UDP sockets (bound without SO_REUSEPORT by a bbal before -r, or by root before -u dropped privileges): serving with fewer until a full restart")
				break
			}
			ls.undo = append(ls.undo, r.Close)
			group = append(group, r)
		}
		// Until this process reads its sockets (the proxy steers them
		// from its Start on), only inherited ones, which the old process
		// still reads, are given datagrams: a new one's would wait
		// unread while this process waits for its backends.
		active := min(len(group), readers)
		if len(group) > 1 && !ls.steer(first, min(active, inherited)) {
			active, ls.steered = len(group), false
		}
		if active < len(group) {
			ls.log.Info().Str("address", addr.String()).Int("readers", active).Int("retired", len(group)-active).
				Msg("inherited more UDP sockets than readers: the rest get no new datagrams")
		}
		udp = append(udp, group...)
		retired = append(retired, group[active:]...)
	}
	ls.udp, ls.retired = udp, retired
}

// groupByAddr splits conns into runs of sockets bound to one address,
// in order.
func groupByAddr(conns []*net.UDPConn) [][]*net.UDPConn {
	var out [][]*net.UDPConn
	for _, c := range conns {
		a := c.LocalAddr().String()
		if n := len(out); n > 0 && out[n-1][0].LocalAddr().String() == a {
			out[n-1] = append(out[n-1], c)
		} else {
			out = append(out, []*net.UDPConn{c})
		}
	}
	return out
}

// bindDebug makes the debug socket at path, and its directory when that
// is missing.
func (ls *listeners) bindDebug(path string) error {
	made, err := makeSocketDir(path)
	if err == nil {
		if made != "" {
			ls.log.Info().Str("path", made).Msg("created the debug socket's directory")
			ls.debugDir = made
		}
		ls.debug, err = debugapi.Listen(path)
	}
	if err != nil {
		ls.fail(err).Str("path", path).Msg("failed to create debug socket")
		return err
	}
	ls.undo = append(ls.undo, ls.debug.Close)
	return nil
}

// dropTo makes the process run as cfg.User, handing it the debug socket
// (and the directory bbal made for it).
func (ls *listeners) dropTo(cfg Config) error {
	var owned []string
	if cfg.DebugSocket != "" {
		owned = append(owned, cfg.DebugSocket)
	}
	if ls.debugDir != "" {
		owned = append(owned, ls.debugDir)
	}
	if err := dropPrivileges(cfg.User, owned...); err != nil {
		ls.fail(err).Str("user", cfg.User).Msg("failed to drop privileges")
		return err
	}
	ls.log.Info().Str("user", cfg.User).Int("uid", os.Getuid()).Int("gid", os.Getgid()).Msg("running as user")
	if cfg.DebugSocket != "" {
		if dir := filepath.Dir(cfg.DebugSocket); unix.Access(dir, unix.W_OK) != nil {
			ls.log.Warn().Str("path", cfg.DebugSocket).Str("user", cfg.User).
				Msg("the debug socket's directory is not writable by the user: the socket will stay behind at exit (a new bbal replaces it)")
		}
	}
	return nil
}

func (ls *listeners) logAddrs() {
	for _, group := range groupByAddr(ls.udp) {
		addr := group[0].LocalAddr().(*net.UDPAddr).AddrPort()
		n := 0
		for _, u := range group {
			if !slices.Contains(ls.retired, u) {
				n++
			}
		}
		ls.log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Int("readers", n).Msg("listening for UDP packets")
	}
	for _, t := range ls.tcp {
		addr := t.Addr().(*net.TCPAddr).AddrPort()
		ls.log.Info().Str("address", addr.Addr().String()).Uint16("port", addr.Port()).Msg("listening for TCP packets")
	}
}

// wire is Start's second step: it builds the parts on the listeners, in
// dependency order, each handed what it uses, all of it built before it:
// the timers, the backends, placement over them, the remotes table
// (asking placement), the UDP and TCP proxies (routing with the table to
// the backends); and restores the previous process's state into them.
// Only the timers run. What the backends call of the parts after them
// (the UDP proxy's reply sink, the table's counts) they are handed at
// Start (startServing); their Down events the UDP proxy consumes.
// A failure is logged as fatal, with what was opened closed.
func wire(cfg Config, opt Options, ls *listeners, probe []byte) (*Balancer, error) {
	log := ls.log
	b := &Balancer{Log: log, Clock: opt.Clock, Started: opt.Clock.Now(), Timeouts: timeouts.New(opt.Clock), cfg: cfg}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopTimers = cancel
	b.timersDone.Add(1)
	go b.runTimers(ctx)

	b.Backends = backend.NewSet(b.backendConfig(opt.Backends, probe))
	b.Picker = NewPicker(b.Backends, placement.Config{Policy: cfg.Policy, Log: log, Clock: opt.Clock})

	rc := opt.Remotes
	rc.Backends, rc.Picker, rc.Timeouts, rc.Log = b.Backends, b.Picker, b.Timeouts, log
	rc.MaxRemotes, rc.PrefixBits, rc.Standins = cfg.MaxRemotes, cfg.PrefixBits, cfg.Standins
	b.Table = remotes.New(rc)

	var err error
	if cfg.Dnstap.Network != "" {
		host, _ := os.Hostname()
		b.Dnstap, err = dnstap.Open(dnstap.Config{Target: cfg.Dnstap, Identity: host, Version: "bbal " + debugapi.Version(),
			Timeouts: b.Timeouts, Log: log})
		if err != nil {
			cancel()
			b.timersDone.Wait()
			ls.fail(err).Msg("dnstap output cannot be opened")
			return nil, err
		}
	}
	if b.UDP, err = udpproxy.New(ls.udp, b.Table, b.Backends, b.Timeouts, log); err == nil {
		for _, c := range ls.retired {
			b.UDP.Retire(c)
		}
		if ls.steered {
			b.UDP.SteerReaders(!opt.AllReaders)
		}
	} else {
		if b.Dnstap != nil {
			b.Dnstap.Close()
		}
		cancel()
		b.timersDone.Wait()
		ls.fail(err).Msg("UDP socket")
		return nil, err
	}
	if b.Dnstap != nil {
		b.UDP.SetTap(b.Dnstap)
	}
	if cfg.ServfailWhenDown {
		b.UDP.ServfailWhenDown()
	}
	b.UDP.DetectStalls(cfg.StallFloor, opt.StallHold)
	if cfg.RateLimit != nil {
		b.UDP.LimitRate(*cfg.RateLimit)
	}
	if cfg.Cache != nil {
		c := cache.New(*cfg.Cache)
		b.UDP.SetCache(c)
		cc := c.Stats()
		log.Info().Int("entries", cc.Capacity).Int("bytes", cc.CapacityBytes).Uint32("max_ttl", cc.MaxTTL).
			Uint32("stale_limit", cc.StaleLimit).Msg("answer cache on")
	}

	b.TCP = tcpproxy.New(ls.tcp, tcpproxy.Config{
		Table: b.Table, Backends: b.Backends, Timeouts: b.Timeouts, Log: log, OKTimeout: opt.OKTimeout,
		MaxConns: cfg.TCPMaxConns, MaxConnsPerIP: cfg.TCPMaxConnsPerIP,
		IdleTimeout: cfg.TCPIdleTimeout, MaxLifetime: cfg.TCPMaxLifetime,
	})

	if in := cfg.Inherited; in != nil && in.State != nil {
		if err := b.restore(in.State); err != nil {
			b.Close()
			ls.fail(err).Msg("failed to take over the previous process's state")
			return nil, err
		}
	}
	if in := cfg.Inherited; in != nil && in.Cache != nil {
		b.restoreCache(in.Cache)
		in.Cache = nil
	}
	return b, nil
}

// Picker is placement over the backends: what the remotes table asks.
type Picker = placement.Picker[backend.ID, *backend.Backend]

// NewPicker returns placement by cfg over the backends of set.
func NewPicker(set *backend.Set, cfg placement.Config) *Picker {
	return placement.New[backend.ID, *backend.Backend](set, cfg)
}

// runTimers is the goroutine of the timers, until Close.
func (b *Balancer) runTimers(ctx context.Context) {
	defer b.timersDone.Done()
	b.Timeouts.Run(ctx)
}

// backendConfig completes bc (the durations and limits) with the rest
// of the configuration.
func (b *Balancer) backendConfig(bc backend.Config, probe []byte) backend.Config {
	cfg := b.cfg
	bc.Dir, bc.Log, bc.Timeouts = cfg.SocketDir, b.Log, b.Timeouts
	if probe != nil {
		src := remotes.ProbeSource(remotes.StandinRange(cfg.Standins))
		bc.Probe, bc.ProbeSource = probe, src
		b.Log.Info().Str("probe", cfg.Probe.String()).Str("probe_source", src.String()).
			Msg("health checks by DNS")
	}
	return bc
}

// primaries returns what counts, per backend, the remotes of table whose
// primary it is: the backends' Links.Primaries.
func primaries(table *remotes.Table) func() map[backend.ID]int {
	return func() map[backend.ID]int {
		out := map[backend.ID]int{}
		for id, c := range table.Counts() {
			if c.Primary > 0 {
				out[id] = c.Primary
			}
		}
		return out
	}
}

// startServing is Start's last step: it starts the backends' sessions,
// the table's maintenance, the debug socket and the metrics listener;
// then reading and accepting (Serve), except in a successor process,
// which first waits for its backends (TakeOver).
func (b *Balancer) startServing(opt Options, ls *listeners) {
	b.Backends.Start(backend.Links{Replies: b.UDP.Replies, Primaries: primaries(b.Table)})
	b.Table.Start()
	b.debugLn, b.metricsLn = ls.debug, ls.metrics

	src := debugapi.Sources{
		Backends: b.Backends, Table: b.Table, UDP: b.UDP, TCP: b.TCP,
		Timeouts: b.Timeouts, Clock: b.Clock, Started: b.Started, Log: b.Log,
		LogDrops: opt.LogDrops, Dnstap: b.Dnstap,
	}
	if ls.debug != nil {
		b.debug = debugapi.Serve(ls.debug, src, opt.DebugLimits)
		src.Debug = b.debug // its counters in the -m metrics too
		b.Log.Info().Str("path", b.cfg.DebugSocket).Msg("debug socket ready")
	}
	if ls.metrics != nil {
		b.serveMetrics(ls.metrics, src)
	}
	if b.cfg.Inherited == nil {
		b.Serve()
	}
}

// serveMetrics serves /metrics, /healthz and /readyz on ln (-m).
func (b *Balancer) serveMetrics(ln net.Listener, src debugapi.Sources) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", debugapi.MetricsHandler(src))
	healthz, readyz := debugapi.HealthHandlers(src)
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", readyz)
	b.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}
	go b.metrics.Serve(ln)
	b.Log.Info().Str("address", ln.Addr().String()).Msg("serving metrics")
}

// Serve starts reading the UDP socket and accepting TCP connections.
// Start calls it, except for a successor process, which first waits for
// its backends (see TakeOver).
func (b *Balancer) Serve() {
	b.UDP.Start()
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
	if b.Dnstap != nil {
		b.Dnstap.Close() // after the backends: no reply is told of it any more
	}
	b.Table.Close()
	b.stopTimers()
	b.timersDone.Wait()
}

// socketBuffer is the UDP socket buffer size asked for.
const socketBuffer = 4 << 20

// listen binds UDP and TCP on the same address and port. With port 0 it
// looks for a port free for both. TCP is bound first, without
// SO_REUSEPORT: a port some other process holds (another bbal) fails
// there, before a UDP socket could join its SO_REUSEPORT group and take
// a share of its datagrams.
func listen(addr netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	tries := 1
	if addr.Port() == 0 {
		tries = 20
	}
	// An IPv6 socket is IPv6 only (IPV6_V6ONLY, as "tcp6" makes it),
	// so that :: and 0.0.0.0 can both be bound.
	tcp := "tcp4"
	if addr.Addr().Is6() {
		tcp = "tcp6"
	}
	for i := 0; ; i++ {
		t, err := net.ListenTCP(tcp, net.TCPAddrFromAddrPort(addr))
		if err != nil {
			return nil, nil, fmt.Errorf("TCP: %w", err)
		}
		port := t.Addr().(*net.TCPAddr).AddrPort().Port()
		u, err := listenUDP(netip.AddrPortFrom(addr.Addr(), port))
		if err == nil {
			return u, t, nil
		}
		t.Close()
		if i+1 >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("UDP: %w", err)
		}
	}
}

// listenUDP binds a UDP socket to addr with SO_REUSEPORT, so that the
// readers of one address (and a successor's, at a restart without
// downtime) can each have one. The kernel lets only sockets of the same
// effective user join such a group: bbal's are bound before it drops
// privileges (-u), so only root can. An IPv6 socket is IPv6 only
// (IPV6_V6ONLY, as "udp6" makes it), so that :: and 0.0.0.0 can both
// be bound.
func listenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		return nil, err
	}
	u := pc.(*net.UDPConn)
	// Room for bursts; the kernel caps these at its
	// net.core.[rw]mem_max.
	u.SetReadBuffer(socketBuffer)
	u.SetWriteBuffer(socketBuffer)
	return u, nil
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
