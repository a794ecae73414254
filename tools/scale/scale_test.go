package scale_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/tools/dnsbackend"
	"github.com/bbal/bbal/tools/testbed"
)

// The topology of package scale's doc.
const (
	service     = "10.53.0.53"
	routerAS    = 65000
	hostAS      = 65053
	metricsPort = 9153
	hosts       = 3
	clients     = 64
	// queries from each client in each phase, each from a new socket
	// (so a new source port), as a resolver sends them
	queries = 4
	// within how long a host's path leaves or rejoins the router's
	// route; the announcer checks every second and acts on the second
	// check in a row that disagrees, half a second after the first
	withdrawLimit = 6 * time.Second
	restoreLimit  = 10 * time.Second
)

// birdConf is the router's BIRD 2: a passive BGP session to each host,
// the routes learnt merged into one multipath route in the kernel.
const birdConf = `router id 10.0.0.1;
log stderr all;
protocol device {}
protocol kernel {
	ipv4 { import none; export all; };
	merge paths yes;
}
template bgp bbalhost {
	local as {{.RouterAS}};
	passive yes;
	ipv4 { import all; export none; };
}
{{range .Hosts}}protocol bgp {{.Name}} from bbalhost { neighbor {{.Addr}} as {{$.HostAS}}; }
{{end}}`

// exabgpConf is a host's ExaBGP: its healthcheck announces the service
// address while bbal's /readyz answers 200, and withdraws it otherwise.
const exabgpConf = `process watch-bbal {
	run {{.Python}} -m exabgp healthcheck --no-syslog --name {{.Name}} --cmd "curl -fs --max-time 1 http://127.0.0.1:{{.MetricsPort}}/readyz" --ip {{.Service}}/32 --no-ip-setup --withdraw-on-down --interval 1 --fast-interval 0.5 --rise 2 --fall 2;
	encoder text;
}
neighbor {{.Gateway}} {
	router-id {{.Addr}};
	local-address {{.Addr}};
	local-as {{.HostAS}};
	peer-as {{.RouterAS}};
	api { processes [ watch-bbal ]; }
}
`

// exabgpEnv is ExaBGP's environment: in the foreground, as root, with
// no named pipes for its CLI, logging to stdout.
var exabgpEnv = []string{
	"exabgp.daemon.daemonize=false",
	"exabgp.daemon.drop=false",
	"exabgp.api.cli=false",
	"exabgp.log.destination=stdout",
}

// lab is the running topology.
type lab struct {
	t      *testing.T
	dir    string // configurations, sockets and logs
	bin    string // bbal and demo-backend, built from this tree
	python string // ExaBGP's interpreter
	router string // namespace names
	client string
	hosts  []*host
	bird   *proc
}

// host is one bbal host.
type host struct {
	Name     string // h1, h2, …
	Addr     string // its address on the link to the router
	Gateway  string // the router's address on that link
	ns       string
	dir      string // its files; sockets/ is bbal's -s
	bbal     *proc
	backends []*proc
}

func (h *host) backendName(i int) string { return fmt.Sprintf("%s-%c", h.Name, 'a'+i) }
func (h *host) debugSocket() string      { return filepath.Join(h.dir, "bbal.sock") }

