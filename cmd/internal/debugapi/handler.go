package debugapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tcpproxy"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/dnstap"
)

// Sources are the parts of a running balancer the API reads and steers.
type Sources struct {
	Backends *backend.Set
	Table    *remotes.Table
	UDP      *udpproxy.Proxy
	TCP      *tcpproxy.Proxy
	Timeouts *timeouts.Set
	Clock    timeouts.Clock
	Started  time.Time
	Log      zerolog.Logger
	LogDrops LogCounters // nil when the log's drops are not counted
	// Debug is the debug socket's server, for its counters in the
	// metrics served elsewhere (-m); Serve sets it for its own.
	Debug *Server
	// Dnstap is the dnstap writer (-D); nil, none: its counts are 0.
	Dnstap *dnstap.Writer
}

// Limits bound what one client of the debug socket may take.
type Limits struct {
	MaxConns      int           // connections open at once (16); at the cap a new one evicts the oldest idle one
	HeaderTimeout time.Duration // to send a request's headers (5 s)
	WriteTimeout  time.Duration // for each write of a response (10 s)
	IdleTimeout   time.Duration // between requests on one connection (30 s)
}

// DefaultLimits are the limits production uses.
var DefaultLimits = Limits{MaxConns: 16, HeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}

// Server serves the API on the debug socket. Create it with Serve.
type Server struct {
	ln   *connSet
	srv  *http.Server
	done chan struct{}
}

// Serve serves the API on ln, which it owns from then on, until Close.
// Zero fields of lim take DefaultLimits.
func Serve(ln *net.UnixListener, src Sources, lim Limits) *Server {
	if lim.MaxConns <= 0 {
		lim.MaxConns = DefaultLimits.MaxConns
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&lim.HeaderTimeout, DefaultLimits.HeaderTimeout},
		{&lim.WriteTimeout, DefaultLimits.WriteTimeout},
		{&lim.IdleTimeout, DefaultLimits.IdleTimeout},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if src.Clock == nil {
		src.Clock = timeouts.System
	}
	s := &Server{ln: newConnSet(ln, lim.MaxConns, src.Clock, src.Log), done: make(chan struct{})}
	src.Debug = s
	s.srv = &http.Server{
		Handler:           newHandler(src, lim.WriteTimeout),
		ConnState:         s.ln.setState,
		ReadHeaderTimeout: lim.HeaderTimeout,
		ReadTimeout:       lim.HeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    8 << 10,
		// The server's own complaints (accept errors, bad requests)
		// go to bbal's log, at debug level.
		ErrorLog: stdlog.New(debugWriter{src.Log}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, peerKey{}, pc.peer)
			}
			return ctx
		},
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(s.ln)
	}()
	return s
}

// debugWriter writes net/http's log lines as debug records.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Str("component", "debug socket").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ConnStats are the debug socket's connection counters.
type ConnStats struct {
	Open    int    `json:"conns"`   // connections open now
	Evicted uint64 `json:"evicted"` // idle connections closed to make room for a new one
	Refused uint64 `json:"refused"` // new connections closed because every open one was busy
}

// Conns returns the number of connections open now.
func (s *Server) Conns() int { return s.ln.open() }

// Stats returns the connection counters.
func (s *Server) Stats() ConnStats {
	return ConnStats{Open: s.ln.open(), Evicted: s.ln.evicted.Load(), Refused: s.ln.refused.Load()}
}

// ResetCounters sets the counters back to zero.
func (s *Server) ResetCounters() {
	s.ln.evicted.Store(0)
	s.ln.refused.Store(0)
}

// File returns a duplicate of the listening socket's descriptor, for a
// successor process.
func (s *Server) File() (*os.File, error) { return s.ln.File() }

// CloseKeepSocket is Close for a process that hands the socket over: the
// socket file stays for the successor.
func (s *Server) CloseKeepSocket() {
	s.ln.SetUnlinkOnClose(false)
	s.Close()
}

// Close stops the server, closes its connections and removes the socket.
func (s *Server) Close() {
	s.srv.Close()
	<-s.done
}

