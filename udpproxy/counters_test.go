package udpproxy

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// TestCounterTableCoversEveryCount: each plain count of the proxy is in
// counterTable once, so that Stats, ResetCounters and the metrics cannot
// miss it.
func TestCounterTableCoversEveryCount(t *testing.T) { testbed.CheckCounterTable(t, counterTable) }
