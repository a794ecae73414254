package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/cache"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// config is the command line, checked.
type config struct {
	socketDir   string
	listen      []netip.Addr
	port        uint16
	readers     int
	standins    netip.Prefix
	policy      placement.Policy
	level       zerolog.Level
	debugSocket string
	metricsAddr string
	maxRemotes  int
	prefixBits  int
	tcpMax      int
	tcpPerIP    int
	tcpIdle     time.Duration
	tcpLife     time.Duration
	servfail    bool
	stallFloor  time.Duration
	rateLimit   *remotes.Rate
	user        string
	probe       server.Probe
	dnstap      dnstap.Target
	cache       *cache.Config
}

const usage = `usage: bbal -s DIR [-b ADDR]... [-p PORT] [-r N] [-l LEVEL] [-S PATH] [-m ADDR:PORT]
            [-R MAX] [-M BITS] [-6 PREFIX] [-P POLICY] [-T MAX] [-C MAX]
            [-I SECS] [-L SECS] [-F] [-A MS] [-q QPS[/BURST[/SLIP]]]
            [-u USER] [-H NAME[/TYPE]] [-D unix:PATH|file:PATH|tcp:ADDR:PORT]
            [-c ENTRIES[/MAXTTL]] [-x SECS]

  -s DIR    directory of backend sockets (required)
  -b ADDR   address to listen on, IPv4 or IPv6; give -b again for more
            (e.g. -b 0.0.0.0 -b ::) (default 0.0.0.0)
  -p PORT   UDP and TCP port to listen on (default 53; 0 picks a free one)
  -r N      UDP readers per listen address, 1 to 64: each a socket of its
            own (SO_REUSEPORT) read on a core of its own, as many of them
            given datagrams as the load needs (default: one per usable
            CPU, as the process's CPU affinity and cgroup limit allow)
  -l LEVEL  log level: trace, debug, info, warn, error, fatal (default info);
            the environment variable LOG_LEVEL overrides it
  -S PATH   debug socket for balstat (default /var/run/bbal.sock)
  -m ADDR:PORT
            also serve Prometheus metrics and health checks (/metrics,
            /healthz and /readyz only) over TCP here
  -R MAX    at most MAX remotes (clients) pinned to backends (default
            1000000); more are served by a hash of their address
  -M BITS   pin IPv4 clients by network prefix, e.g. 24 for a /24
            (default 32)
  -6 PREFIX IPv4 range of IPv6 clients' stand-in addresses, which the
            backends see (default 240.0.0.0/4); a range outside reserved
            and documentation space is refused unless written PREFIX,force
  -P POLICY backend of a new client: rr (round-robin, the original's) or
            least-loaded (fewest queries outstanding; slow backends shed
            clients) (default rr)
  -T MAX    at most MAX client TCP connections at once (default 4096)
  -C MAX    at most MAX client TCP connections from one address (default 64)
  -I SECS   close a TCP connection idle this long, with no query
            outstanding, or whose answers its client leaves unread this
            long (default 5)
  -L SECS   close a TCP connection this old (default 300)
  -F        answer SERVFAIL to UDP queries when no backend is available
            (default: drop them, as mname-balancer does)
  -A MS     a backend that leaves its UDP queries unanswered this long
            while answering none (or 8 times its usual answer time, up to
            800 ms) is stalled: its clients go to their backups and its
            unanswered queries are sent to them, until it answers again;
            0 turns this off (default 250)
  -q QPS[/BURST[/SLIP]]
            limit each client (each -M network) to QPS UDP queries a second,
            BURST at once (QPS when not given); of those over it, every
            SLIP-th is answered truncated, for a retry over TCP, and the
            rest dropped (2 when not given; 0: all dropped)
            (default: no limit)
  -u USER   once the sockets are bound, run as USER and its group (the
            debug socket is handed to USER)
  -H NAME[/TYPE]
            health check by DNS: ask each backend this question (type A
            when none is given, e.g. example.com/SOA) every 5 s from
            240.0.0.1; a backend that answers none for 15 s is faulted
            (default: heartbeats only)
  -D unix:PATH|file:PATH|tcp:ADDR:PORT
            log each UDP client query and response in dnstap (Frame
            Streams) to a collector's socket or to a file; a slow or lost
            collector costs dropped (counted) messages, never answers
  -c ENTRIES[/MAXTTL]
            answer repeated UDP queries from a cache of ENTRIES answers
            (8 to 4194304; 512 bytes of answers each), each kept for its
            TTL, at most MAXTTL seconds (3600 when not given); only with
            backends whose answers do not depend on the client's address
            (default: no cache)
  -x SECS   with -c, answer from an expired entry, up to SECS after it
            expired, a query whose backend cannot take it (serve-stale;
            0: never) (default 86400)
`

