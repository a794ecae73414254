package deb_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bbal/bbal/tools/testbed"
)

// The Debian package that `make deb` builds (build.sh), checked with
// dpkg-deb and lintian, and installed, upgraded, removed and purged on
// this machine by TestInstall when it runs as root.

var (
	builtMu  sync.Mutex
	builtDir string
	built    = map[string]string{} // version → .deb
)

// build returns the package of the given version, built once per run
// by build.sh.
func build(t *testing.T, version string) string {
	t.Helper()
	testbed.Tool(t, "dpkg-deb", "dpkg")
	builtMu.Lock()
	defer builtMu.Unlock()
	if deb, ok := built[version]; ok {
		return deb
	}
	if builtDir == "" {
		var err error
		if builtDir, err = os.MkdirTemp("", "bbal-deb"); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("./build.sh", builtDir)
	cmd.Env = append(os.Environ(), "DEB_VERSION="+version)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, stderr.Bytes())
	}
	deb := strings.TrimSpace(string(out))
	if want := filepath.Join(builtDir, "bbal_"+version+"_amd64.deb"); deb != want {
		t.Fatalf("build.sh made %q, want %q", deb, want)
	}
	built[version] = deb
	return deb
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// contents is what the package holds, with modes and owners: the
// layout Debian policy asks for (binaries in /usr/sbin, balstat too, as
// a tool that needs root or the bbal user; gzipped manual pages; the
// unit under /lib/systemd/system, as bookworm's packages have it; the
// copyright and a native package's changelog.gz).
var contents = []string{
	"drwxr-xr-x root/root ./",
	"drwxr-xr-x root/root ./etc/",
	"drwxr-xr-x root/root ./etc/default/",
	"-rw-r--r-- root/root ./etc/default/bbal",
	"drwxr-xr-x root/root ./lib/",
	"drwxr-xr-x root/root ./lib/systemd/",
	"drwxr-xr-x root/root ./lib/systemd/system/",
	"-rw-r--r-- root/root ./lib/systemd/system/bbal.service",
	"drwxr-xr-x root/root ./usr/",
	"drwxr-xr-x root/root ./usr/sbin/",
	"-rwxr-xr-x root/root ./usr/sbin/balstat",
	"-rwxr-xr-x root/root ./usr/sbin/bbal",
	"drwxr-xr-x root/root ./usr/share/",
	"drwxr-xr-x root/root ./usr/share/doc/",
	"drwxr-xr-x root/root ./usr/share/doc/bbal/",
	"-rw-r--r-- root/root ./usr/share/doc/bbal/changelog.gz",
	"-rw-r--r-- root/root ./usr/share/doc/bbal/copyright",
	"drwxr-xr-x root/root ./usr/share/lintian/",
	"drwxr-xr-x root/root ./usr/share/lintian/overrides/",
	"-rw-r--r-- root/root ./usr/share/lintian/overrides/bbal",
	"drwxr-xr-x root/root ./usr/share/man/",
	"drwxr-xr-x root/root ./usr/share/man/man8/",
	"-rw-r--r-- root/root ./usr/share/man/man8/balstat.8.gz",
	"-rw-r--r-- root/root ./usr/share/man/man8/bbal.8.gz",
}

func TestContents(t *testing.T) {
	deb := build(t, "0~test1")
	out, err := exec.Command("dpkg-deb", "--contents", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line) // mode owner size date time path
		if len(f) == 6 {
			got = append(got, f[0]+" "+f[1]+" "+f[5])
		}
	}
	if !slices.Equal(got, contents) {
		t.Errorf("contents:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(contents, "\n"))
	}
	for field, want := range map[string]string{
		"Package": "bbal", "Version": "0~test1", "Architecture": "amd64", "Depends": "adduser",
	} {
		if got := debField(t, deb, field); got != want {
			t.Errorf("%s: %q, want %q", field, got, want)
		}
	}
	if got := control(t, deb, "conffiles"); got != "/etc/default/bbal\n" {
		t.Errorf("conffiles %q", got)
	}

	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "--extract", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("extract: %v %s", err, out)
	}
	for _, f := range [][2]string{
		{"lib/systemd/system/bbal.service", "../deploy/bbal.service"},
		{"etc/default/bbal", "../deploy/bbal.default"},
		{"usr/share/lintian/overrides/bbal", "lintian-overrides"},
	} {
		sameFile(t, filepath.Join(x, f[0]), f[1], false)
	}
	sameFile(t, filepath.Join(x, "usr/share/man/man8/bbal.8.gz"), "../man/bbal.8", true)
	sameFile(t, filepath.Join(x, "usr/share/man/man8/balstat.8.gz"), "../man/balstat.8", true)
	changelog := gunzip(t, filepath.Join(x, "usr/share/doc/bbal/changelog.gz"))
	if !strings.HasPrefix(changelog, "bbal (0~test1) unstable; urgency=medium\n") {
		t.Errorf("changelog: %q", changelog)
	}
	// Stripped: no symbol table.
	if out, _ := exec.Command("file", filepath.Join(x, "usr/sbin/bbal")).Output(); len(out) > 0 &&
		!strings.Contains(string(out), ", stripped") {
		t.Errorf("bbal not stripped: %s", out)
	}
}