// newHandler returns the API's handler.
func newHandler(src Sources, writeTimeout time.Duration) http.Handler {
	a := &api{src: src, metrics: MetricsHandler(src), writeTimeout: writeTimeout}
	mux := http.NewServeMux()
	route := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, h)
		// The same path with another method: 405, in JSON.
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", method)
			fail(w, http.StatusMethodNotAllowed, "%s %s: use %s", r.Method, r.URL.Path, method)
		})
	}
	route("GET", "/v1/backends", a.backends)
	route("GET", "/v1/backends/{id}", a.backend)
	route("POST", "/v1/backends/{id}/{action}", a.backendAction)
	route("GET", "/v1/remotes", a.remotes)
	route("GET", "/v1/timeouts", a.timeouts)
	route("GET", "/v1/stats", a.stats)
	route("GET", "/v1/top", a.top)
	route("GET", "/v1/cache", a.cacheStats)
	route("POST", "/v1/cache/flush", a.cacheFlush)
	route("POST", "/v1/counters/reset", a.reset)
	route("GET", "/metrics", a.metrics.ServeHTTP)
	healthz, readyz := HealthHandlers(src)
	route("GET", "/healthz", healthz)
	route("GET", "/readyz", readyz)
	// The Go profiler, for the owner of the socket (go tool pprof can
	// read it through curl --unix-socket).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > 0 {
			fail(w, http.StatusRequestEntityTooLarge, "requests take no body")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 0)
		mux.ServeHTTP(w, r)
	})
}

type api struct {
	src          Sources
	metrics      http.Handler
	writeTimeout time.Duration
	mu           sync.Mutex // serialises control actions
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(ErrorReply{Error: fmt.Sprintf(format, args...)})
}

func (a *api) reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(a.writeTimeout))
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// checkQuery refuses query parameters other than allowed.
func checkQuery(w http.ResponseWriter, r *http.Request, allowed ...string) bool {
	for k := range r.URL.Query() {
		found := false
		for _, a := range allowed {
			found = found || k == a
		}
		if !found {
			fail(w, http.StatusBadRequest, "unknown parameter %q", k)
			return false
		}
	}
	return true
}

func (a *api) backendInfo(b *backend.Backend, counts map[backend.ID]remotes.Counts) Backend {
	st := b.Stats()
	out := Backend{
		ID: uint16(st.ID), Path: backend.EscapePath(st.Path), State: st.State.String(), Since: st.Since.UTC(),
		OK: st.OK, Admin: st.Admin.String(),
		Remotes: counts[st.ID].Primary, BackupRemotes: counts[st.ID].Backup,
		Counts: st.Counts, TCPActive: st.TCPActive,
		Faults:                st.Faults,
		ReconnectDelaySeconds: st.ReconnectDelay.Seconds(),
		HeartbeatRTTSeconds:   st.HeartbeatRTT.Seconds(),
		QueueBytes:            st.QueuedBytes, QueueFrames: st.QueuedFrames,
		Weight: st.Weight, Slow: st.Slow, Outstanding: st.Outstanding,
		LatencySeconds: st.Latency.Seconds(), Answered: st.Answered, Unanswered: st.Unanswered,
		Evicted: st.Evicted, Resent: st.Resent,
		Stalled: st.Stalled, Avoided: st.Avoided, Stalls: st.Stalls,
		StalledSeconds: st.StalledTime.Seconds(), StalledSent: st.StalledSent,
		SilenceMaxSeconds: st.SilenceMax.Seconds(),
	}
	if st.Stalled {
		since := st.StallSince.UTC()
		out.StallSince = &since
	}
	for _, n := range st.Faults {
		out.FaultsTotal += n
	}
	if p := st.Probes; p.Enabled {
		out.Probes = &Probes{Sent: p.Sent, Answered: p.Answered, Failed: p.Failed, RTTSeconds: p.RTT.Seconds()}
	}
	return out
}

func (a *api) now() time.Time { return a.src.Clock.Now().UTC() }

func (a *api) backends(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	counts := a.src.Table.Counts()
	out := BackendsReply{Now: a.now(), Backends: []Backend{}}
	for _, b := range a.src.Backends.All() {
		out.Backends = append(out.Backends, a.backendInfo(b, counts))
	}
	a.reply(w, out)
}

// lookup resolves the {id} of the path, writing the error if it fails.
func (a *api) lookup(w http.ResponseWriter, r *http.Request) *backend.Backend {
	raw := r.PathValue("id")
	id, err := strconv.ParseUint(raw, 10, 16)
	if err != nil || id == 0 {
		fail(w, http.StatusBadRequest, "bad backend ID %q", raw)
		return nil
	}
	b := a.src.Backends.Get(backend.ID(id))
	if b == nil {
		fail(w, http.StatusNotFound, "no backend %d", id)
	}
	return b
}

func (a *api) backend(w http.ResponseWriter, r *http.Request) {
	if b := a.lookup(w, r); b != nil {
		a.reply(w, a.backendInfo(b, a.src.Table.Counts()))
	}
}

