package remotes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/tools/testbed"
)

// infoString is in with its times in unix seconds, to compare.
func infoString(in Info) string {
	var next int64
	if !in.NextQuery.IsZero() {
		next = in.NextQuery.UnixNano()
	}
	return fmt.Sprintf("%v standin=%v primary=%d backup=%d first=%d last=%d udp=%d tcp=%d drops=%d limited=%d next=%d",
		in.Addr, in.Standin, in.Primary, in.Backup, in.FirstSeen.Unix(), in.LastSeen.Unix(), in.UDP, in.TCP, in.Drops,
		in.RateLimited, next)
}

func sameInfos(t *testing.T, got, want []Info) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d remotes, want %d: %v", len(got), len(want), got)
	}
	for i := range got {
		if g, w := infoString(got[i]), infoString(want[i]); g != w {
			t.Errorf("remote %d:\n got %s\nwant %s", i, g, w)
		}
	}
}

// at is testbed.Epoch plus s seconds.
func at(s int) time.Time { return testbed.Epoch.Add(time.Duration(s) * time.Second) }

// The remotes in testdata/snapshot-v1.bin, as the format-1 writer was
// given them (see testdata/README), in address order.
var goldenV1 = []Info{
	{Addr: netip.MustParseAddr("8.8.8.8"), Primary: 9, FirstSeen: at(7), LastSeen: at(8), UDP: 3, TCP: 4, Drops: 5},
	{Addr: netip.MustParseAddr("10.0.0.1"), Primary: 1, Backup: 7, FirstSeen: at(10), LastSeen: at(100), UDP: 12345, TCP: 67, Drops: 8},
	{Addr: netip.MustParseAddr("192.168.1.2"), Primary: 7, FirstSeen: at(1), LastSeen: at(2), UDP: 1 << 40},
	{Addr: netip.MustParseAddr("203.0.113.5"), Primary: 300, Backup: 1, FirstSeen: at(0), LastSeen: at(3600), TCP: 1<<33 + 5, Drops: 99},
	{Addr: netip.MustParseAddr("254.0.0.9"), FirstSeen: at(5), LastSeen: at(5), UDP: 1},
}

// Likewise for testdata/snapshot-v2.bin, in the order of the addresses'
// IPv6 forms.
var goldenV2 = []Info{
	{Addr: netip.MustParseAddr("8.8.8.8"), Primary: 9, FirstSeen: at(7), LastSeen: at(8), UDP: 3, TCP: 4, Drops: 5},
	{Addr: netip.MustParseAddr("10.0.0.1"), Primary: 1, Backup: 7, FirstSeen: at(10), LastSeen: at(100), UDP: 12345, TCP: 67, Drops: 8},
	{Addr: netip.MustParseAddr("192.168.1.2"), Primary: 7, FirstSeen: at(1), LastSeen: at(2), UDP: 1 << 40},
	{Addr: netip.MustParseAddr("2001:db8::1"), Standin: netip.MustParseAddr("240.0.0.77"), Primary: 300, Backup: 1,
		FirstSeen: at(0), LastSeen: at(3600), TCP: 1<<33 + 5, Drops: 99},
	{Addr: netip.MustParseAddr("2001:db8::2"), Standin: netip.MustParseAddr("240.0.1.2"), Primary: 1,
		FirstSeen: at(5), LastSeen: at(6), UDP: 1},
}

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadSnapshotGoldens(t *testing.T) {
	for _, tc := range []struct {
		file   string
		format SnapshotFormat
		want   []Info
	}{
		{"snapshot-v1.bin", SnapshotV1, goldenV1},
		{"snapshot-v2.bin", SnapshotV2, goldenV2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := ReadSnapshot(bytes.NewReader(readGolden(t, tc.file)), tc.format)
			if err != nil {
				t.Fatal(err)
			}
			sameInfos(t, got, tc.want)
		})
	}
}

// A table restored from a snapshot writes the same remotes again, in the
// current format (format 3, pinned by its golden): what a successor
// restores is what it would hand on.
func TestSnapshotRoundTrip(t *testing.T) {
	infos, err := ReadSnapshot(bytes.NewReader(readGolden(t, "snapshot-v2.bin")), SnapshotV2)
	if err != nil {
		t.Fatal(err)
	}
	tab, _, _ := newTable(t, newFake(1, 7, 9, 300))
	if n := tab.RestoreSnapshot(infos, func(backend.ID) bool { return true }); n != len(infos) {
		t.Fatalf("restored %d of %d", n, len(infos))
	}
	var out bytes.Buffer
	if err := tab.WriteSnapshot(&out); err != nil {
		t.Fatal(err)
	}
	if golden := readGolden(t, "snapshot-v3.bin"); !bytes.Equal(out.Bytes(), golden) {
		t.Fatalf("wrote\n%x\nwant\n%x", out.Bytes(), golden)
	}
	again, err := ReadSnapshot(&out, SnapshotV3)
	if err != nil {
		t.Fatal(err)
	}
	sameInfos(t, again, infos)

	// A format-1 snapshot restored and written again is the same
	// remotes in the current format.
	infos, err = ReadSnapshot(bytes.NewReader(readGolden(t, "snapshot-v1.bin")), SnapshotV1)
	if err != nil {
		t.Fatal(err)
	}
	old, _, _ := newTable(t, newFake(1, 7, 9, 300))
	old.RestoreSnapshot(infos, func(backend.ID) bool { return true })
	out.Reset()
	if err := old.WriteSnapshot(&out); err != nil {
		t.Fatal(err)
	}
	again, err = ReadSnapshot(&out, SnapshotV3)
	if err != nil {
		t.Fatal(err)
	}
	sameInfos(t, again, goldenV1)
}

