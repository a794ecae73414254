package remotes

import (
	"net/netip"
	"testing"
)

// StandinRange is the one place the default range is applied; the
// table uses what it returns.
func TestStandinRange(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "240.0.0.0/4"},
		{"198.18.0.0/15", "198.18.0.0/15"},
		{"198.19.4.9/24", "198.19.4.0/24"},
		{"192.0.2.0/30", "192.0.2.0/30"},
		{"192.0.2.0/31", "240.0.0.0/4"},
		{"2001:db8::/64", "240.0.0.0/4"},
	} {
		var p netip.Prefix
		if tc.in != "" {
			p = netip.MustParsePrefix(tc.in)
		}
		if got := StandinRange(p); got.String() != tc.want {
			t.Errorf("StandinRange(%q) = %v, want %s", tc.in, got, tc.want)
		}
		tab, _, _ := newTableConfig(t, Config{Picker: newFake(1), Standins: p})
		if got := tab.Standins(); got.String() != tc.want {
			t.Errorf("a table given %q uses %v, want %s", tc.in, got, tc.want)
		}
	}
}