// errHelp asks for the usage text and a successful exit.
var errHelp = errors.New("help requested")

// parseArgs checks the command line. getenv supplies LOG_LEVEL.
func parseArgs(args []string, getenv func(string) string) (config, error) {
	fs := flag.NewFlagSet("bbal", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("s", "", "")
	var addrs listenAddrs
	fs.Var(&addrs, "b", "")
	standins := fs.String("6", "", "")
	policy := fs.String("P", "rr", "")
	port := fs.String("p", "53", "")
	readers := fs.String("r", "", "")
	level := fs.String("l", "info", "")
	debug := fs.String("S", debugapi.DefaultSocket, "")
	metrics := fs.String("m", "", "")
	maxRemotes := fs.Int("R", remotes.DefaultMaxRemotes, "")
	prefixBits := fs.Int("M", 32, "")
	tcpMax := fs.Int("T", tcpproxy.DefaultMaxConns, "")
	tcpPerIP := fs.Int("C", tcpproxy.DefaultMaxConnsPerIP, "")
	tcpIdle := fs.String("I", secs(tcpproxy.DefaultIdleTimeout), "")
	tcpLife := fs.String("L", secs(tcpproxy.DefaultMaxLifetime), "")
	servfail := fs.Bool("F", false, "")
	rate := fs.String("q", "", "")
	stall := fs.String("A", strconv.Itoa(int(placement.DefaultStallFloor/time.Millisecond)), "")
	runAs := fs.String("u", "", "")
	probe := fs.String("H", "", "")
	tap := fs.String("D", "", "")
	cacheSize := fs.String("c", "", "")
	stale := fs.String("x", strconv.Itoa(cache.DefaultStale), "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, errHelp
		}
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *dir == "" {
		return config{}, errors.New("must specify socket directory (-s)")
	}
	if len(addrs) == 0 {
		addrs = listenAddrs{netip.IPv4Unspecified()}
	}
	var sp netip.Prefix // without -6, none: the table's default
	if given(fs, "6") {
		var err error
		if sp, err = parseStandins(*standins); err != nil {
			return config{}, err
		}
	}
	for _, a := range addrs {
		if r := remotes.StandinRange(sp); r.Contains(a) {
			return config{}, fmt.Errorf("listen address %v is within the stand-in range -6 %v", a, r)
		}
	}
	pol, ok := placement.ParsePolicy(*policy)
	if !ok {
		if _, err := strconv.Atoi(*policy); err == nil {
			return config{}, fmt.Errorf("invalid -P %q: -P takes a policy, rr or least-loaded (the per-address TCP connection limit is -C)", *policy)
		}
		return config{}, fmt.Errorf("invalid -P %q (want rr or least-loaded)", *policy)
	}
	p, err := strconv.ParseUint(*port, 10, 16)
	if err != nil {
		return config{}, fmt.Errorf("invalid port for -p: %q (want 0 to 65535)", *port)
	}
	nr := defaultReaders()
	if given(fs, "r") {
		if nr, err = parseReaders(*readers); err != nil {
			return config{}, err
		}
	}
	if len(addrs)*nr > udpproxy.MaxListeners {
		return config{}, fmt.Errorf("-r %d readers for each of %d listen addresses is %d UDP sockets (want at most %d)",
			nr, len(addrs), len(addrs)*nr, udpproxy.MaxListeners)
	}
	lvl, err := server.ParseLevel(*level)
	if err != nil {
		return config{}, fmt.Errorf("-l: %w", err)
	}
	if env := getenv("LOG_LEVEL"); env != "" {
		if lvl, err = server.ParseLevel(env); err != nil {
			return config{}, fmt.Errorf("LOG_LEVEL: %w", err)
		}
	}
	if *debug == "" {
		return config{}, errors.New("-S needs a path")
	}
	if within(*dir, *debug) {
		return config{}, fmt.Errorf("the debug socket -S %s must not be inside the backend socket directory %s", *debug, *dir)
	}
	if *metrics != "" {
		if _, err := netip.ParseAddrPort(*metrics); err != nil {
			return config{}, fmt.Errorf("invalid address for -m: %q (want ADDR:PORT)", *metrics)
		}
	}
	if *maxRemotes < 1 {
		return config{}, fmt.Errorf("invalid -R %d (want at least 1)", *maxRemotes)
	}
	if *prefixBits < 1 || *prefixBits > 32 {
		return config{}, fmt.Errorf("invalid -M %d (want 1 to 32)", *prefixBits)
	}
	if *tcpMax < 1 {
		return config{}, fmt.Errorf("invalid -T %d (want at least 1)", *tcpMax)
	}
	if *tcpPerIP < 1 {
		return config{}, fmt.Errorf("invalid -C %d (want at least 1)", *tcpPerIP)
	}
	idle, err := parseSecs("-I", *tcpIdle)
	if err != nil {
		return config{}, err
	}
	life, err := parseSecs("-L", *tcpLife)
	if err != nil {
		return config{}, err
	}
	stallFloor, err := parseStallFloor(*stall)
	if err != nil {
		return config{}, err
	}
	var rl *remotes.Rate
	if given(fs, "q") {
		r, err := remotes.ParseRate(*rate)
		if err != nil {
			return config{}, err
		}
		rl = &r
	}
	var pr server.Probe
	if given(fs, "H") {
		if *probe == "" {
			return config{}, errors.New("-H needs a name, e.g. -H example.com/SOA (leave -H out for no health checks)")
		}
		if pr, err = server.ParseProbe(*probe); err != nil {
			return config{}, fmt.Errorf("-H: %w", err)
		}
	}
	var dt dnstap.Target
	if given(fs, "D") {
		if dt, err = dnstap.ParseTarget(*tap); err != nil {
			return config{}, err
		}
	}
	var cc *cache.Config
	if given(fs, "c") {
		if cc, err = parseCache(*cacheSize, *stale); err != nil {
			return config{}, err
		}
	} else if given(fs, "x") {
		return config{}, errors.New("-x needs -c: serve-stale answers from the answer cache")
	}
	return config{
		cache:       cc,
		dnstap:      dt,
		tcpMax:      *tcpMax,
		tcpPerIP:    *tcpPerIP,
		tcpIdle:     idle,
		tcpLife:     life,
		servfail:    *servfail,
		stallFloor:  stallFloor,
		rateLimit:   rl,
		user:        *runAs,
		probe:       pr,
		maxRemotes:  *maxRemotes,
		prefixBits:  *prefixBits,
		socketDir:   *dir,
		listen:      addrs,
		port:        uint16(p),
		readers:     nr,
		standins:    sp,
		policy:      pol,
		level:       lvl,
		debugSocket: *debug,
		metricsAddr: *metrics,
	}, nil
}

// maxReaders bounds -r: past a reader per core, more only cost.
const maxReaders = 64

// defaultReaders is one reader per CPU the process may use: GOMAXPROCS,
// which the Go runtime sets from the CPU affinity and the cgroup's CPU
// limit.
func defaultReaders() int { return min(runtime.GOMAXPROCS(0), maxReaders) }

func parseReaders(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxReaders {
		return 0, fmt.Errorf("invalid -r %q (want 1 to %d UDP readers per listen address)", v, maxReaders)
	}
	return n, nil
}

// given reports whether the flag name was on the command line.
func given(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// standinSafe are the IPv4 blocks no real client has an address in:
// reserved, benchmarking and documentation space (RFC 6890). A stand-in
// range elsewhere would take real clients' addresses, whose queries are
// then dropped (standin_range).
var standinSafe = []netip.Prefix{
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
}

// forceSuffix after a -6 range takes it although real clients may use it.
const forceSuffix = ",force"

// parseStandins parses -6: an IPv4 prefix of /1 to /30, inside one of
// the standinSafe blocks unless it ends in forceSuffix.
func parseStandins(v string) (netip.Prefix, error) {
	arg, force := strings.CutSuffix(v, forceSuffix)
	sp, err := netip.ParsePrefix(arg)
	if err != nil || !sp.Addr().Is4() || sp.Bits() < 1 || sp.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("invalid -6 %q (want an IPv4 prefix, /1 to /30, such as 240.0.0.0/4)", v)
	}
	sp = sp.Masked()
	if !force && !slices.ContainsFunc(standinSafe, func(b netip.Prefix) bool {
		return b.Bits() <= sp.Bits() && b.Contains(sp.Addr())
	}) {
		return netip.Prefix{}, fmt.Errorf("-6 %v may hold real clients' addresses, whose queries would be dropped; "+
			"use a range within 240.0.0.0/4, 198.18.0.0/15 or a documentation block, or write -6 %v%s to use it anyway",
			sp, sp, forceSuffix)
	}
	return sp, nil
}

// maxListen bounds the -b addresses.
const maxListen = 16

// listenAddrs is the -b flag: each use adds an address.
type listenAddrs []netip.Addr

func (l *listenAddrs) String() string { return fmt.Sprint(*l) }

func (l *listenAddrs) Set(v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return errors.New("want an IPv4 or IPv6 address")
	}
	a = a.Unmap()
	if slices.Contains(*l, a) {
		return errors.New("given twice")
	}
	if len(*l) == maxListen {
		return fmt.Errorf("more than %d listen addresses", maxListen)
	}
	*l = append(*l, a)
	return nil
}

