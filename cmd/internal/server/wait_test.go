package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
)

// The TCP proxy's Wait returns when the last session ends, and not before; with none
// open it returns at once.
func TestTCPWaitForTheLastSession(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	p := h.B.TCP
	if !p.Wait(context.Background()) {
		t.Fatal("Wait false with no session")
	}
	c1, c2 := h.DialTCP(testbed.Loopback(1)), h.DialTCP(testbed.Loopback(2))
	testbed.Eventually(t, "two sessions", func() bool { return p.Stats().Active == 2 })

	done := make(chan bool, 1)
	go func() { done <- p.Wait(context.Background()) }()
	c1.Close()
	testbed.Eventually(t, "one session", func() bool { return p.Stats().Active == 1 })
	select {
	case ok := <-done:
		t.Fatalf("Wait returned %v with a session open", ok)
	default:
	}
	c2.Close()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("Wait false after the last session")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait has not returned after the last session ended")
	}
}

// The TCP proxy's Wait gives up when its context is done, and says so.
func TestTCPWaitGivesUp(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	p := h.B.TCP
	h.DialTCP(testbed.Loopback(1))
	testbed.Eventually(t, "a session", func() bool { return p.Stats().Active == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool, 1)
	go func() { done <- p.Wait(ctx) }()
	cancel()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("Wait true with a session open")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait has not returned after its context was cancelled")
	}
}
