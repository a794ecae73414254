package testbed

import (
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/bbal/bbal/backend/counter"
)

// CheckCounterTable checks a package's table of counters against their
// owner O, a struct, and its snapshot S: every atomic.Uint64 and
// counter.Striped field of O is in the table once, and each entry has a field of S and a metric
// (name and reason) of its own, and a help text. notCounts names the
// atomic.Uint64 fields of O that are no count (an ID allocator).
func CheckCounterTable[O, S any](t testing.TB, table counter.Table[O, S], notCounts ...string) {
	t.Helper()
	var o O
	var s S
	fields := map[counter.Value]bool{}
	stats := map[*uint64]bool{}
	metrics := map[[2]string]bool{}
	for _, c := range table {
		f, st, m := c.Field(&o), c.Stat(&s), [2]string{c.Metric, c.Reason}
		if fields[f] || stats[st] || metrics[m] || c.Help == "" {
			t.Errorf("%s{%s}: a field, a field of the snapshot or a metric used twice, or no help", c.Metric, c.Reason)
		}
		fields[f], stats[st], metrics[m] = true, true, true
	}
	v := reflect.ValueOf(&o).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		name := v.Type().Field(i).Name
		var addr counter.Value
		switch f.Type() {
		case reflect.TypeFor[atomic.Uint64]():
			addr = (*atomic.Uint64)(unsafe.Pointer(f.UnsafeAddr()))
		case reflect.TypeFor[counter.Striped]():
			addr = (*counter.Striped)(unsafe.Pointer(f.UnsafeAddr()))
		default:
			continue
		}
		if !slices.Contains(notCounts, name) && !fields[addr] {
			t.Errorf("%s.%s is not in the table of counters", v.Type().Name(), name)
		}
	}
}
