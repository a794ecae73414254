package main

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy"
)

// probeIP is server.ProbeSource as the protocol carries it.
var probeIP = protocol.AddrToU32(server.ProbeSource)

// newProbeHarness is the in-process balancer with -H spec.
func newProbeHarness(t *testing.T, spec string) *harness {
	t.Helper()
	p, err := server.ParseProbe(spec)
	if err != nil {
		t.Fatal(err)
	}
	return servertest.NewConfig(t, func(c *server.Config) { c.Probe = p }, nil)
}

func TestProbeFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want server.Probe
	}{
		{"", server.Probe{}},
		{"example.com", server.Probe{Name: "example.com.", Type: dns.TypeA}},
		{"example.com./soa", server.Probe{Name: "example.com.", Type: dns.TypeSOA}},
		{"_dns.binder.example/TXT", server.Probe{Name: "_dns.binder.example.", Type: dns.TypeTXT}},
		{"./NS", server.Probe{Name: ".", Type: dns.TypeNS}},
	} {
		args := []string{"-s", "/tmp"}
		if tt.arg != "" {
			args = append(args, "-H", tt.arg)
		}
		cfg, err := parseArgs(args, func(string) string { return "" })
		if err != nil || cfg.probe != tt.want {
			t.Errorf("-H %q: %+v, %v; want %+v", tt.arg, cfg.probe, err, tt.want)
		}
	}
}

// TestProbesFaultABackendWhoseDNSHandlerStops runs a good Go backend
// (5301) and a fake one (5302) that answers heartbeats and queries, and
// probes until told to stop.
func TestProbesFaultABackendWhoseDNSHandlerStops(t *testing.T) {
	s := newProbeScenario(t)
	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"the fake serves a pinned client", s.fakeServesItsClient},
		{"answered probes keep the backend up past the probe timeout", s.answeredProbesKeepItUp},
		{"probe answers stop at bbal", s.probeAnswersStopAtBbal},
		{"a silent DNS handler is faulted at the probe timeout", s.silentHandlerIsFaulted},
		{"its client goes to the good backend, which is untouched", s.clientMovesToTheGoodBackend},
		{"the usual back-off, then probed again", s.reconnectsAndIsProbedAgain},
	} {
		if !t.Run(step.name, step.run) {
			t.FailNow() // each step starts where the last one left off
		}
	}
}

// probeScenario is TestProbesFaultABackendWhoseDNSHandlerStops's state,
// carried from step to step.
type probeScenario struct {
	h            *harness
	fake         *testbed.Fake
	conn         *testbed.FakeConn // the fake's standing session
	probes       chan protocol.Frame
	answerProbes atomic.Bool
	served       chan struct{} // closed when the fake's session ends

	client   netip.Addr // pinned to the fake
	good, be *backend.Backend
	udp      udpproxy.Stats
	outbound uint64
}

// newProbeScenario starts the fake serving its session: it answers
// heartbeats, queries and (until told to stop) probes, passing each
// probe to probes.
func newProbeScenario(t *testing.T) *probeScenario {
	f := faultBedOn(newProbeHarness(t, "probe.example"))
	f.helloOK()
	s := &probeScenario{h: f.harness, fake: f.fake, conn: f.conn,
		probes: make(chan protocol.Frame, 100), served: make(chan struct{})}
	s.answerProbes.Store(true)
	answer := testbed.AnswerAs("fake")
	go func() {
		defer close(s.served)
		s.conn.Serve(func(f protocol.Frame) []byte {
			if f.Type == protocol.FrameInboundUDP && f.IP == probeIP {
				s.probes <- f
				if !s.answerProbes.Load() {
					return nil
				}
			}
			return answer(f)
		})
	}()
	return s
}

func (s *probeScenario) nextProbe(t *testing.T) protocol.Frame {
	t.Helper()
	select {
	case f := <-s.probes:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no probe")
		return protocol.Frame{}
	}
}

func (s *probeScenario) fakeServesItsClient(t *testing.T) {
	h := s.h
	s.client = h.PinTo(5302)
	if got := h.Who(s.client, false)["backend"]; got != "fake" {
		t.Fatalf("client answered by %q, want the fake", got)
	}
	s.good, s.be = h.B.Backends.Get(5301), h.B.Backends.Get(5302)
	s.udp, s.outbound = h.B.UDP.Stats(), s.be.Stats().OutboundUDP
}

func (s *probeScenario) answeredProbesKeepItUp(t *testing.T) {
	be, good := s.be, s.good
	ports := map[uint32]bool{}
	for i := range 4 {
		s.h.Heartbeat() // and a probe to each backend
		f := s.nextProbe(t)
		if len(f.Data) < 12 || f.Data[2]&0x80 != 0 || ports[f.Port] || f.Port == 0 {
			t.Fatalf("probe %d from port %d (seen %v): %x", i, f.Port, ports, f.Data)
		}
		ports[f.Port] = true
		testbed.Eventually(t, "probes answered", func() bool {
			return be.Stats().Probes.Answered == uint64(i+1) && good.Stats().Probes.Answered == uint64(i+1)
		})
	}
	st := be.Stats()
	if want := (backend.ProbeStats{Enabled: true, Sent: 4, Answered: 4}); !be.OK() || len(st.Faults) != 0 || st.Probes != want {
		t.Fatalf("ok %v, faults %v, probes %+v; want ok, no faults, %+v", be.OK(), st.Faults, st.Probes, want)
	}
}

