package debugapi_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
)

// TestMetricsAreInTheREADME: every bbal metric a scrape returns is in
// README.md's list, so that the list cannot fall behind.
func TestMetricsAreInTheREADME(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(testbed.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	h := servertest.NewConfig(t, func(c *server.Config) { c.Probe = server.Probe{Name: "example.com.", Type: 1} }, nil)
	h.StartGo("5301")
	code, body := get(t, h.DebugSocket, "GET", "/metrics", nil)
	families := parseMetrics(t, "debug socket", code, body)
	n := 0
	for name := range families {
		if !strings.HasPrefix(name, "bbal_") {
			continue
		}
		n++
		if !regexp.MustCompile("`" + name + "[`{]").Match(readme) {
			t.Errorf("metric %s is not in README.md", name)
		}
	}
	if n < 40 {
		t.Fatalf("only %d bbal metrics scraped", n)
	}
}
