package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// The service files, checked by their own tools. systemd-analyze verify
// needs the unit installed with the binary it runs: TestInstall in
// tools/deb does it on the package's.

// maxExposure is systemd-analyze security's score for bbal.service, 0
// (locked down) to 10, quoted in the README: a change to the unit that
// loosens it fails TestUnitSecurity.
const maxExposure = 1.7

var exposure = regexp.MustCompile(`Overall exposure level for bbal\.service: ([0-9.]+)`)

func TestUnitSecurity(t *testing.T) {
	analyze := testbed.Tool(t, "systemd-analyze", "systemd")
	out, err := exec.Command(analyze, "security", "--offline=true", "bbal.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposure.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	if score > maxExposure {
		t.Errorf("exposure %.1f, more than %.1f:\n%s", score, maxExposure, out)
	}
	t.Logf("exposure level %.1f", score)
}

// TestManifestWellFormed checks the SMF manifest with xmllint. It is
// not validated against SMF's DTD (service_bundle.dtd.1, which the
// DOCTYPE names at its illumos path): no Debian package has it.
func TestManifestWellFormed(t *testing.T) {
	xmllint := testbed.Tool(t, "xmllint", "libxml2-utils")
	if out, err := exec.Command(xmllint, "--noout", "bbal.xml").CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("xmllint bbal.xml: %v\n%s", err, out)
	}
	// And a manifest with a tag left open is found out.
	b, err := os.ReadFile("bbal.xml")
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.xml")
	os.WriteFile(bad, []byte(strings.Replace(string(b), "</service>", "", 1)), 0o644)
	if out, err := exec.Command(xmllint, "--noout", bad).CombinedOutput(); err == nil || !strings.Contains(string(out), "service") {
		t.Errorf("xmllint took a manifest with <service> unclosed: %v %s", err, out)
	}
}
