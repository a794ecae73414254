package main

import (
	"encoding/json"
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
	// One query: the kernel gives it (DNS ID mod 2) to one reader.
	h.Who(testbed.Loopback(1), false)
	out, errs, code := balstat(t, h, "readers")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ADDRESS") {
		t.Fatalf("balstat readers:\n%s", out)
	}
	busy := 0
	for i, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != h.Addr.String() || f[1] != []string{"0", "1"}[i] {
			t.Fatalf("line %q: want the address, reader %d, datagrams and share", l, i)
		}
		if f[2] == "1" && f[3] == "100.0%" {
			busy++
		} else if f[2] != "0" || f[3] != "0.0%" {
			t.Fatalf("line %q: one datagram in all", l)
		}
	}
	if busy != 1 {
		t.Fatalf("balstat readers: %d readers had the query, want 1:\n%s", busy, out)
	}
	out, _, code = balstat(t, h, "-j", "readers")
	var rs []debugapi.Reader
	if err := json.Unmarshal([]byte(out), &rs); err != nil || code != 0 || len(rs) != 2 || rs[0].Datagrams+rs[1].Datagrams != 1 {
		t.Fatalf("balstat -j readers: %+v, %v, exit %d", rs, err, code)
	}
	if _, errs, code := balstat(t, h, "readers", "all"); code != 2 || !strings.Contains(errs, "readers takes no arguments") {
		t.Errorf("balstat readers all: exit %d, %q", code, errs)
	}
}
