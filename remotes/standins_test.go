package remotes

import (
	"net/netip"
	"testing"

	"github.com/bbal/bbal/protocol"
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

// Route says why it serves no client, so that the proxies count the
// reason without working it out again.
func TestRouteSaysWhyAClientIsDropped(t *testing.T) {
	// A /30: two usable stand-ins; a table of four remotes.
	tab, _, _ := newTableConfig(t, Config{Picker: newFake(1), MaxRemotes: 4, Standins: netip.MustParsePrefix("198.18.0.0/30")})
	for _, tc := range []struct {
		client string
		want   DropReason
	}{
		{"198.18.0.1", DropStandinRange}, // the probe source
		{"198.18.0.3", DropStandinRange},
		{"192.0.2.1", NotDropped},
		{"2001:db8::1", NotDropped},
		{"2001:db8::2", NotDropped},
		{"2001:db8::3", DropNoStandin}, // the range is full
		{"::ffff:198.18.0.2", DropStandinRange},
		{"192.0.2.2", NotDropped},      // the fourth remote
		{"192.0.2.3", NotDropped},      // the table is full: served unpinned
		{"2001:db8::4", DropNoStandin}, // the table is full: no record, no stand-in
	} {
		rt := tab.Route(netip.MustParseAddr(tc.client))
		if rt.Drop != tc.want || rt.Remote == nil {
			t.Errorf("%s: %+v, want drop %d", tc.client, rt, tc.want)
		}
		if served := rt.Wire != 0 && rt.Backend != 0; served != (tc.want == NotDropped) {
			t.Errorf("%s: wire %v backend %d with drop %d", tc.client, protocol.U32ToAddr(rt.Wire), rt.Backend, rt.Drop)
		}
	}
	if tab.NoStandin() != 2 || tab.Unpinned() != 1 {
		t.Errorf("counted %d without a stand-in, %d unpinned; want 2 and 1", tab.NoStandin(), tab.Unpinned())
	}
}
