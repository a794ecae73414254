package backend

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/bbal/bbal/tools/testbed"
)

func TestBackendGoingDownIsQueuedAsAnEvent(t *testing.T) {
	dir := testbed.SocketDir(t)
	fake := testbed.NewFake(t, filepath.Join(dir, "5301"))
	s, logs := newTestSet(t, dir, Config{})
	c := fake.Accept(t)
	c.Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	select {
	case d := <-s.Downs():
		t.Fatalf("a Down event before any backend went down: %+v", d)
	default:
	}
	c.Close() // EOF: faulted
	select {
	case d := <-s.Downs():
		if d.Backend != s.Get(5301) || !d.Fault.Faulted || d.Fault.Reason != ReasonEOF {
			t.Fatalf("Down event %+v, want backend 5301 faulted for EOF", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Down event for a backend that went down")
	}
}

func TestDownEventsPastTheQueueAreCountedLost(t *testing.T) {
	s, logs := newTestSet(t, testbed.SocketDir(t), Config{MaxBackends: 1})
	b := newBackend(s, 7, "/nowhere/7")
	for range cap(s.downs) {
		s.wentDown(b, Fault{})
	}
	if n := s.Discovery().DownsLost; n != 0 {
		t.Fatalf("%d Down events lost with room in the queue", n)
	}
	s.wentDown(b, Fault{})
	s.wentDown(b, Fault{})
	if n := s.Discovery().DownsLost; n != 2 {
		t.Fatalf("%d Down events lost, want 2", n)
	}
	if n := logs.Count("down event lost: the queue of down events is full", map[string]any{"be_id": 7}); n != 1 {
		t.Fatalf("'down event lost' logged %d times in 5 s, want 1", n)
	}
	if got := len(s.Downs()); got != 2*1 {
		t.Fatalf("queue of %d Down events for MaxBackends 1, want 2", got)
	}
}
