package main

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

func TestQueriesReachGoBackendWithTrueClientAddress(t *testing.T) {
	h := newHarness(t, nil)
	testbed.StartGo(t, h.sock("5301"), "one")
	h.b.Backends.Scan()
	h.established(0, 5301)

	for _, tcp := range []bool{false, true} {
		got := h.who(testbed.Loopback(7), tcp) // checks address and port
		if got["backend"] != "one" {
			t.Fatalf("answered by %q", got["backend"])
		}
	}
}
