package testbed

import (
	"testing"
	"time"
)

// Eventually checks cond every millisecond until it holds, failing the
// test with what after 10 s. It is for state that announces no event (a
// counter, a process's view of a file); prefer Logs.Wait where a log
// record marks the change.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
