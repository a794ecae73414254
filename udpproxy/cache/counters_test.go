package cache

import (
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

func TestCounterTable(t *testing.T) { testbed.CheckCounterTable(t, counterTable) }

// TestNilCache: without -c the debug API and the metrics read a nil
// cache.
func TestNilCache(t *testing.T) {
	var c *Cache
	if s := c.Stats(); s != (Stats{}) {
		t.Errorf("nil cache's stats %+v", s)
	}
	c.ResetCounters()
}