// probeAnswersStopAtBbal: none was sent to a client, or tried.
func (s *probeScenario) probeAnswersStopAtBbal(t *testing.T) {
	udp := s.udp
	if now := s.h.B.UDP.Stats(); now.PacketsOut != udp.PacketsOut || now.SendErrors != udp.SendErrors ||
		s.be.Stats().OutboundUDP != s.outbound {
		t.Fatalf("probe answers went on: UDP out %d -> %d, send errors %d -> %d, outbound %d -> %d",
			udp.PacketsOut, now.PacketsOut, udp.SendErrors, now.SendErrors, s.outbound, s.be.Stats().OutboundUDP)
	}
}

// silentHandlerIsFaulted: the fake's DNS handler stops; its heartbeats
// go on. 15 s after the last answer, it is faulted.
func (s *probeScenario) silentHandlerIsFaulted(t *testing.T) {
	h, be := s.h, s.be
	s.answerProbes.Store(false)
	for range 2 {
		h.Heartbeat()
		s.nextProbe(t)
	}
	h.Advance(backend.DefaultProbeTimeout - 2*backend.DefaultProbeInterval - time.Millisecond)
	if !be.OK() || len(be.Stats().Faults) != 0 {
		t.Fatalf("faulted before the probe timeout: %v", be.Stats().Faults)
	}
	h.Advance(time.Millisecond)
	h.Logs.Wait(t, "no answer to DNS probes from backend (aborting connection)", map[string]any{"be_id": 5302, "level": 50})
	h.Logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302, "reason": "probe_timeout"})
	select {
	case <-s.served:
	case <-time.After(10 * time.Second):
		t.Fatal("the fake's session was not closed")
	}
}

func (s *probeScenario) clientMovesToTheGoodBackend(t *testing.T) {
	be, good := s.be, s.good
	if got := s.h.Who(s.client, false)["backend"]; got != "good" {
		t.Fatalf("client answered by %q while the fake is faulted, want good", got)
	}
	testbed.Eventually(t, "waiting probes failed", func() bool { return be.Stats().Probes.Failed == 2 })
	if st := be.Stats(); st.Probes.Sent != 6 || st.Probes.Answered != 4 || st.Faults["probe_timeout"] != 1 {
		t.Fatalf("probes %+v, faults %v", st.Probes, st.Faults)
	}
	if !good.OK() || len(good.Stats().Faults) != 0 {
		t.Fatalf("the good backend: ok %v, faults %v", good.OK(), good.Stats().Faults)
	}
}

// reconnectsAndIsProbedAgain: the usual back-off; after the reconnect
// it is probed again.
func (s *probeScenario) reconnectsAndIsProbedAgain(t *testing.T) {
	h := s.h
	if d := h.ReconnectDue(5302); d != time.Second {
		t.Fatalf("reconnect in %v, want 1s", d)
	}
	h.Advance(time.Second)
	conn := s.fake.Accept(t)
	mark := h.Logs.Mark()
	conn.Hello(t)
	h.Established(mark, 5302)
	h.Advance(backend.DefaultProbeInterval)
	for f := conn.Next(t); f.IP != probeIP; f = conn.Next(t) {
	}
}

func TestMnameAnswersProbes(t *testing.T) {
	// node-mname answers A with an address and SOA with an empty
	// answer: both are answers.
	for _, spec := range []string{"probe.example/A", "probe.example/SOA"} {
		t.Run(spec, func(t *testing.T) {
			h := newProbeHarness(t, spec)
			testbed.StartMname(t, h.Sock("5301"), "n1")
			h.B.Backends.Scan()
			h.Established(0, 5301)
			b := h.B.Backends.Get(5301)
			for i := range 5 {
				h.Heartbeat()
				testbed.Eventually(t, "probe answered", func() bool { return b.Stats().Probes.Answered == uint64(i+1) })
			}
			st := b.Stats()
			// The fake clock stands still while a probe is out: RTT 0.
			if want := (backend.ProbeStats{Enabled: true, Sent: 5, Answered: 5}); !b.OK() || len(st.Faults) != 0 || st.Probes != want {
				t.Fatalf("ok %v, faults %v, probes %+v", b.OK(), st.Faults, st.Probes)
			}
			if us := h.B.UDP.Stats(); us.PacketsOut != 0 || us.SendErrors != 0 || st.OutboundUDP != 0 {
				t.Fatalf("probe answers went on: UDP out %d, send errors %d, outbound %d", us.PacketsOut, us.SendErrors, st.OutboundUDP)
			}
			if got := h.Who(testbed.Loopback(1), false)["backend"]; got != "n1" {
				t.Fatalf("answered by %q", got)
			}
		})
	}
}