// secs formats a duration as the seconds the flags take.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// parseSecs parses a flag's seconds (decimals allowed), more than 0.
func parseSecs(flag, v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f > 1e6 {
		return 0, fmt.Errorf("invalid %s %q (want seconds, more than 0)", flag, v)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// parseStallFloor parses -A: milliseconds (or a duration with its
// unit, e.g. 300ms), 0 for none, else from 10 ms to
// placement.MaxStallThreshold.
func parseStallFloor(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if n, nerr := strconv.ParseUint(v, 10, 32); nerr == nil {
		d, err = time.Duration(n)*time.Millisecond, nil
	}
	maxMS := int(placement.MaxStallThreshold / time.Millisecond)
	if err != nil || d != 0 && (d < 10*time.Millisecond || d > placement.MaxStallThreshold) {
		return 0, fmt.Errorf("invalid -A %q (want milliseconds, 10 to %d, or 0 for no stall detection)", v, maxMS)
	}
	return d, nil
}

// maxStale bounds -x: a week.
const maxStale = 7 * 86400

// parseCache parses -c ENTRIES[/MAXTTL] and -x SECS.
func parseCache(v, stale string) (*cache.Config, error) {
	bad := fmt.Errorf("invalid -c %q (want ENTRIES, %d to %d, and optionally /MAXTTL, seconds from 1 to %d)",
		v, cache.MinEntries, cache.MaxEntries, maxStale)
	entries, ttl, hasTTL := strings.Cut(v, "/")
	n, err := strconv.Atoi(entries)
	if err != nil || n < cache.MinEntries || n > cache.MaxEntries {
		return nil, bad
	}
	c := cache.Config{Entries: n, MaxTTL: cache.DefaultMaxTTL}
	if hasTTL {
		t, err := strconv.ParseUint(ttl, 10, 32)
		if err != nil || t < 1 || t > maxStale {
			return nil, bad
		}
		c.MaxTTL = uint32(t)
	}
	x, err := strconv.ParseUint(stale, 10, 32)
	if err != nil || x > maxStale {
		return nil, fmt.Errorf("invalid -x %q (want seconds, 0 to %d)", stale, maxStale)
	}
	c.Stale = uint32(x)
	return &c, nil
}

// within reports whether path is in the directory dir or below it, after
// resolving what symbolic links exist.
func within(dir, path string) bool {
	resolve := func(p string) string {
		p, _ = filepath.Abs(p)
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return p
	}
	rel, err := filepath.Rel(resolve(dir), resolve(filepath.Dir(path)))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
