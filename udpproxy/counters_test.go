package udpproxy

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// TestCounterTableCoversEveryCount: each plain count of the proxy is in
// counterTable once, so that Stats, ResetCounters and the metrics cannot
// miss it. The stall checks done are the tests' synchronisation, not a
// count of traffic.
func TestCounterTableCoversEveryCount(t *testing.T) {
	testbed.CheckCounterTable(t, counterTable, "stallChecks", "readerChecks")
}