// Counters, IDs and addresses at their limits survive a round trip; so
// does an empty table.
func TestSnapshotRoundTripLimits(t *testing.T) {
	const max = ^uint64(0)
	want := []Info{
		{Addr: netip.MustParseAddr("::1"), Standin: netip.MustParseAddr("255.255.255.254"), FirstSeen: at(0), LastSeen: at(0)},
		{Addr: netip.MustParseAddr("0.0.0.1"), Primary: 65535, Backup: 65534, FirstSeen: at(0), LastSeen: at(1 << 30),
			UDP: max, TCP: max, Drops: max, RateLimited: max, NextQuery: time.Unix(0, 1<<62)},
		{Addr: netip.MustParseAddr("255.255.255.255"), Primary: 1, FirstSeen: at(3), LastSeen: at(4),
			RateLimited: 7, NextQuery: time.Unix(1700000000, 123456789)},
		{Addr: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Standin: netip.MustParseAddr("240.0.0.2"),
			Primary: 2, FirstSeen: at(9), LastSeen: at(9), UDP: 1},
	}
	for _, n := range []int{0, len(want)} {
		tab, _, _ := newTable(t, newFake(1, 2))
		tab.RestoreSnapshot(want[:n], func(backend.ID) bool { return true })
		var out bytes.Buffer
		if err := tab.WriteSnapshot(&out); err != nil {
			t.Fatal(err)
		}
		if out.Len() != n*recordV3Len {
			t.Fatalf("%d remotes written in %d bytes", n, out.Len())
		}
		got, err := ReadSnapshot(&out, SnapshotV3)
		if err != nil {
			t.Fatal(err)
		}
		sameInfos(t, got, want[:n])
	}
}

func TestReadSnapshotErrors(t *testing.T) {
	golden := readGolden(t, "snapshot-v1.bin")
	if _, err := ReadSnapshot(bytes.NewReader(golden[:len(golden)-1]), SnapshotV1); !errors.Is(err, io.ErrUnexpectedEOF) ||
		!strings.Contains(err.Error(), "remote 4") {
		t.Errorf("a record cut short: %v", err)
	}
	v2 := readGolden(t, "snapshot-v2.bin")
	if _, err := ReadSnapshot(bytes.NewReader(v2[:recordV2Len+recordV1Len]), SnapshotV2); !errors.Is(err, io.ErrUnexpectedEOF) ||
		!strings.Contains(err.Error(), "remote 1") {
		t.Errorf("a format-2 record cut short: %v", err)
	}
	if _, err := ReadSnapshot(bytes.NewReader(golden), 1); err == nil || err.Error() != "unknown remote format 1" {
		t.Errorf("format 1 by number: %v", err)
	}
	if got, err := ReadSnapshot(bytes.NewReader(nil), SnapshotV2); err != nil || len(got) != 0 {
		t.Errorf("no records: %v %v", got, err)
	}
}

// Remotes assigned to a backend the successor does not have are left
// out, to be placed afresh.
func TestRestoreSnapshotLeavesOutUnknownBackends(t *testing.T) {
	tab, _, _ := newTable(t, newFake(1, 7, 300))
	known := func(id backend.ID) bool { return id == 1 || id == 7 || id == 300 }
	if n := tab.RestoreSnapshot(goldenV1, known); n != 4 {
		t.Fatalf("restored %d, want 4", n)
	}
	if _, ok := tab.Lookup(netip.MustParseAddr("8.8.8.8")); ok {
		t.Error("the remote of unknown backend 9 was restored")
	}
	for _, want := range goldenV1[1:] {
		got, ok := tab.Lookup(want.Addr)
		if !ok || infoString(got) != infoString(want) {
			t.Errorf("restored %s, want %s", infoString(got), infoString(want))
		}
	}
	// Unknown as a backup is as bad as unknown as a primary.
	next, _, _ := newTable(t, newFake(1, 7, 300))
	if n := next.RestoreSnapshot(goldenV1[1:2], func(id backend.ID) bool { return id == 1 }); n != 0 {
		t.Errorf("restored a remote whose backup is unknown")
	}
}
