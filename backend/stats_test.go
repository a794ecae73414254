package backend

import (
	"reflect"
	"sync/atomic"
	"testing"
	"unsafe"
)

// TestCounterTableCoversEveryCount: each plain count of a backend is in
// counterTable once, with a Stats field and a metric of its own, so that
// Stats, ResetCounters and the metrics cannot miss it.
func TestCounterTableCoversEveryCount(t *testing.T) {
	var c counters
	var s Stats
	fields := map[*atomic.Uint64]string{}
	stats := map[*uint64]string{}
	metrics := map[[2]string]bool{}
	for _, e := range counterTable {
		name := e.Metric + "{" + e.Reason + "}"
		if fields[e.field(&c)] != "" || stats[e.stat(&s)] != "" || metrics[[2]string{e.Metric, e.Reason}] {
			t.Errorf("%s: a field, Stats field or metric used twice", name)
		}
		fields[e.field(&c)], stats[e.stat(&s)], metrics[[2]string{e.Metric, e.Reason}] = name, name, true
		if e.Help == "" {
			t.Errorf("%s: no help", name)
		}
	}
	v := reflect.ValueOf(&c).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Type() != reflect.TypeFor[atomic.Uint64]() {
			continue
		}
		if fields[(*atomic.Uint64)(unsafe.Pointer(f.UnsafeAddr()))] == "" {
			t.Errorf("counters.%s is not in counterTable", v.Type().Field(i).Name)
		}
	}
}
