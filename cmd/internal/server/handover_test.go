package server

import (
	"bytes"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/backend/placement"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

// newStateBalancer returns the parts of a Balancer that hold the state,
// not started, on a fake clock at testbed.Epoch (as the programs that
// wrote testdata/state-v*.bin had them: see testdata/gen-v*.go.txt).
func newStateBalancer(t *testing.T) *Balancer {
	t.Helper()
	ts := timeouts.New(timeouts.NewFake(testbed.Epoch))
	bs := backend.NewSet(backend.Config{Dir: t.TempDir(), Log: zerolog.Nop(), Timeouts: ts})
	tab := remotes.New(remotes.Config{Backends: bs, Picker: NewPicker(bs, placement.Config{Clock: ts.Clock()}), Timeouts: ts, Log: zerolog.Nop()})
	return &Balancer{Log: zerolog.Nop(), Backends: bs, Table: tab}
}

func readStateFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantBackends is the backends of both golden states: weights 0 (none
// written) in format 1.
func wantBackends(weights ...int) []backend.Saved {
	return []backend.Saved{
		{ID: 1, Path: "/var/run/mname/b1.sock", Admin: "enabled", Weight: weights[0]},
		{ID: 7, Path: "/var/run/mname/b7.sock", Admin: "disabled", Weight: weights[1]},
		{ID: 300, Path: "/var/run/mname/b300.sock", Admin: "draining", Weight: weights[2]},
	}
}

// A state written by a predecessor of either format is read and applied:
// the backends with their IDs, admin settings and weights, and the
// remotes whose backends the state has (not 8.8.8.8's, backend 9).
func TestRestoreGoldenStates(t *testing.T) {
	for _, tc := range []struct {
		file    string
		format  remotes.SnapshotFormat
		weights []int // as restored
		saved   []int // as read
		v6      bool
	}{
		{"state-v1.bin", remotes.SnapshotV1, []int{1, 1, 1}, []int{0, 0, 0}, false},
		{"state-v2.bin", remotes.SnapshotV2, []int{1, 3, 10}, []int{1, 3, 10}, true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			st, err := ReadState(bytes.NewReader(readStateFile(t, tc.file)))
			if err != nil {
				t.Fatal(err)
			}
			if st.RemoteFormat != tc.format || len(st.remotes) != 5 {
				t.Fatalf("format %d, %d remotes", st.RemoteFormat, len(st.remotes))
			}
			want := wantBackends(tc.saved...)
			if len(st.Backends) != len(want) {
				t.Fatalf("backends %+v", st.Backends)
			}
			for i := range want {
				if st.Backends[i] != want[i] {
					t.Errorf("backend %d: %+v, want %+v", i, st.Backends[i], want[i])
				}
			}

			b := newStateBalancer(t)
			if err := b.restore(st); err != nil {
				t.Fatal(err)
			}
			for i, sb := range want {
				be := b.Backends.Get(sb.ID)
				if be == nil || be.Path() != sb.Path || be.Admin().String() != sb.Admin || be.Weight() != tc.weights[i] {
					t.Errorf("backend %d restored as %v", sb.ID, be)
				}
			}
			if _, ok := b.Table.Lookup(netip.MustParseAddr("8.8.8.8")); ok {
				t.Error("the remote of unknown backend 9 was restored")
			}
			in, ok := b.Table.Lookup(netip.MustParseAddr("10.0.0.1"))
			if !ok || in.Primary != 1 || in.Backup != 7 || in.UDP != 12345 || in.TCP != 67 || in.Drops != 8 ||
				!in.FirstSeen.Equal(testbed.Epoch.Add(10*time.Second)) || !in.LastSeen.Equal(testbed.Epoch.Add(100*time.Second)) {
				t.Errorf("10.0.0.1 restored as %+v", in)
			}
			if tc.v6 {
				in, ok := b.Table.Lookup(netip.MustParseAddr("2001:db8::1"))
				if !ok || in.Standin != netip.MustParseAddr("240.0.0.77") || in.Primary != 300 || in.Backup != 1 {
					t.Errorf("2001:db8::1 restored as %+v", in)
				}
			}
			if n := b.Table.Len(); n != 4 {
				t.Errorf("%d remotes restored, want 4", n)
			}
		})
	}
}

// writeState writes a state read from the format-2 writer's golden, and
// restored, in format 3 (the rate limit's state added), and reading that
// gives back the same state; format 3 itself is pinned by its golden.
func TestWriteStateAsBefore(t *testing.T) {
	golden := readStateFile(t, "state-v2.bin")
	st, err := ReadState(bytes.NewReader(golden))
	if err != nil {
		t.Fatal(err)
	}
	b := newStateBalancer(t)
	if err := b.Backends.RestoreSaved(st.Backends); err != nil {
		t.Fatal(err)
	}
	b.Table.RestoreSnapshot(st.remotes, func(backend.ID) bool { return true })
	var out bytes.Buffer
	if err := b.writeState(&out); err != nil {
		t.Fatal(err)
	}
	if want := readStateFile(t, "state-v3.bin"); !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("wrote\n%q\nwant\n%q", out.Bytes(), want)
	}
	again, err := ReadState(&out)
	if err != nil {
		t.Fatal(err)
	}
	if again.RemoteFormat != remotes.SnapshotV3 || !reflect.DeepEqual(again.Backends, st.Backends) ||
		!reflect.DeepEqual(again.remotes, st.remotes) {
		t.Fatalf("read back %+v, want %+v", again, st)
	}
}

func TestReadStateErrors(t *testing.T) {
	v1 := readStateFile(t, "state-v1.bin")
	header := v1[:bytes.IndexByte(v1, '\n')+1]
	for _, tc := range []struct {
		name, state, want string
	}{
		{"no header", `{"backends":[]}`, "state header: EOF"},
		{"bad header", "{\n", "state header: unexpected end of JSON input"},
		{"unknown format", `{"backends":[],"remote_format":4}` + "\n", "state: unknown remote format 4"},
		{"record cut short", string(v1[:len(v1)-3]), "state: remote 4: unexpected EOF"},
		{"record cut short in the first", string(header) + "x", "state: remote 0: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadState(strings.NewReader(tc.state))
			if err == nil || err.Error() != tc.want {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// A state that the successor cannot apply is an error, not a crash.
func TestRestoreBadBackends(t *testing.T) {
	for _, tc := range []struct {
		name  string
		saved []backend.Saved
		want  string
	}{
		{"admin", []backend.Saved{{ID: 1, Path: "/a", Admin: "sideways"}}, `backend 1: admin setting "sideways"`},
		{"weight", []backend.Saved{{ID: 1, Path: "/a", Admin: "enabled", Weight: placement.MaxWeight + 1}}, "backend 1: weight"},
		{"taken", []backend.Saved{{ID: 1, Path: "/a", Admin: "enabled"}, {ID: 1, Path: "/b", Admin: "enabled"}}, "taken"},
		{"no ID", []backend.Saved{{Path: "/a", Admin: "enabled"}}, "cannot restore 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newStateBalancer(t).restore(&State{Backends: tc.saved})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
