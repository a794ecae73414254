package main

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/tools/testbed"
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
	f := faultBedOn(newProbeHarness(t, "probe.example"))
	f.helloOK()
	h, fake, conn := f.harness, f.fake, f.conn

	probes := make(chan protocol.Frame, 100)
	var answerProbes atomic.Bool
	answerProbes.Store(true)
	answer := testbed.AnswerAs("fake")
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn.Serve(func(f protocol.Frame) []byte {
			if f.Type == protocol.FrameInboundUDP && f.IP == probeIP {
				probes <- f
				if !answerProbes.Load() {
					return nil
				}
			}
			return answer(f)
		})
	}()
	nextProbe := func() protocol.Frame {
		t.Helper()
		select {
		case f := <-probes:
			return f
		case <-time.After(10 * time.Second):
			t.Fatal("no probe")
			return protocol.Frame{}
		}
	}

	client := h.PinTo(5302)
	if got := h.Who(client, false)["backend"]; got != "fake" {
		t.Fatalf("client answered by %q, want the fake", got)
	}
	good, be := h.B.Backends.Get(5301), h.B.Backends.Get(5302)
	udp, outbound := h.B.UDP.Stats(), be.Stats().OutboundUDP

	// Answered probes keep the backend up well past the probe timeout.
	ports := map[uint32]bool{}
	for i := range 4 {
		h.Heartbeat() // and a probe to each backend
		f := nextProbe()
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
	// The answers stopped at bbal: none was sent to a client, or tried.
	if now := h.B.UDP.Stats(); now.PacketsOut != udp.PacketsOut || now.SendErrors != udp.SendErrors ||
		be.Stats().OutboundUDP != outbound {
		t.Fatalf("probe answers went on: UDP out %d -> %d, send errors %d -> %d, outbound %d -> %d",
			udp.PacketsOut, now.PacketsOut, udp.SendErrors, now.SendErrors, outbound, be.Stats().OutboundUDP)
	}

	// The fake's DNS handler stops; its heartbeats go on. 15 s after
	// the last answer, it is faulted.
	answerProbes.Store(false)
	for range 2 {
		h.Heartbeat()
		nextProbe()
	}
	h.Advance(backend.DefaultProbeTimeout - 2*backend.DefaultProbeInterval - time.Millisecond)
	if !be.OK() || len(be.Stats().Faults) != 0 {
		t.Fatalf("faulted before the probe timeout: %v", be.Stats().Faults)
	}
	h.Advance(time.Millisecond)
	h.Logs.Wait(t, "no answer to DNS probes from backend (aborting connection)", map[string]any{"be_id": 5302, "level": 50})
	h.Logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5302, "reason": "probe_timeout"})
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the fake's session was not closed")
	}
	if got := h.Who(client, false)["backend"]; got != "good" {
		t.Fatalf("client answered by %q while the fake is faulted, want good", got)
	}
	testbed.Eventually(t, "waiting probes failed", func() bool { return be.Stats().Probes.Failed == 2 })
	if st := be.Stats(); st.Probes.Sent != 6 || st.Probes.Answered != 4 || st.Faults["probe_timeout"] != 1 {
		t.Fatalf("probes %+v, faults %v", st.Probes, st.Faults)
	}
	if !good.OK() || len(good.Stats().Faults) != 0 {
		t.Fatalf("the good backend: ok %v, faults %v", good.OK(), good.Stats().Faults)
	}

	// The usual back-off; after the reconnect it is probed again.
	if d := h.ReconnectDue(5302); d != time.Second {
		t.Fatalf("reconnect in %v, want 1s", d)
	}
	h.Advance(time.Second)
	conn = fake.Accept(t)
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
