package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
)

// rawBytes returns the control characters and invalid UTF-8 in out but
// for the newlines that end lines.
func rawBytes(out string) []string {
	var bad []string
	if !utf8.ValidString(out) {
		bad = append(bad, "invalid UTF-8")
	}
	for _, r := range out {
		if r != '\n' && !strconv.IsPrint(r) {
			bad = append(bad, strconv.QuoteRune(r))
		}
	}
	return bad
}

// Socket names are bytes: balstat's tables, its JSON and its action
// replies show them escaped, with nothing a terminal acts on, one row a
// backend.
func TestControlCharactersInNames(t *testing.T) {
	h := servertest.New(t, nil)
	h.StartGo("5301")
	names := []string{"esc\x1b[2J", "bel\a", "new\nline", "tab\tbed", "bad\xff", `back\slash`}
	for _, n := range names {
		testbed.StaleSocket(t, h.Sock(n))
	}
	h.B.Backends.Scan()
	testbed.Eventually(t, "a backend each", func() bool { return len(h.B.Backends.All()) == 1+len(names) })
	ids := map[string]uint16{}
	for _, b := range h.B.Backends.All() {
		ids[strings.TrimPrefix(b.Path(), h.Dir+"/")] = uint16(b.ID())
	}
	shown := map[string]string{
		"esc\x1b[2J": `esc\x1b[2J`, "bel\a": `bel\a`, "new\nline": `new\nline`,
		"tab\tbed": `tab\tbed`, "bad\xff": `bad\xff`, `back\slash`: `back\\slash`,
	}

	out, errs, code := balstat(t, h)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if bad := rawBytes(out); bad != nil {
		t.Errorf("table shows %v raw:\n%s", bad, out)
	}
	rows := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			rows[f[0]] = l
		}
	}
	for _, n := range names {
		row := rows[strconv.Itoa(int(ids[n]))]
		if !strings.HasSuffix(row, " $DIR/"+shown[n]) {
			t.Errorf("backend %d (%q): row %q, want it to end in $DIR/%s", ids[n], n, row, shown[n])
		}
	}
	if n := strings.Count(strings.Split(out, "\n\n")[0], "\n"); n != 2+len(names) {
		t.Errorf("BACKENDS table has %d lines, want %d:\n%s", n, 2+len(names), out)
	}

	out, _, code = balstat(t, h, "-j")
	if bad := rawBytes(out); code != 0 || bad != nil {
		t.Errorf("-j: exit %d, shows %v raw", code, bad)
	}
	var got debugapi.BackendsReply
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-j: %v", err)
	}
	for _, b := range got.Backends {
		for n, id := range ids {
			if id == b.ID && b.Path != "$DIR/"+backend.EscapePath(n) {
				t.Errorf("-j: backend %d path %q, want $DIR/%s", id, b.Path, backend.EscapePath(n))
			}
		}
	}

	out, _, code = balstat(t, h, "drain", strconv.Itoa(int(ids["esc\x1b[2J"])))
	if want := "backend " + strconv.Itoa(int(ids["esc\x1b[2J"])) + ": draining ($DIR/esc\\x1b[2J)\n"; code != 0 || out != want {
		t.Errorf("drain: exit %d, %q; want %q", code, out, want)
	}
}
