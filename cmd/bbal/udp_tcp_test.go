package main

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

func TestQueriesReachGoBackendWithTrueClientAddress(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartGo(t, h.Sock("5301"), "one")
	h.B.Backends.Scan()
	h.Established(0, 5301)

	for _, tcp := range []bool{false, true} {
		got := h.Who(testbed.Loopback(7), tcp) // checks address and port
		if got["backend"] != "one" {
			t.Fatalf("answered by %q", got["backend"])
		}
	}
}
