package udpproxy

import (
	"sync/atomic"
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// TestCounterTableCoversEveryCount: each plain count of the proxy is in
// counterTable once, with a Stats field and a metric of its own, so that
// Stats, ResetCounters and the metrics cannot miss it.
func TestCounterTableCoversEveryCount(t *testing.T) {
	var p Proxy
	var s Stats
	var fields []*atomic.Uint64
	stats := map[*uint64]bool{}
	metrics := map[string]bool{}
	for _, e := range counterTable {
		fields = append(fields, e.field(&p))
		if stats[e.stat(&s)] || metrics[e.Metric] || e.Help == "" {
			t.Errorf("%s: a Stats field or metric used twice, or no help", e.Metric)
		}
		stats[e.stat(&s)], metrics[e.Metric] = true, true
	}
	for _, name := range testbed.CountsNotInTable(&p, fields) {
		t.Errorf("Proxy.%s is not in counterTable once", name)
	}
}
