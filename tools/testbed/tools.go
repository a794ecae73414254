package testbed

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of the program name, which the Debian package
// pkg installs. When it is missing the test is skipped, saying what to
// install, except under CI (CI=true), whose .ci/run installs every such
// package: there a missing tool fails the test, so that a check is not
// skipped unseen.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found, which .ci/run installs (Debian package %s): %v", name, pkg, err)
	}
	t.Skipf("%s not found: apt-get install %s to run this check", name, pkg)
	return ""
}
