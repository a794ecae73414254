package man_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bbal/bbal/tools/man"
	"github.com/bbal/bbal/tools/testbed"
)

// TestLint runs mandoc's checker on both pages at its strictest (-Wall,
// style included).
func TestLint(t *testing.T) {
	mandoc := testbed.Tool(t, "mandoc", "mandoc")
	for _, page := range []string{"bbal.8", "balstat.8"} {
		t.Run(page, func(t *testing.T) {
			for _, p := range lint(t, mandoc, ".", page) {
				t.Error(p)
			}
		})
	}
}

// TestLintFinds checks that lint sees a fault: a misspelt macro.
func TestLintFinds(t *testing.T) {
	mandoc := testbed.Tool(t, "mandoc", "mandoc")
	dir := t.TempDir()
	bad := strings.Replace(man.Bbal, ".Sh SIGNALS", ".Shh SIGNALS", 1)
	if err := os.WriteFile(filepath.Join(dir, "bbal.8"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := lint(t, mandoc, dir, "bbal.8"); !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, "Shh") }) {
		t.Fatalf("mandoc did not report the unknown macro: %q", p)
	}
}

// lint returns mandoc's messages about the page dir/name. One is left
// out: "referenced manual not found" says whether a page named in SEE
// ALSO (ipvsadm(8), curl(1)) is installed on this machine, not whether
// the page is right; so are the lines about the machine's manual
// database ("outdated mandoc.db"), which name no place in the page.
func lint(t *testing.T, mandoc, dir, name string) []string {
	cmd := exec.Command(mandoc, "-Tlint", "-Wall", name)
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput()
	var problems []string
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "mandoc: "+name+":") && !strings.Contains(line, "referenced manual not found") {
			problems = append(problems, strings.TrimSpace(line))
		}
	}
	return problems
}

const usage = `usage: cmd -s DIR [-p PORT] [-F]

  -s DIR    the directory (required)
  -p PORT   the port (default
            53; 0 picks one)
  -F        fail (default: drop)

  start ID  start it
  stop      stop it
`

const page = `.Sh SYNOPSIS
.Nm
.Op Fl F
.Op Fl p Ar port
.Fl s Ar dir
.Sh DESCRIPTION
.Bl -tag -width Ds
.It Fl F
Fail.
By default, drop.
.It Fl h
Help.
.It Fl p Ar port
The port.
.Bl -tag -width Ds
.It Fl x
A nested list is part of the entry.
.El
The default is 53.
.It Fl s Ar dir
Required.
.El
.Bl -tag -width Ds
.It Cm start Ar id
.It Cm stop
.El
.Sh SIGNALS
.Bl -tag -width Ds
.It Dv SIGTERM
.El
`

func TestCheckAgrees(t *testing.T) {
	if p := man.Check(page, usage); len(p) > 0 {
		t.Fatalf("problems in a page that agrees: %q", p)
	}
	flags, cmds := man.PageItems(page)
	if got := flags.Names(); !slices.Equal(got, []string{"F", "h", "p", "s"}) {
		t.Errorf("page options %q", got)
	}
	if !strings.Contains(flags["p"], "The default is 53.") {
		t.Errorf("-p entry %q: the nested list cut it short", flags["p"])
	}
	if got := cmds.Names(); !slices.Equal(got, []string{"start", "stop"}) {
		t.Errorf("page commands %q", got)
	}
	uf, uc := man.UsageItems(usage)
	if got := uf.Names(); !slices.Equal(got, []string{"F", "p", "s"}) {
		t.Errorf("usage options %q", got)
	}
	if got := uc.Names(); !slices.Equal(got, []string{"start", "stop"}) {
		t.Errorf("usage commands %q", got)
	}
}

// TestCheckFinds gives Check each kind of disagreement.
func TestCheckFinds(t *testing.T) {
	tests := []struct {
		name        string
		page, usage string
		want        string
	}{
		{"new option in usage", page, usage + "  -A MS     stall threshold (default 100)\n",
			"option -A: in the usage, not in the page"},
		{"option gone from usage", page, strings.Replace(usage, "  -F        fail (default: drop)\n", "", 1),
			"option -F: in the page, not in the usage"},
		{"option in synopsis only", strings.Replace(page, ".Op Fl F\n", ".Op Fl F\n.Op Fl q\n", 1), usage,
			"option -q: in the page's SYNOPSIS, not in the usage"},
		{"no default", strings.Replace(page, "By default, drop.\n", "", 1), usage,
			"option -F: the page does not say its default"},
		{"other default", strings.Replace(page, "default is 53", "default is 5353", 1), usage,
			"option -p: the usage's default is 53, which the page's entry does not say"},
		{"new command", page, usage + "  reset     reset\n",
			"command reset: in the usage, not in the page"},
		{"command gone", page, strings.Replace(usage, "  stop      stop it\n", "", 1),
			"command stop: in the page, not in the usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := man.Check(tt.page, tt.usage)
			if !slices.ContainsFunc(p, func(s string) bool { return strings.HasPrefix(s, tt.want) }) {
				t.Fatalf("problems %q, want %q", p, tt.want)
			}
		})
	}
}

func TestCheckParser(t *testing.T) {
	parser := map[string]bool{"s": true, "p": true, "F": true}
	if p := man.CheckParser(usage, func(f string) bool { return parser[f] }); len(p) > 0 {
		t.Fatalf("problems: %q", p)
	}
	parser["A"] = true
	delete(parser, "F")
	p := man.CheckParser(usage, func(f string) bool { return parser[f] })
	want := []string{"option -A: taken by the parser, not in the usage", "option -F: in the usage, not taken by the parser"}
	if !slices.Equal(p, want) {
		t.Fatalf("problems %q, want %q", p, want)
	}
}
