package main

import (
	"os"
	"strconv"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
)

func TestMain(m *testing.M) {
	// The test binary doubles as bbal for the tests that need a process
	// of their own (signals, exit status, stdout).
	if os.Getenv("BBAL_TEST_MAIN") == "1" {
		if n, err := strconv.ParseUint(os.Getenv("BBAL_TEST_NOFILE"), 10, 64); err == nil {
			// A low descriptor limit, soft and hard, for the accept
			// back-off test.
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				panic(err)
			}
		}
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