func TestScaleOut(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, for network namespaces: sudo make scale-test")
	}
	for _, tool := range [][2]string{
		{"ip", "iproute2"}, {"bird", "bird2"}, {"birdc", "bird2"},
		{"exabgp", "exabgp"}, {"curl", "curl"},
	} {
		testbed.Tool(t, tool[0], tool[1])
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("no network namespaces here (ip netns list: %v: %s)", err, out)
	}
	removeLeftovers(t)
	begin := time.Now()
	l := newLab(t)

	announce := poll(t, "every host's path in the router's route", restoreLimit, l.routeHas(l.hosts...))
	t.Logf("all %d paths announced %v after the announcers started:\n%s", hosts, announce.Round(time.Millisecond), l.routeText())
	l.multipath()
	first := l.placement("all up", l.hosts...)
	l.spread(first)

	h1, h2 := l.hosts[0], l.hosts[1]
	l.outage(first, h1, "bbal stopped by SIGTERM", func() {
		if err := h1.bbal.stop(t); err != nil {
			t.Errorf("bbal on %s: SIGTERM: %v", h1.Name, err)
		}
	}, func() { l.startBbal(h1) })
	l.outage(first, h2, "its backends stopped", func() {
		for _, b := range h2.backends {
			if err := b.stop(t); err != nil {
				t.Errorf("%s: SIGTERM: %v", b.name, err)
			}
		}
		var body string
		poll(t, h2.Name+"'s /readyz 503", withdrawLimit, func() (bool, string) {
			var code int
			code, body = l.ready(h2)
			return code == http.StatusServiceUnavailable, fmt.Sprint(code, " ", body)
		})
		t.Logf("%s's /readyz: 503 %s", h2.Name, strings.TrimSpace(body))
	}, func() { l.startBackends(h2) })
	t.Logf("test took %v", time.Since(begin).Round(time.Millisecond))
}

// outage takes host gone out of service with stop, and checks that the
// router loses its path within withdrawLimit and that its clients are
// answered by the others; then brings it back with restart, and checks
// that the path is back within restoreLimit, in a multipath route, and
// that each client is on the host it had at first.
func (l *lab) outage(first map[netip.Addr]string, gone *host, what string, stop, restart func()) {
	t := l.t
	t.Helper()
	var others []*host
	for _, h := range l.hosts {
		if h != gone {
			others = append(others, h)
		}
	}
	phase := gone.Name + " with " + what
	begin := time.Now()
	stop()
	poll(t, gone.Name+"'s path gone", withdrawLimit, l.routeHas(others...))
	t.Logf("%s: path withdrawn %v after", phase, time.Since(begin).Round(time.Millisecond))
	l.moved(first, l.placement(phase, others...), gone)

	begin = time.Now()
	restart()
	ready := time.Since(begin)
	poll(t, gone.Name+"'s path back", restoreLimit, l.routeHas(l.hosts...))
	t.Logf("%s started again: ready %v, path back %v after", gone.Name, ready.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	l.multipath()
	l.returned(first, l.placement(gone.Name+" back", l.hosts...))
}

// multipath checks that the router's route, as ip route shows it, has a
// next hop for each host.
func (l *lab) multipath() {
	l.t.Helper()
	route := l.routeText()
	if n := strings.Count(route, "nexthop via"); n != hosts {
		l.t.Fatalf("router's route has %d nexthops, want %d:\n%s", n, hosts, route)
	}
}

// newLab builds the binaries and the topology, and starts everything:
// BIRD, then each host's backends, bbal and ExaBGP.
func newLab(t *testing.T) *lab {
	prefix := nsPrefix + strconv.Itoa(os.Getpid()) + "-"
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l := &lab{t: t, dir: dir}
	t.Cleanup(l.dumpLogs)
	exa, err := exec.LookPath("exabgp")
	if err != nil {
		t.Fatal(err)
	}
	// ExaBGP's healthcheck runs as `python3 -m exabgp healthcheck`, with
	// the interpreter that has ExaBGP: the one of its script.
	shebang, err := firstLine(exa)
	if err != nil {
		t.Fatal(err)
	}
	l.python, _ = strings.CutPrefix(shebang, "#!")
	l.bin = filepath.Join(l.dir, "bin")
	cmd := exec.Command("go", "build", "-o", l.bin+"/", "./cmd/bbal", "./tools/demo-backend")
	cmd.Dir = testbed.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	l.router, l.client = prefix+"r", prefix+"c"
	if out, err := exec.Command("ip", "netns", "add", l.router).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace (ip netns add: %v: %s)", err, out)
	}
	t.Cleanup(func() { delNetns(t, l.router) })
	run(t, "ip", "-n", l.router, "link", "set", "lo", "up")
	sysctl(t, l.router, "net/ipv4/ip_forward", "1")
	// The layer-3 hash: a client's queries, whatever their source
	// ports, take one path. Policy 1 (layer 4) would scatter them.
	sysctl(t, l.router, "net/ipv4/fib_multipath_hash_policy", "0")

	addNetns(t, l.client)
	veth(t, l.router, "c", "10.99.0.254/24", l.client, "eth0", "10.99.0.1/24")
	cmds := []string{"route add default via 10.99.0.254"}
	for i := 2; i <= clients; i++ {
		cmds = append(cmds, fmt.Sprintf("addr add 10.99.0.%d/24 dev eth0", i))
	}
	ipBatch(t, l.client, cmds)

	for i := 1; i <= hosts; i++ {
		h := &host{
			Name:    fmt.Sprintf("h%d", i),
			Addr:    fmt.Sprintf("10.0.%d.2", i),
			Gateway: fmt.Sprintf("10.0.%d.1", i),
			ns:      fmt.Sprintf("%sh%d", prefix, i),
		}
		h.dir = filepath.Join(l.dir, h.Name)
		if err := os.MkdirAll(filepath.Join(h.dir, "sockets"), 0o755); err != nil {
			t.Fatal(err)
		}
		addNetns(t, h.ns)
		veth(t, l.router, h.Name, h.Gateway+"/24", h.ns, "eth0", h.Addr+"/24")
		ipBatch(t, h.ns, []string{"addr add " + service + "/32 dev lo", "route add default via " + h.Gateway})
		l.hosts = append(l.hosts, h)
	}

	l.startBird()
	for _, h := range l.hosts {
		l.startBackends(h)
		l.startBbal(h)
	}
	for _, h := range l.hosts {
		conf := filepath.Join(h.dir, "exabgp.conf")
		l.writeConf(conf, exabgpConf, map[string]any{
			"Python": l.python, "Name": h.Name, "MetricsPort": metricsPort, "Service": service,
			"Addr": h.Addr, "Gateway": h.Gateway, "HostAS": hostAS, "RouterAS": routerAS,
		})
		start(t, l.dir, h.ns, h.Name+"-exabgp", exabgpEnv, "exabgp", conf)
	}
	return l
}

