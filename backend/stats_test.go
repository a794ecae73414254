package backend

import (
	"sync/atomic"
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// TestCounterTableCoversEveryCount: each plain count of a backend is in
// counterTable once, with a Stats field and a metric of its own, so that
// Stats, ResetCounters and the metrics cannot miss it.
func TestCounterTableCoversEveryCount(t *testing.T) {
	var c counters
	var s Stats
	var fields []*atomic.Uint64
	stats := map[*uint64]bool{}
	metrics := map[[2]string]bool{}
	for _, e := range counterTable {
		fields = append(fields, e.field(&c))
		if stats[e.stat(&s)] || metrics[[2]string{e.Metric, e.Reason}] || e.Help == "" {
			t.Errorf("%s{%s}: a Stats field or metric used twice, or no help", e.Metric, e.Reason)
		}
		stats[e.stat(&s)], metrics[[2]string{e.Metric, e.Reason}] = true, true
	}
	for _, name := range testbed.CountsNotInTable(&c, fields) {
		t.Errorf("counters.%s is not in counterTable once", name)
	}
}
