package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
)

func TestMain(m *testing.M) {
	// The test binary doubles as bbal for the tests that need a process
	// of their own (signals, exit status, stdout).
	if os.Getenv("BBAL_TEST_MAIN") == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// harness is the shared in-process balancer.
type harness = servertest.Harness

func newHarness(t *testing.T, setup func(*server.Options)) *harness {
	t.Helper()
	return servertest.New(t, setup)
}
