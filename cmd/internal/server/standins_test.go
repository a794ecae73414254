package server_test

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/remotes"
)

// The health checks come from the range the table uses, whatever the
// configuration says: the default range is applied in one place.
func TestProbeSourceIsInTheTablesRange(t *testing.T) {
	for _, tc := range []struct {
		name     string
		standins netip.Prefix
		want     string
	}{
		{"none", netip.Prefix{}, "240.0.0.1"},
		{"set", netip.MustParsePrefix("198.18.0.0/15"), "198.18.0.1"},
		{"too narrow", netip.MustParsePrefix("198.18.0.0/31"), "240.0.0.1"},
		{"IPv6", netip.MustParsePrefix("2001:db8::/64"), "240.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := servertest.NewConfig(t, func(c *server.Config) {
				c.Standins = tc.standins
				c.Probe = server.Probe{Name: "probe.example.", Type: dns.TypeA}
			}, nil)
			h.Logs.Wait(t, "health checks by DNS", map[string]any{"probe_source": tc.want})
			if got := remotes.ProbeSource(h.B.Table.Standins()); got.String() != tc.want {
				t.Errorf("the table's range %v has probe source %v, want %s", h.B.Table.Standins(), got, tc.want)
			}
		})
	}
	if server.ProbeSource.String() != "240.0.0.1" {
		t.Errorf("ProbeSource %v", server.ProbeSource)
	}
}
