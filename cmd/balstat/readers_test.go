package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
)

func TestReadersCommand(t *testing.T) {
	h := servertest.NewConfig(t, func(cfg *server.Config) { cfg.Readers = 2 }, nil)
	h.StartGo("5301")
	// One query: the first reader, the one given datagrams at so low a
	// rate, has it.
	h.Who(testbed.Loopback(1), false)
	out, errs, code := balstat(t, h, "readers")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ADDRESS") {
		t.Fatalf("balstat readers:\n%s", out)
	}
	want := [][]string{
		{h.Addr.String(), "0", "1", "1.0", "100.0%"},
		{h.Addr.String(), "1", "0", "0.0", "0.0%", "idle"},
	}
	for i, l := range lines[1:] {
		if f := strings.Fields(l); !slices.Equal(f, want[i]) {
			t.Fatalf("line %q, want %q", l, want[i])
		}
	}
	out, _, code = balstat(t, h, "-j", "readers")
	var rs []debugapi.Reader
	if err := json.Unmarshal([]byte(out), &rs); err != nil || code != 0 || len(rs) != 2 || rs[0].Datagrams != 1 || rs[0].Reads != 1 ||
		!rs[0].Active || rs[1].Active {
		t.Fatalf("balstat -j readers: %+v, %v, exit %d", rs, err, code)
	}
	if _, errs, code := balstat(t, h, "readers", "all"); code != 2 || !strings.Contains(errs, "readers takes no arguments") {
		t.Errorf("balstat readers all: exit %d, %q", code, errs)
	}
}
