package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/bbal/bbal/tools/man"
)

// TestManPage checks balstat(8) against the usage that -h prints, and
// the usage against the options the parser takes and the commands it
// knows.
func TestManPage(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &out, io.Discard); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
	usage := out.String()
	for _, p := range man.Check(man.Balstat, usage) {
		t.Error("balstat.8: " + p)
	}
	for _, p := range man.CheckParser(usage, func(flag string) bool {
		var stderr bytes.Buffer
		run(context.Background(), []string{"-" + flag}, io.Discard, &stderr)
		return !strings.Contains(stderr.String(), "flag provided but not defined")
	}) {
		t.Error(p)
	}
	_, cmds := man.UsageItems(usage)
	if len(cmds) == 0 {
		t.Error("the usage lists no commands")
	}
	for _, c := range append(cmds.Names(), "frobnicate") {
		known := !strings.HasPrefix(checkCommand([]string{c}), "unknown command")
		if _, listed := cmds[c]; known != listed {
			t.Errorf("command %s: known to balstat %v, in the usage %v", c, known, listed)
		}
	}
}
