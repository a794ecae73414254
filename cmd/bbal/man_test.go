package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/bbal/bbal/tools/man"
)

// TestManPage checks bbal(8) against the usage that -h prints, and the
// usage against the options the parser takes: an option added to one
// and not the others fails here.
func TestManPage(t *testing.T) {
	noEnv := func(string) string { return "" }
	var out bytes.Buffer
	if code := run([]string{"-h"}, noEnv, &out, io.Discard, nil); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
	for _, p := range man.Check(man.Bbal, out.String()) {
		t.Error("bbal.8: " + p)
	}
	for _, p := range man.CheckParser(out.String(), func(flag string) bool {
		_, err := parseArgs([]string{"-" + flag}, noEnv)
		return err == nil || !strings.Contains(err.Error(), "flag provided but not defined")
	}) {
		t.Error(p)
	}
}