// TestLintian runs lintian on the package with every tag shown, pedantic
// ones included: none may remain but those lintian-overrides justifies.
func TestLintian(t *testing.T) {
	lintian := testbed.Tool(t, "lintian", "lintian")
	deb := build(t, "0~test1")
	out, _ := exec.Command(lintian, "--display-info", "--pedantic", "--display-experimental", deb).Output()
	for line := range strings.Lines(string(out)) {
		if !strings.HasPrefix(line, "N:") && !strings.HasPrefix(line, "O:") {
			t.Errorf("lintian: %s", strings.TrimSpace(line))
		}
	}
}

// TestCopyright checks that the copyright file has a paragraph for each
// Go module that bbal and balstat are built from: the binaries hold them.
func TestCopyright(t *testing.T) {
	b, err := os.ReadFile("copyright")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	inFiles := false
	for line := range strings.Lines(string(b)) {
		switch {
		case strings.HasPrefix(line, "Files:"):
			inFiles = true
			patterns = append(patterns, strings.Fields(line)[1:]...)
		case inFiles && strings.HasPrefix(line, " "):
			patterns = append(patterns, strings.Fields(line)...)
		default:
			inFiles = false
		}
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/bbal", "./cmd/balstat")
	cmd.Dir = testbed.RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	modules := strings.Fields(string(out))
	if len(modules) < 2 {
		t.Fatalf("go list found modules %q", modules)
	}
	for _, m := range modules {
		if m == "github.com/bbal/bbal" {
			continue
		}
		if !slices.ContainsFunc(patterns, func(p string) bool {
			return p != "*" && strings.HasPrefix(m+"/", strings.TrimSuffix(p, "*"))
		}) {
			t.Errorf("module %s: no Files: paragraph in tools/deb/copyright", m)
		}
	}
}

// TestInstall installs the package on this machine (a disposable
// container, as CI's is), upgrades it, removes and purges it, checking
// the files, the user, the unit and what is left at each step.
func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installing the package needs root")
	}
	testbed.Tool(t, "dpkg", "dpkg")
	if status(t) != "" {
		t.Skip("a bbal package is installed on this machine; the test installs and purges its own (dpkg --purge bbal first)")
	}
	deb1, deb2 := build(t, "0~test1"), build(t, "0~test2")
	before := bbalPaths(t)
	_, userBefore := lookup("passwd", "bbal")
	_, groupBefore := lookup("group", "bbal")
	t.Cleanup(func() {
		if status(t) != "" {
			dpkg(t, "--purge", "bbal")
		}
		// The package leaves its user at a purge, as Debian does; the
		// test removes the one it made.
		if !userBefore {
			exec.Command("deluser", "--system", "--quiet", "bbal").Run()
		}
		if !groupBefore {
			exec.Command("delgroup", "--system", "--quiet", "bbal").Run()
		}
	})

	dpkg(t, "--install", deb1)
	if got := status(t); got != "install ok installed 0~test1" {
		t.Fatalf("status after install: %q", got)
	}
	for _, cmd := range []string{"bbal", "balstat"} {
		out, err := exec.Command("/usr/sbin/"+cmd, "-h").Output()
		if err != nil || !strings.HasPrefix(string(out), "usage: "+cmd+" ") {
			t.Errorf("%s -h: %v %q", cmd, err, out)
		}
		if out, err := exec.Command("man", "-w", cmd).Output(); err == nil && strings.TrimSpace(string(out)) != "/usr/share/man/man8/"+cmd+".8.gz" {
			t.Errorf("man -w %s: %q", cmd, out)
		}
	}
	sameFile(t, "/lib/systemd/system/bbal.service", "../deploy/bbal.service", false)
	sameFile(t, "/etc/default/bbal", "../deploy/bbal.default", false)

	// The system user and its group, made by the postinst.
	pw, ok := lookup("passwd", "bbal")
	if !ok {
		t.Fatal("no user bbal after install")
	}
	gr, ok := lookup("group", "bbal")
	if !ok {
		t.Fatal("no group bbal after install")
	}
	uid, _ := strconv.Atoi(pw[2])
	if uid == 0 || uid >= 1000 || pw[3] != gr[2] || pw[5] != "/nonexistent" || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("user bbal: %q (group %q): want a system user, group bbal, home /nonexistent, shell /usr/sbin/nologin", pw, gr)
	}
	if _, err := os.Stat("/nonexistent"); err == nil {
		t.Error("/nonexistent was created")
	}
	// Enabled, as debhelper's scripts do it.
	if dest, err := os.Readlink("/etc/systemd/system/multi-user.target.wants/bbal.service"); err != nil || dest != "/lib/systemd/system/bbal.service" {
		t.Errorf("unit not enabled: %q %v", dest, err)
	}
	verifyUnit(t)

	// An upgrade keeps the operator's options, the user and the unit's
	// enablement, and a running bbal goes on to the new binary.
	opts := "BBAL_OPTS=\"-s /srv/sockets -b 127.0.0.1\"\n"
	if err := os.WriteFile("/etc/default/bbal", []byte(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	running := startInstalled(t)
	dpkg(t, "--install", deb2)
	running.reload(t)
	if got := status(t); got != "install ok installed 0~test2" {
		t.Fatalf("status after upgrade: %q", got)
	}
	if b, _ := os.ReadFile("/etc/default/bbal"); string(b) != opts {
		t.Errorf("/etc/default/bbal after upgrade: %q, want the operator's %q", b, opts)
	}
	if pw2, _ := lookup("passwd", "bbal"); !slices.Equal(pw2, pw) {
		t.Errorf("user bbal after upgrade: %q, was %q", pw2, pw)
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/bbal.service"); err != nil {
		t.Errorf("unit not enabled after upgrade: %v", err)
	}

	// Removal leaves the conffile (and the unit masked, as debhelper
	// does) until the purge.
	dpkg(t, "--remove", "bbal")
	for _, p := range []string{"/usr/sbin/bbal", "/usr/sbin/balstat", "/lib/systemd/system/bbal.service", "/usr/share/man/man8/bbal.8.gz"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after removal", p)
		}
	}
	if _, err := os.Stat("/etc/default/bbal"); err != nil {
		t.Errorf("the conffile went at removal: %v", err)
	}

	dpkg(t, "--purge", "bbal")
	if got := status(t); got != "" {
		t.Errorf("status after purge: %q", got)
	}
	after := bbalPaths(t)
	for _, p := range after {
		if !slices.Contains(before, p) {
			t.Errorf("%s left after purge", p)
		}
	}
	if _, ok := lookup("passwd", "bbal"); !ok {
		t.Error("the user bbal went at the purge; Debian leaves system users")
	}
}

