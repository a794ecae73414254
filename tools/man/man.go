package man

import (
	_ "embed"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// The pages' sources.
var (
	//go:embed bbal.8
	Bbal string
	//go:embed balstat.8
	Balstat string
)

// Items are the entries of a list (options or commands) by name: an
// option's letter without its dash, a command's word. Each holds the
// entry's text.
type Items map[string]string

// Names returns the items' names, sorted.
func (it Items) Names() []string {
	names := make([]string, 0, len(it))
	for n := range it {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// PageItems returns a page's options (entries `.It Fl X`) and commands
// (entries `.It Cm word`), each with the mdoc source of its entry up to
// the next entry or the end of its list.
func PageItems(src string) (flags, cmds Items) {
	flags, cmds = Items{}, Items{}
	type entry struct {
		items Items
		name  string
		text  strings.Builder
	}
	var entries []*entry
	var cur *entry
	depth := 0 // of .Bl lists within the current entry
	for line := range strings.Lines(src) {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == ".Bl" && cur != nil:
			depth++
		case f[0] == ".El" && depth > 0:
			depth--
		case (f[0] == ".It" || f[0] == ".El") && depth == 0:
			cur = nil
			if f[0] == ".It" && len(f) >= 3 && (f[1] == "Fl" || f[1] == "Cm") {
				cur = &entry{items: cmds, name: f[2]}
				if f[1] == "Fl" {
					cur.items = flags
				}
				entries = append(entries, cur)
			}
		}
		if cur != nil {
			cur.text.WriteString(line)
		}
	}
	for _, e := range entries {
		e.items[e.name] = e.text.String()
	}
	return flags, cmds
}

// SynopsisFlags returns the options a page's SYNOPSIS names.
func SynopsisFlags(src string) []string {
	var flags []string
	in := false
	for line := range strings.Lines(src) {
		if strings.HasPrefix(line, ".Sh ") {
			in = strings.TrimSpace(line) == ".Sh SYNOPSIS"
			continue
		}
		if !in {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "Fl" || i == 0 && f[i] == ".Fl" {
				flags = append(flags, f[i+1])
			}
		}
	}
	return flags
}

// UsageItems returns the options and commands a usage text lists: after
// its first blank line, a line "  -X ..." starts an option's entry, a
// line "  word ..." a command's, and a line indented further goes on
// with the entry before it.
func UsageItems(usage string) (flags, cmds Items) {
	flags, cmds = Items{}, Items{}
	var items Items
	name := ""
	body := false
	for line := range strings.Lines(usage) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.TrimSpace(line) == "":
			body, items = true, nil
		case !body:
		case strings.HasPrefix(line, "  -") && len(line) > 3 && line[3] != ' ':
			items, name = flags, strings.Fields(line)[0][1:]
			items[name] = line
		case strings.HasPrefix(line, "  ") && line[2] >= 'a' && line[2] <= 'z':
			items, name = cmds, strings.Fields(line)[0]
			items[name] = line
		case strings.HasPrefix(line, "   ") && items != nil:
			items[name] += "\n" + line
		}
	}
	return flags, cmds
}

// defaultValue finds "(default VALUE" in a usage entry; a default given
// in words, "(default: ...)", has no VALUE.
var defaultValue = regexp.MustCompile(`\(default\s+([^\s;),]+)`)

// Check compares a manual page with the usage text of its command and
// returns what disagrees: an option or command in one and not the
// other, an option in the SYNOPSIS that the usage lacks, an option's
// entry that does not say its default, or says another than the usage.
// -h, which Go's flag package provides, may be on the page alone.
func Check(page, usage string) []string {
	var problems []string
	pf, pc := PageItems(page)
	uf, uc := UsageItems(usage)
	if len(uf) == 0 {
		problems = append(problems, "the usage text lists no options")
	}
	delete(pf, "h")
	problems = append(problems, compare("option -", pf, uf)...)
	problems = append(problems, compare("command ", pc, uc)...)
	for _, f := range SynopsisFlags(page) {
		if _, ok := uf[f]; !ok && f != "h" {
			problems = append(problems, fmt.Sprintf("option -%s: in the page's SYNOPSIS, not in the usage", f))
		}
	}
	for _, name := range pf.Names() {
		entry := pf[name]
		u, ok := uf[name]
		if !ok {
			continue
		}
		lower := strings.ToLower(entry)
		if !strings.Contains(lower, "default") && !strings.Contains(lower, "required") {
			problems = append(problems, fmt.Sprintf("option -%s: the page does not say its default", name))
		}
		if m := defaultValue.FindStringSubmatch(strings.Join(strings.Fields(u), " ")); m != nil && !containsWord(entry, m[1]) {
			problems = append(problems, fmt.Sprintf("option -%s: the usage's default is %s, which the page's entry does not say", name, m[1]))
		}
	}
	return problems
}

// compare lists the names in page or usage and not in the other.
func compare(what string, page, usage Items) []string {
	var problems []string
	for _, n := range usage.Names() {
		if _, ok := page[n]; !ok {
			problems = append(problems, fmt.Sprintf("%s%s: in the usage, not in the page (add an .It entry)", what, n))
		}
	}
	for _, n := range page.Names() {
		if _, ok := usage[n]; !ok {
			problems = append(problems, fmt.Sprintf("%s%s: in the page, not in the usage", what, n))
		}
	}
	return problems
}

// containsWord reports whether s has w standing apart from what is
// around it (not "53" in "5353").
func containsWord(s, w string) bool {
	return regexp.MustCompile(`(^|[\s(])` + regexp.QuoteMeta(w) + `($|[\s.,;:)])`).MatchString(s)
}

// CheckParser compares the options a usage text lists with those a flag
// parser takes, one letter or digit at a time: defined says whether the
// parser knows -X (Go's flag package answers "flag provided but not
// defined" when it does not). -h is left out: the flag package takes it
// without its being defined.
func CheckParser(usage string, defined func(flag string) bool) []string {
	uf, _ := UsageItems(usage)
	var problems []string
	for _, c := range "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgijklmnopqrstuvwxyz" {
		name := string(c)
		_, listed := uf[name]
		switch d := defined(name); {
		case d && !listed:
			problems = append(problems, fmt.Sprintf("option -%s: taken by the parser, not in the usage", name))
		case !d && listed:
			problems = append(problems, fmt.Sprintf("option -%s: in the usage, not taken by the parser", name))
		}
	}
	return problems
}
