package main

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// TestSlowBackendShedsClientsUnderLeastLoaded runs 16 clients against a
// fast backend and one that takes 20 ms over each query, one at a time
// (a Node process whose event loop is blocked): with -P least-loaded,
// each rebalance moves clients off the slow one, and the clients' mean
// latency falls with its share.
func TestSlowBackendShedsClientsUnderLeastLoaded(t *testing.T) {
	// Latency is measured on the balancer's clock: the real one here.
	h := servertest.NewConfig(t, func(c *server.Config) { c.Policy = placement.PolicyLeastLoaded },
		func(o *server.Options) { o.Clock = timeouts.System })
	f := faultBedOn(h) // 5301 a Go backend, 5302 the fake
	f.helloOK()
	answer := testbed.AnswerAs("slow")
	go f.conn.Serve(func(f protocol.Frame) []byte {
		if f.Type == protocol.FrameInboundUDP {
			time.Sleep(20 * time.Millisecond) // the slowness under test
		}
		return answer(f)
	})

	const clients = 16
	var from []netip.Addr
	for i := range clients {
		from = append(from, testbed.Loopback(300+i))
	}
	// round has every client ask 5 questions in turn, all clients at
	// once; it returns the clients of the slow backend and the mean
	// latency the clients saw.
	round := func() (onSlow int, mean time.Duration) {
		var mu sync.Mutex
		var total time.Duration
		var wg sync.WaitGroup
		for _, a := range from {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 5 {
					start := time.Now()
					got, err := testbed.WhoTimeout(h.Addr, a, false, 5*time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					total += time.Since(start)
					if got["backend"] == "slow" {
						onSlow++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return onSlow / 5, total / (clients * 5)
	}

	// New clients one at a time, so that none finds a query outstanding:
	// they are spread evenly, by their number.
	for _, a := range from {
		testbed.MustWho(t, h.Addr, a, false)
	}
	if n := h.B.Table.Counts()[5302].Primary; n != clients/2 {
		t.Fatalf("%d of %d clients on the slow backend, want half", n, clients)
	}
	onSlow, mean := round()
	t.Logf("before: %d of %d clients on the slow backend, mean latency %v", onSlow, clients, mean)
	if onSlow == 0 {
		t.Fatal("no client on the slow backend to begin with")
	}
	first := mean
	// The fourth rebalance leaves the last one there: the spread does
	// not bring clients back to a slow backend.
	for i := range 4 {
		h.B.Table.Rebalance()
		if i == 0 {
			h.Logs.Wait(t, "backend answering far slower than its peers: shedding remotes", map[string]any{"be_id": 5302})
			if !h.B.Backends.Get(5302).Slow() || h.B.Backends.Get(5301).Slow() {
				t.Fatal("the wrong backend is marked slow")
			}
		}
		before := onSlow
		onSlow, mean = round()
		t.Logf("after rebalance %d: %d clients on the slow backend, mean latency %v", i+1, onSlow, mean)
		// Half of them move each time, but one: its queries go on
		// measuring the backend.
		if onSlow > before || before > 1 && onSlow >= before {
			t.Fatalf("slow backend kept %d clients (had %d)", onSlow, before)
		}
	}
	if onSlow > 1 || mean >= first/2 {
		t.Fatalf("%d clients left on the slow backend, mean latency %v (was %v)", onSlow, mean, first)
	}
	st := h.B.Backends.Get(5302).Stats()
	if st.Latency < 10*time.Millisecond || st.Answered == 0 {
		t.Fatalf("slow backend's measured latency %v over %d answers", st.Latency, st.Answered)
	}
}

func TestWeightsScaleEachBackendsShare(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartGo(t, h.Sock("5301"), "one")
	testbed.StartGo(t, h.Sock("5302"), "two")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	h.Established(0, 5302)
	if !h.B.Backends.Get(5302).SetWeight(3) {
		t.Fatal("weight 3 refused")
	}
	got := map[string]int{}
	for i := range 40 {
		got[h.Who(testbed.Loopback(400+i), false)["backend"]]++
	}
	if got["one"] != 10 || got["two"] != 30 {
		t.Fatalf("40 new clients over weights 1 and 3: %v", got)
	}
	// Rebalancing keeps the weighted shares.
	if n := h.B.Table.Rebalance(); n != 0 {
		t.Fatalf("rebalance moved %d remotes of a weighted balance", n)
	}
}