// installed is a bbal started from /usr/sbin/bbal, as the unit starts
// it, on a port of its own choosing.
type installed struct {
	cmd    *exec.Cmd
	logs   *testbed.Logs
	debug  string // its debug socket
	stderr bytes.Buffer
}

func startInstalled(t *testing.T) *installed {
	t.Helper()
	dir := testbed.SocketDir(t)
	b := &installed{logs: testbed.NewLogs(), debug: filepath.Join(dir, "debug", "bbal.sock")}
	sockets := filepath.Join(dir, "sockets")
	os.Mkdir(sockets, 0o755)
	b.cmd = exec.Command("/usr/sbin/bbal", "-s", sockets, "-b", "127.0.0.1", "-p", "0", "-S", b.debug)
	b.cmd.Stdout, b.cmd.Stderr = b.logs, &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.cmd.Process.Kill() })
	b.logs.Wait(t, "debug socket ready", nil)
	return b
}

// reload does what systemctl reload does (ExecReload: SIGUSR2) after
// the upgrade has replaced /usr/sbin/bbal under the running bbal: its
// successor runs the new file, serves the debug socket, and the old
// process exits 0.
func (b *installed) reload(t *testing.T) {
	t.Helper()
	old := b.cmd.Process.Pid
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", old)); exe != "/usr/sbin/bbal (deleted)" {
		t.Errorf("the running bbal's binary after the upgrade: %q, want the replaced /usr/sbin/bbal (deleted)", exe)
	}
	if err := b.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	r := b.logs.Wait(t, "serving: took over from the previous process", nil)
	pid, _ := r["pid"].(float64)
	next := int(pid)
	if next == 0 || next == old {
		t.Fatalf("successor's pid %v (old %d)", r["pid"], old)
	}
	successor, _ := os.FindProcess(next)
	t.Cleanup(func() { successor.Kill() })
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", next)); exe != "/usr/sbin/bbal" {
		t.Errorf("successor's binary %q, want the new /usr/sbin/bbal", exe)
	}
	st, err := b.cmd.Process.Wait()
	if err != nil || st.ExitCode() != 0 {
		t.Errorf("old bbal: %v %v\n%s", st, err, b.stderr.String())
	}
	if out, err := exec.Command("/usr/sbin/balstat", "-S", b.debug).CombinedOutput(); err != nil {
		t.Errorf("balstat after the reload: %v\n%s", err, out)
	}
	successor.Signal(syscall.SIGTERM)
	b.logs.Wait(t, "shut down", map[string]any{"pid": next})
}