// startBird starts BIRD in the router and waits until birdc reaches it.
func (l *lab) startBird() {
	conf := filepath.Join(l.dir, "bird.conf")
	l.writeConf(conf, birdConf, map[string]any{"RouterAS": routerAS, "HostAS": hostAS, "Hosts": l.hosts})
	ctl := l.birdCtl()
	l.bird = start(l.t, l.dir, l.router, "bird", nil, "bird", "-f", "-c", conf, "-s", ctl)
	poll(l.t, "BIRD's control socket", 10*time.Second, func() (bool, string) {
		if l.bird.exited() {
			l.t.Fatalf("bird exited: %v\n%s", l.bird.err, l.bird.tail(20))
		}
		out, err := exec.Command("birdc", "-s", ctl, "show", "status").CombinedOutput()
		return err == nil, string(out)
	})
}

// startBackends starts h's two demo backends and waits for their sockets.
func (l *lab) startBackends(h *host) {
	h.backends = h.backends[:0]
	for i := range 2 {
		name := h.backendName(i)
		sock := filepath.Join(h.dir, "sockets", strconv.Itoa(5301+i))
		b := start(l.t, l.dir, h.ns, name, nil, filepath.Join(l.bin, "demo-backend"), "-socket", sock, "-name", name)
		h.backends = append(h.backends, b)
		poll(l.t, name+"'s socket", 10*time.Second, func() (bool, string) {
			if b.exited() {
				l.t.Fatalf("%s exited: %v\n%s", name, b.err, b.tail(20))
			}
			_, err := os.Stat(sock)
			return err == nil, fmt.Sprint(err)
		})
	}
}