var actions = map[string]backend.Admin{
	"enable":  backend.AdminEnabled,
	"disable": backend.AdminDisabled,
	"drain":   backend.AdminDraining,
}

func (a *api) backendAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if action == "weight" {
		a.weight(w, r)
		return
	}
	to, ok := actions[action]
	if !ok {
		fail(w, http.StatusNotFound, "unknown action %q (want enable, disable, drain or weight)", action)
		return
	}
	if !checkQuery(w, r) {
		return
	}
	b := a.lookup(w, r)
	if b == nil {
		return
	}
	a.mu.Lock()
	from := b.SetAdmin(to)
	a.mu.Unlock()
	peer, _ := PeerOf(r.Context())
	a.src.Log.Info().Uint16("be_id", uint16(b.ID())).Str("be_path", b.Path()).
		Str("from", from.String()).Str("to", to.String()).Int("uid", peer.UID).Int("pid", peer.PID).
		Msg("backend " + to.String() + " by operator")
	a.reply(w, a.backendInfo(b, a.src.Table.Counts()))
}

// weight sets a backend's weight: POST /v1/backends/{id}/weight?value=N.
func (a *api) weight(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r, "value") {
		return
	}
	b := a.lookup(w, r)
	if b == nil {
		return
	}
	v := r.URL.Query().Get("value")
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > placement.MaxWeight {
		fail(w, http.StatusBadRequest, "bad weight %q (want 1 to %d)", v, placement.MaxWeight)
		return
	}
	a.mu.Lock()
	from := b.Weight()
	b.SetWeight(n)
	a.mu.Unlock()
	peer, _ := PeerOf(r.Context())
	a.src.Log.Info().Uint16("be_id", uint16(b.ID())).Str("be_path", b.Path()).
		Int("from", from).Int("to", n).Int("uid", peer.UID).Int("pid", peer.PID).
		Msg("backend weight set by operator")
	a.reply(w, a.backendInfo(b, a.src.Table.Counts()))
}

func (a *api) reset(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	a.mu.Lock()
	a.src.Backends.ResetCounters()
	a.src.UDP.ResetCounters()
	a.src.TCP.ResetCounters()
	a.src.Table.ResetCounters()
	if a.src.LogDrops != nil {
		a.src.LogDrops.ResetCounters()
	}
	if a.src.Debug != nil {
		a.src.Debug.ResetCounters()
	}
	a.src.Dnstap.ResetCounters()
	a.src.UDP.Cache().ResetCounters()
	a.mu.Unlock()
	peer, _ := PeerOf(r.Context())
	a.src.Log.Info().Int("uid", peer.UID).Int("pid", peer.PID).Msg("counters reset by operator")
	a.reply(w, struct {
		Reset bool `json:"reset"`
	}{true})
}

func (a *api) remoteInfo(in remotes.Info, now time.Time) Remote {
	var standin string
	if in.Standin.IsValid() {
		standin = in.Standin.String()
	}
	return Remote{
		Standin: standin,
		IP:      in.Addr.String(), Backend: uint16(in.Primary), Backup: uint16(in.Backup),
		UDP: in.UDP, TCP: in.TCP, Drops: in.Drops,
		FirstSeen: in.FirstSeen.UTC(), LastSeen: in.LastSeen.UTC(),
		RateLimited: in.RateLimited, Limited: in.Limited(now),
	}
}