// verifyUnit runs systemd-analyze verify on the installed unit, which
// checks its settings, that its commands exist, and (with man) that its
// Documentation= manual pages are found.
func verifyUnit(t *testing.T) {
	t.Helper()
	analyze := testbed.Tool(t, "systemd-analyze", "systemd")
	args := []string{"verify", "/lib/systemd/system/bbal.service"}
	if _, err := exec.LookPath("man"); err != nil {
		t.Log("man not found (Debian package man-db): the unit's manual pages are not looked up")
		args = append(args, "--man=no")
	}
	out, err := exec.Command(analyze, args...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// dpkg runs dpkg with args, failing the test when it fails.
func dpkg(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("dpkg", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// status is the installed bbal's status and version, or "".
func status(t *testing.T) string {
	out, err := exec.Command("dpkg-query", "--show", "--showformat", "${Status} ${Version}", "bbal").Output()
	if err != nil || strings.HasPrefix(string(out), "unknown ok not-installed") {
		return ""
	}
	return string(out)
}

// lookup returns the fields of name's entry in the passwd or group
// database.
func lookup(db, name string) ([]string, bool) {
	out, err := exec.Command("getent", db, name).Output()
	if err != nil {
		return nil, false
	}
	return strings.Split(strings.TrimSpace(string(out)), ":"), true
}

// bbalPaths lists the paths under /etc, /usr, /var and /opt whose name
// has "bbal" in it, and /run/bbal: what the package, its scripts, dpkg
// and deb-systemd-helper could leave behind.
func bbalPaths(t *testing.T) []string {
	t.Helper()
	var paths []string
	for _, top := range []string{"/etc", "/usr", "/var", "/opt"} {
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && (p == "/var/tmp" || p == "/var/cache" || p == "/var/lib/docker") {
				return filepath.SkipDir
			}
			if strings.Contains(d.Name(), "bbal") {
				paths = append(paths, p)
			}
			return nil
		})
	}
	if _, err := os.Lstat("/run/bbal"); err == nil {
		paths = append(paths, "/run/bbal")
	}
	return paths
}

// debField is a field of the package's control file.
func debField(t *testing.T, deb, field string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "--field", deb, field).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// control is a file of the package's control archive.
func control(t *testing.T, deb, name string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "--info", deb, name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// sameFile checks that the file at got (gunzipped when gz) has the
// contents of the source file want.
func sameFile(t *testing.T, got, want string, gz bool) {
	t.Helper()
	w, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	var g string
	if gz {
		g = gunzip(t, got)
	} else {
		b, err := os.ReadFile(got)
		if err != nil {
			t.Fatal(err)
		}
		g = string(b)
	}
	if g != string(w) {
		t.Errorf("%s differs from %s", got, want)
	}
}

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}