// startBbal starts bbal on h and waits until its /readyz says ready.
func (l *lab) startBbal(h *host) {
	h.bbal = start(l.t, l.dir, h.ns, h.Name+"-bbal", nil, filepath.Join(l.bin, "bbal"),
		"-s", filepath.Join(h.dir, "sockets"), "-p", "53",
		"-m", "127.0.0.1:"+strconv.Itoa(metricsPort), "-S", h.debugSocket())
	poll(l.t, "bbal on "+h.Name+" ready", 10*time.Second, func() (bool, string) {
		if h.bbal.exited() {
			l.t.Fatalf("bbal on %s exited: %v\n%s", h.Name, h.bbal.err, h.bbal.tail(20))
		}
		code, body := l.ready(h)
		return code == http.StatusOK, fmt.Sprint(code, " ", body)
	})
}

// ready asks h's bbal GET /readyz on its debug socket (the handler of
// -m's), returning 0 and the error when it does not answer.
func (l *lab) ready(h *host) (int, string) {
	c := http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", h.debugSocket())
		}},
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://bbal/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (l *lab) birdCtl() string { return filepath.Join(l.dir, "bird.ctl") }

func (l *lab) writeConf(path, text string, data any) {
	var b strings.Builder
	if err := template.Must(template.New(filepath.Base(path)).Parse(text)).Execute(&b, data); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		l.t.Fatal(err)
	}
}

// gateways returns the next hops of the router's route to the service
// address: several for a multipath route, one, or none.
func (l *lab) gateways() ([]string, error) {
	out, err := exec.Command("ip", "-n", l.router, "-j", "route", "show", "exact", service+"/32").Output()
	if err != nil {
		return nil, fmt.Errorf("ip route show: %w", err)
	}
	var routes []struct {
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("ip route show: %w: %s", err, out)
	}
	var gws []string
	for _, r := range routes {
		if r.Gateway != "" {
			gws = append(gws, r.Gateway)
		}
		for _, nh := range r.Nexthops {
			gws = append(gws, nh.Gateway)
		}
	}
	slices.Sort(gws)
	return gws, nil
}

// birdPaths returns the BGP sessions (h1, h2, …) from which BIRD has a
// route to the service address, best or not.
func (l *lab) birdPaths() ([]string, error) {
	out, err := exec.Command("birdc", "-s", l.birdCtl(), "show", "route", "for", service+"/32").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("birdc show route: %w: %s", err, out)
	}
	var names []string
	for _, m := range birdPath.FindAllSubmatch(out, -1) {
		names = append(names, string(m[1]))
	}
	slices.Sort(names)
	return names, nil
}

// birdPath is a route's line in birdc's show route: "unicast [h1 …".
var birdPath = regexp.MustCompile(`unicast \[(\S+) `)

// routeHas returns a poll condition: BIRD has routes from exactly these
// hosts, and the kernel's route goes to exactly them.
func (l *lab) routeHas(hs ...*host) func() (bool, string) {
	var addrs, names []string
	for _, h := range hs {
		addrs = append(addrs, h.Addr)
		names = append(names, h.Name)
	}
	slices.Sort(addrs)
	slices.Sort(names)
	return func() (bool, string) {
		paths, err := l.birdPaths()
		if err != nil {
			return false, err.Error()
		}
		gws, err := l.gateways()
		if err != nil {
			return false, err.Error()
		}
		ok := slices.Equal(paths, names) && slices.Equal(gws, addrs)
		return ok, fmt.Sprintf("BIRD has paths from %v, the kernel next hops %v; want %v, %v", paths, gws, names, addrs)
	}
}

// routeText is the router's route as `ip route show` prints it.
func (l *lab) routeText() string {
	return run(l.t, "ip", "-n", l.router, "route", "show", "exact", service+"/32")
}

// answer is what a backend said it saw.
type answer struct {
	backend string
	client  string // the address it saw, without the port
}

