package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/tools/testbed"
)

func TestRemovedBackendIsForgottenUnlessSomeRemotesPrimary(t *testing.T) {
	h := newHarness(t, nil)
	g1 := testbed.StartGo(t, h.Sock("5301"), "one")
	testbed.StartGo(t, h.Sock("5302"), "two")
	testbed.StaleSocket(t, h.Sock("junk"))
	mark := h.Logs.Mark()
	h.B.Backends.Scan()
	h.Established(mark, 5301)
	h.Established(mark, 5302)
	junk := h.Logs.Wait(t, "failed to connect", map[string]any{"be_path": h.Sock("junk")})
	junkID := backend.ID(junk["be_id"].(float64))
	client := h.PinTo(5301)

	// 5301's process goes, and so does the junk.
	g1.Close()
	h.Logs.Wait(t, "backend faulted (reset and reconnect)", map[string]any{"be_id": 5301})
	os.Remove(h.Sock("junk"))
	h.B.Backends.Scan()
	h.Logs.Wait(t, "backend socket removed", map[string]any{"be_id": 5301})
	h.Logs.Wait(t, "backend socket removed", map[string]any{"be_id": int(junkID)})

	// Long after, the junk is forgotten; 5301 is kept while the client
	// has it as its primary.
	for end := h.Clock.Now().Add(backend.DefaultForgetAfter); h.Clock.Now().Before(end); {
		h.Heartbeat() // 5302 stays up
	}
	h.B.Backends.Scan()
	if h.B.Backends.Get(junkID) != nil {
		t.Fatalf("backend %d, removed long ago and nobody's primary, not forgotten", junkID)
	}
	if h.B.Backends.Get(5301) == nil {
		t.Fatal("backend 5301 forgotten while a remote has it as its primary")
	}
	// The client's next query moves it, and then 5301 goes too.
	if got := h.Who(client, false)["backend"]; got != "two" {
		t.Fatalf("answered by %q, want two", got)
	}
	h.B.Backends.Scan()
	if h.B.Backends.Get(5301) != nil {
		t.Fatal("backend 5301 not forgotten once no remote had it as its primary")
	}
}

// loudRecords counts the bunyan records with message msg above debug
// level (20).
func loudRecords(logs *testbed.Logs, msg string) int {
	n := 0
	for _, r := range logs.Records() {
		if lvl, _ := r["level"].(float64); lvl > 20 && r.Match(msg, nil) {
			n++
		}
	}
	return n
}

func TestPermissionDeniedOnABackendSocketIsExplained(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	dir := testbed.SocketDir(t)
	os.Chmod(dir, 0o755)
	testbed.StartGo(t, filepath.Join(dir, "5301"), "one")
	os.Chmod(filepath.Join(dir, "5301"), 0o755) // root's: nobody cannot connect
	debugDir := testbed.SocketDir(t)
	os.Chown(debugDir, 65534, 65534)
	p := startProcess(t, []string{"LOG_LEVEL=debug"}, "-s", dir, "-b", "127.0.0.1", "-p", "0",
		"-S", filepath.Join(debugDir, "debug.sock"), "-u", "nobody")
	const msg = "permission denied connecting to backend socket (bbal's user cannot write to it)"
	p.logs.Wait(t, msg, map[string]any{"be_id": 5301, "socket_owner": "root(0)", "socket_mode": "0755",
		"bbal_user": "nobody(65534)"})
	// Three attempts (at 0, 1 and 4 s): said once.
	testbed.Eventually(t, "three attempts", func() bool { return p.logs.Count(msg, nil) >= 3 })
	if n := loudRecords(p.logs, msg); n != 1 {
		t.Fatalf("permission denied logged %d times above debug level, want once", n)
	}
}
