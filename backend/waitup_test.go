package backend

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/bbal/bbal/tools/testbed"
)

// waitResult waits (up to a real-time bound) for WaitUp's result on done.
func waitResult(t *testing.T, done <-chan bool, what string) bool {
	t.Helper()
	select {
	case ok := <-done:
		return ok
	case <-time.After(10 * time.Second):
		t.Fatalf("WaitUp has not returned %s", what)
		return false
	}
}

// WaitUp returns once every backend asked for that the Set has is ok,
// woken by their state changes, and not before; an unknown ID is not
// waited for.
func TestWaitUp(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, logs := newTestSet(t, dir, Config{})
	f1 := testbed.NewFake(t, filepath.Join(dir, "5301"))
	f2 := testbed.NewFake(t, filepath.Join(dir, "5302"))
	s.Scan()
	c1, c2 := f1.Accept(t), f2.Accept(t)

	done := make(chan bool, 1)
	go func() { done <- s.WaitUp(context.Background(), []ID{5301, 5302, 4242}) }()
	c1.Hello(t)
	logs.Wait(t, "backend socket established", map[string]any{"be_id": 5301})
	select {
	case ok := <-done:
		t.Fatalf("WaitUp returned %v with 5302 not up", ok)
	default:
	}
	c2.Hello(t)
	if !waitResult(t, done, "once both are up") {
		t.Fatal("WaitUp reported false")
	}
	if !s.WaitUp(context.Background(), nil) || !s.WaitUp(context.Background(), []ID{5301, 5302}) {
		t.Fatal("WaitUp false for backends that are up")
	}
}

// WaitUp gives up when its context is done, and says so.
func TestWaitUpGivesUp(t *testing.T) {
	dir := testbed.SocketDir(t)
	s, _ := newTestSet(t, dir, Config{})
	f := testbed.NewFake(t, filepath.Join(dir, "5301"))
	s.Scan()
	f.Accept(t) // connected, no hello: not ok

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool, 1)
	go func() { done <- s.WaitUp(ctx, []ID{5301}) }()
	cancel()
	if waitResult(t, done, "when its context was cancelled") {
		t.Fatal("WaitUp reported true for a backend not up")
	}
	if s.WaitUp(ctx, []ID{5301}) {
		t.Fatal("WaitUp on a done context reported true")
	}
}