// placement queries the service from each client address, queries times
// each, and checks that every query was answered, by one backend for
// each client, on one of the hosts up, and that the backend saw the
// client's own address. It returns each client's backend.
func (l *lab) placement(phase string, up ...*host) map[netip.Addr]string {
	t := l.t
	t.Helper()
	srcs := make([]netip.Addr, clients)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)})
	}
	got := make(map[netip.Addr][]answer, clients)
	var failures []string
	err := inNetns(l.client, func() error {
		q := new(dns.Msg)
		q.SetQuestion("who.example.", dns.TypeTXT)
		for range queries {
			for _, src := range srcs {
				a, err := ask(q, src)
				if err != nil {
					failures = append(failures, fmt.Sprintf("%v: %v", src, err))
					continue
				}
				got[src] = append(got[src], a)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(failures) > 0 {
		t.Fatalf("%s: %d of %d queries unanswered, e.g. %s", phase, len(failures), clients*queries, failures[0])
	}
	live := map[string]bool{}
	for _, h := range up {
		live[h.Name] = true
	}
	out := make(map[netip.Addr]string, clients)
	perHost := map[string]int{}
	for _, src := range srcs {
		as := got[src]
		var seen []string
		for _, a := range as {
			if !slices.Contains(seen, a.backend) {
				seen = append(seen, a.backend)
			}
			if a.client != src.String() {
				t.Errorf("%s: client %v seen by %s as %s", phase, src, a.backend, a.client)
			}
		}
		if len(seen) > 1 {
			t.Errorf("%s: client %v answered by %v: it must keep its backend", phase, src, seen)
		}
		h, _, _ := strings.Cut(as[0].backend, "-")
		if !live[h] {
			t.Errorf("%s: client %v answered by %s, on a host whose path is withdrawn", phase, src, as[0].backend)
		}
		perHost[h]++
		out[src] = as[0].backend
	}
	t.Logf("%s: %d clients × %d queries answered, clients per host %v", phase, clients, queries, perHost)
	return out
}

// ask sends q to the service from src, from a new socket, and returns
// what the backend that answered saw.
func ask(q *dns.Msg, src netip.Addr) (answer, error) {
	c := dns.Client{
		Net:     "udp",
		Timeout: 2 * time.Second,
		Dialer:  &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))},
	}
	r, _, err := c.Exchange(q, net.JoinHostPort(service, "53"))
	if err != nil {
		return answer{}, err
	}
	f, err := dnsbackend.TXTFields(r)
	if err != nil {
		return answer{}, err
	}
	client, err := netip.ParseAddrPort(f["client"])
	if err != nil {
		return answer{}, fmt.Errorf("answer's client %q: %w", f["client"], err)
	}
	return answer{backend: f["backend"], client: client.Addr().String()}, nil
}

// spread checks that every host has some of the clients.
func (l *lab) spread(placed map[netip.Addr]string) {
	l.t.Helper()
	for _, h := range l.hosts {
		n := 0
		for _, b := range placed {
			if strings.HasPrefix(b, h.Name+"-") {
				n++
			}
		}
		if n == 0 {
			l.t.Errorf("no client on %s: ECMP spreads nothing there", h.Name)
		}
	}
}

// moved reports how the clients of host gone were placed elsewhere, and
// how many of the other hosts' clients moved too (the kernel's hash
// threshold ECMP moves some when a path leaves).
func (l *lab) moved(before, during map[netip.Addr]string, gone *host) {
	l.t.Helper()
	var orphans, others int
	for src, b := range before {
		switch {
		case strings.HasPrefix(b, gone.Name+"-"):
			orphans++
		case hostOf(b) != hostOf(during[src]):
			others++
		}
	}
	l.t.Logf("%d clients of %s answered elsewhere; %d clients of the other hosts moved too", orphans, gone.Name, others)
}

// returned checks that each client is back on the host it had at first.
func (l *lab) returned(first, now map[netip.Addr]string) {
	l.t.Helper()
	for src, b := range first {
		if hostOf(now[src]) != hostOf(b) {
			l.t.Errorf("client %v on %s, first on %s: with the same paths it must be back on its host", src, now[src], b)
		}
	}
}

func hostOf(backend string) string {
	h, _, _ := strings.Cut(backend, "-")
	return h
}

// dumpLogs prints the end of each log of a failed test.
func (l *lab) dumpLogs() {
	if !l.t.Failed() {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(l.dir, "*.log"))
	for _, path := range logs {
		p := &proc{name: filepath.Base(path), log: path}
		l.t.Logf("--- %s:\n%s", p.name, p.tail(30))
	}
}