// remotes streams the table as {"now": ..., "remotes": [...]}, a chunk at
// a time, never holding more than a chunk of it in memory.
func (a *api) remotes(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r, "backend", "ip", "limited") {
		return
	}
	q := r.URL.Query()
	var limited bool
	switch v := q.Get("limited"); v {
	case "", "0":
	case "1":
		limited = true
	default:
		fail(w, http.StatusBadRequest, "bad limited %q (want 1 for only the clients over their rate limit)", v)
		return
	}
	var only backend.ID
	if v := q.Get("backend"); v != "" {
		id, err := strconv.ParseUint(v, 10, 16)
		if err != nil || id == 0 {
			fail(w, http.StatusBadRequest, "bad backend ID %q", v)
			return
		}
		if a.src.Backends.Get(backend.ID(id)) == nil {
			fail(w, http.StatusNotFound, "no backend %d", id)
			return
		}
		only = backend.ID(id)
	}
	var ip netip.Addr
	if v := q.Get("ip"); v != "" {
		addr, err := netip.ParseAddr(v)
		if err != nil || addr.Zone() != "" {
			fail(w, http.StatusBadRequest, "bad IP address %q", v)
			return
		}
		ip = addr.Unmap()
	}

	w.Header().Set("Content-Type", "application/json")
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(a.writeTimeout))
	bw := bufio.NewWriterSize(w, 32<<10)
	at := a.now()
	now, _ := json.Marshal(at)
	fmt.Fprintf(bw, "{\"now\":%s,\"remotes\":[", now)
	n := 0
	emit := func(in remotes.Info) bool {
		if only != 0 && in.Primary != only && in.Backup != only {
			return true
		}
		ri := a.remoteInfo(in, at)
		if limited && !ri.Limited {
			return true
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n")
		j, _ := json.Marshal(ri)
		bw.Write(j)
		n++
		if bw.Buffered() > 16<<10 {
			rc.SetWriteDeadline(time.Now().Add(a.writeTimeout))
			if bw.Flush() != nil {
				return false
			}
		}
		return true
	}
	if ip.IsValid() {
		if in, ok := a.src.Table.Lookup(ip); ok {
			emit(in)
		}
	} else {
		a.src.Table.Walk(r.Context(), netip.Addr{}, emit)
	}
	bw.WriteString("\n]}\n")
	bw.Flush()
}

func (a *api) timeouts(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	now := a.now()
	out := TimeoutsReply{Now: now, Timeouts: []Timeout{}}
	for _, e := range a.src.Timeouts.List() {
		out.Timeouts = append(out.Timeouts, Timeout{Name: e.Name, Due: e.Due.UTC(), InSeconds: e.Due.Sub(now).Seconds()})
	}
	a.reply(w, out)
}

func (a *api) stats(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	now := a.now()
	var out Stats
	out.Version = Version()
	out.Now, out.Started = now, a.src.Started.UTC()
	out.UptimeSeconds = now.Sub(a.src.Started).Seconds()
	out.ListenUDP = a.src.UDP.Addr().String()
	out.ListenTCP = a.src.TCP.Addr().String()
	for _, l := range a.src.UDP.Addrs() {
		out.Listen = append(out.Listen, l.String())
	}
	out.Readers = readers(a.src.UDP.Readers())
	out.Standins = a.src.Table.Standins().String()
	if r := a.src.UDP.Rate(); r != nil {
		out.RateLimit = r.String()
	}
	out.NoStandin = a.src.Table.NoStandin()
	us := a.src.UDP.Stats()
	out.UDP = us.Counts
	ts := a.src.TCP.Stats()
	out.TCP.Counts, out.TCP.Active, out.TCP.Limits = ts.Counts, ts.Active, ts.Limits
	out.Drops = map[string]map[string]uint64{"udp": us.Drops, "tcp": ts.Drops}
	out.Remotes = a.src.Table.Len()
	out.RemotesMax = a.src.Table.MaxRemotes()
	out.Unpinned = a.src.Table.Unpinned()
	out.ScanPauseMaxSeconds = a.src.Table.MaxPause().Seconds()
	out.Discovery = a.src.Backends.Discovery()
	for _, b := range a.src.Backends.All() {
		out.Backends++
		if b.OK() {
			out.BackendsOK++
		}
	}
	if a.src.Debug != nil {
		out.Debug = a.src.Debug.Stats()
	}
	out.Dnstap = a.src.Dnstap.Stats()
	out.Goroutines = runtime.NumGoroutine()
	out.RSSBytes = rss()
	if a.src.LogDrops != nil {
		out.LogDropped = a.src.LogDrops.Drops()
	}
	a.reply(w, out)
}

// readers returns the readers as GET /v1/stats shows them, each with its
// share of its address's datagrams.
func readers(rs []udpproxy.Reader) []Reader {
	total, number := map[netip.AddrPort]uint64{}, map[netip.AddrPort]int{}
	for _, r := range rs {
		total[r.Addr] += r.Datagrams
	}
	out := make([]Reader, len(rs))
	for i, r := range rs {
		out[i] = Reader{Address: r.Addr.String(), Number: number[r.Addr], Datagrams: r.Datagrams, Reads: r.Reads,
			Active: r.Active, Retired: r.Retired}
		number[r.Addr]++
		if t := total[r.Addr]; t > 0 {
			out[i].Share = float64(r.Datagrams) / float64(t)
		}
	}
	return out
}

// rss returns the process's resident set size, from /proc.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// version is set at link time by the Makefile (git describe).
var version string

// Version is bbal's version: what the Makefile stamped, or else the
// module version and VCS revision the build recorded.
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " " + rev[:min(12, len(rev))] + dirty
	}
	return v
}
