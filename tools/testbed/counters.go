package testbed

import (
	"reflect"
	"strconv"
	"sync/atomic"
	"unsafe"
)

// CountsNotInTable checks a package's table of counters against their
// owner, a pointer to a struct: it returns the names of the struct's
// atomic.Uint64 fields that are not in table, and "twice: N" for the
// N-th entry of table that repeats an earlier one.
func CountsNotInTable(owner any, table []*atomic.Uint64) []string {
	var bad []string
	in := map[*atomic.Uint64]bool{}
	for i, p := range table {
		if in[p] {
			bad = append(bad, "twice: "+strconv.Itoa(i))
		}
		in[p] = true
	}
	v := reflect.ValueOf(owner).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Type() == reflect.TypeFor[atomic.Uint64]() && !in[(*atomic.Uint64)(unsafe.Pointer(f.UnsafeAddr()))] {
			bad = append(bad, v.Type().Field(i).Name)
		}
	}
	return bad
}
