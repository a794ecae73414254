package testbed

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// SocketDir returns a new, empty directory with a short path (t.TempDir
// paths can overflow the 107 bytes of sun_path), removed after the test.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bbal")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RepoRoot returns the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// StaleSocket leaves a socket file at path that nothing listens on, as a
// crashed backend does: connecting to it is refused.
func StaleSocket(t testing.TB, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}
