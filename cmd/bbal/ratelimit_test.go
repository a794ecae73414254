package main

import (
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/tools/testbed"
)

// TestAFloodingClientIsHeldToItsLimit: on the fake clock, one client
// floods at 10 times its limit of 100 queries a second for 5 s while 10
// clients on the same backend ask 10 a second each. They lose nothing;
// the flood reaches the backend at the limit (and its burst), within
// 10%; of the rest, every second query is answered with an empty
// truncated answer, the others dropped and counted. The top talkers
// name the flood, and its name, first.
func TestAFloodingClientIsHeldToItsLimit(t *testing.T) {
	const limit, burst = 100, 100
	rate := remotes.NewRate(limit, burst, remotes.DefaultSlip)
	h := servertest.NewConfig(t, func(c *server.Config) { c.RateLimit = &rate }, nil)
	h.StartGo("5301")
	dial := func(from netip.Addr) *net.UDPConn {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(h.Addr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	query := func(id uint16, name string) []byte {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeTXT)
		q.Id = id
		wire, _ := q.Pack()
		return wire
	}
	flooder := testbed.Loopback(500)
	flood := dial(flooder)
	var mu sync.Mutex
	var truncatedSeen, answeredSeen, badSeen int
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		buf := make([]byte, 1500)
		for {
			n, err := flood.Read(buf)
			if err != nil {
				return
			}
			var r dns.Msg
			err = r.Unpack(buf[:n])
			mu.Lock()
			switch {
			case err != nil || len(r.Question) != 1 || r.Question[0].Name != "Flood.Example.":
				badSeen++
			case r.Truncated && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 0:
				truncatedSeen++
			default:
				answeredSeen++
			}
			mu.Unlock()
		}
	}()
	var normals []*net.UDPConn
	for i := range 10 {
		normals = append(normals, dial(testbed.Loopback(510+i)))
	}

	const steps = 500 // of 10 ms: 5 s
	floodSent, normalSent := 0, 0
	for step := range steps {
		for range 10 {
			floodSent++
			flood.Write(query(uint16(floodSent), "Flood.Example."))
		}
		for i, c := range normals {
			if step%10 == i {
				normalSent++
				c.Write(query(uint16(step), "who.example."))
			}
		}
		testbed.Eventually(t, "the step's queries read", func() bool {
			in, _ := h.B.Table.Lookup(flooder)
			if int(in.UDP+in.Drops) != floodSent {
				return false
			}
			n := 0
			for i := range normals {
				o, _ := h.B.Table.Lookup(testbed.Loopback(510 + i))
				n += int(o.UDP)
			}
			return n == normalSent
		})
		h.Advance(10 * time.Millisecond)
	}

	// The list of clients over their limit, at the end of the flood.
	_, out := getDebug(t, h, "/v1/remotes?limited=1")
	var limited debugapi.RemotesReply
	if err := json.Unmarshal(out, &limited); err != nil || len(limited.Remotes) != 1 || limited.Remotes[0].IP != flooder.String() ||
		!limited.Remotes[0].Limited || limited.Remotes[0].RateLimited == 0 {
		t.Fatalf("limited remotes %s", out)
	}

	// The top talkers: the flood first among clients, its name first
	// among questions, in lower case; its rate is what it sent.
	c := debugapi.NewClient(h.DebugSocket)
	defer c.Close()
	top, err := c.Top(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Clients) == 0 || top.Clients[0].IP != flooder.String() || !top.Clients[0].Limited || top.Clients[0].Backend != 5301 ||
		len(top.Names) == 0 || top.Names[0].Name != "flood.example." || top.Names[0].Type != "TXT" {
		t.Fatalf("top %+v", top)
	}
	if q := top.Clients[0].QPS; q < 700 || q > 1300 {
		t.Fatalf("the flood's estimated rate %v, want about 1000", q)
	}

	for i, c := range normals {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1500)
		for n := range steps / 10 {
			if _, err := c.Read(buf); err != nil {
				t.Fatalf("normal client %d: answer %d of %d: %v", i, n+1, steps/10, err)
			}
		}
	}
	in, _ := h.B.Table.Lookup(flooder)
	want := float64(limit*steps/100 + burst)
	if got := float64(in.UDP); got < 0.9*want || got > 1.1*want {
		t.Fatalf("the flood reached the backend %v times, want %v ± 10%%", got, want)
	}
	st := h.B.UDP.Stats()
	over := uint64(floodSent) - in.UDP
	if st.Drops["ratelimited"] != over || in.RateLimited != over || st.Slips != over/2 {
		t.Fatalf("%d over the limit; dropped %d, remote's count %d, slips %d (want half)", over, st.Drops["ratelimited"], in.RateLimited, st.Slips)
	}
	testbed.Eventually(t, "the flood's answers read", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return truncatedSeen > 0 && answeredSeen > 0
	})
	flood.Close()
	<-floodDone
	if badSeen > 0 || uint64(truncatedSeen) > st.Slips {
		t.Fatalf("%d bad answers, %d truncated seen of %d slips", badSeen, truncatedSeen, st.Slips)
	}
	h.Logs.Wait(t, "client over its query rate limit: dropping", map[string]any{"remote_ip": flooder.String(), "limit_qps": float64(limit)})
	t.Logf("flood: %d sent, %d to the backend, %d over (%d slips; %d truncated and %d answers read); %d normal queries all answered",
		floodSent, in.UDP, over, st.Slips, truncatedSeen, answeredSeen, normalSent)
}

// getDebug fetches path from h's debug socket.
func getDebug(t *testing.T, h *harness, path string) (int, []byte) {
	t.Helper()
	c := debugapi.NewClient(h.DebugSocket)
	defer c.Close()
	code, body, err := c.Raw(t.Context(), "GET", path)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// TestDigRetriesATruncatedSlipOverTCP: the slip is a valid DNS answer
// with TC set; dig retries it over TCP and gets its answer.
func TestDigRetriesATruncatedSlipOverTCP(t *testing.T) {
	dig := testbed.Tool(t, "dig", "dnsutils")
	rate := remotes.NewRate(1, 1, 1) // one a second; every one over answered truncated
	h := servertest.NewConfig(t, func(c *server.Config) { c.RateLimit = &rate }, nil)
	h.StartGo("5301")
	from := testbed.Loopback(600)
	ask := func() string {
		out, err := exec.Command(dig, "-b", from.String(), "-p", strconv.Itoa(int(h.Addr.Port())), "@"+h.Addr.Addr().String(),
			"+tries=1", "+time=5", "who.example.", "TXT").CombinedOutput()
		if err != nil {
			t.Fatalf("dig: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := ask(); strings.Contains(out, "Truncated") || !strings.Contains(out, "proto=udp") {
		t.Fatalf("first query, within the limit:\n%s", out)
	}
	// The clock stands still: the next query is over the limit.
	out := ask()
	if !strings.Contains(out, "Truncated, retrying in TCP mode") || !strings.Contains(out, "proto=tcp") ||
		!strings.Contains(out, "status: NOERROR") {
		t.Fatalf("second query, over the limit:\n%s", out)
	}
	if st := h.B.UDP.Stats(); st.Slips != 1 || st.Drops["ratelimited"] != 1 {
		t.Fatalf("slips %d, dropped %d", st.Slips, st.Drops["ratelimited"])
	}
}
