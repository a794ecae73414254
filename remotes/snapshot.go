package remotes

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/protocol"
)

// SnapshotFormat is the format of a snapshot's remote records, which a
// successor process needs to read them: the one it was written in is
// handed over beside the records.
type SnapshotFormat int

// The snapshot formats. A record is the remote's address, then its
// assignment, times and counters (recordFieldsLen bytes, little-endian:
// primary, backup, first and last seen in unix seconds, UDP, TCP and
// drop counts).
const (
	// SnapshotV1 is the first format, from bbal before IPv6 clients: the
	// IPv4 address (4 bytes). Its number is 0, as a predecessor that
	// wrote it named no format.
	SnapshotV1 SnapshotFormat = 0
	// SnapshotV2 has the IPv6 form of the address (16 bytes) and the
	// stand-in (4 bytes, 0 for none). WriteSnapshot writes it.
	SnapshotV2 SnapshotFormat = 2
	// SnapshotV3 adds to SnapshotV2 the rate limit's state: when the
	// remote's next query is on schedule (unix nanoseconds) and its
	// queries over the limit, 8 bytes each.
	SnapshotV3 SnapshotFormat = 3
)

const (
	recordFieldsLen = 2 + 2 + 4 + 4 + 8 + 8 + 8
	recordV1Len     = 4 + recordFieldsLen
	recordV2Len     = 16 + 4 + recordFieldsLen
	recordV3Len     = recordV2Len + 8 + 8
)

// WriteSnapshot writes a record per remote, in address order and in
// SnapshotV3, for a successor process to read with ReadSnapshot.
func (t *Table) WriteSnapshot(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var rec [recordV3Len]byte
	var werr error
	t.Walk(context.Background(), netip.Addr{}, func(in Info) bool {
		putRecordV2(rec[:], in)
		var next int64
		if !in.NextQuery.IsZero() {
			next = in.NextQuery.UnixNano()
		}
		binary.LittleEndian.PutUint64(rec[recordV2Len:], uint64(next))
		binary.LittleEndian.PutUint64(rec[recordV2Len+8:], in.RateLimited)
		_, werr = bw.Write(rec[:])
		return werr == nil
	})
	if werr != nil {
		return werr
	}
	return bw.Flush()
}

// putRecordV2 encodes in as a SnapshotV2 record into rec.
func putRecordV2(rec []byte, in Info) {
	a16 := in.Addr.As16()
	copy(rec[:16], a16[:])
	var standin uint32
	if in.Standin.IsValid() {
		standin = protocol.AddrToU32(in.Standin)
	}
	binary.LittleEndian.PutUint32(rec[16:], standin)
	f := rec[20:]
	binary.LittleEndian.PutUint16(f[0:], uint16(in.Primary))
	binary.LittleEndian.PutUint16(f[2:], uint16(in.Backup))
	binary.LittleEndian.PutUint32(f[4:], uint32(in.FirstSeen.Unix()))
	binary.LittleEndian.PutUint32(f[8:], uint32(in.LastSeen.Unix()))
	binary.LittleEndian.PutUint64(f[12:], in.UDP)
	binary.LittleEndian.PutUint64(f[20:], in.TCP)
	binary.LittleEndian.PutUint64(f[28:], in.Drops)
}

// ReadSnapshot reads records of format f until the end of r. A record
// cut short is an error.
func ReadSnapshot(r io.Reader, f SnapshotFormat) ([]Info, error) {
	var buf [recordV3Len]byte
	var rec []byte
	switch f {
	case SnapshotV1:
		rec = buf[:recordV1Len]
	case SnapshotV2:
		rec = buf[:recordV2Len]
	case SnapshotV3:
		rec = buf[:recordV3Len]
	default:
		return nil, fmt.Errorf("unknown remote format %d", f)
	}
	var out []Info
	for {
		if _, err := io.ReadFull(r, rec); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("remote %d: %w", len(out), err)
		}
		out = append(out, decodeRecord(rec, f))
	}
}

// decodeRecord decodes one record of format f.
func decodeRecord(rec []byte, f SnapshotFormat) Info {
	var in Info
	var fields []byte
	if f >= SnapshotV2 {
		in.Addr = netip.AddrFrom16([16]byte(rec[:16])).Unmap()
		if s := binary.LittleEndian.Uint32(rec[16:]); s != 0 {
			in.Standin = protocol.U32ToAddr(s)
		}
		fields = rec[20:]
	} else {
		in.Addr = protocol.U32ToAddr(binary.LittleEndian.Uint32(rec[0:]))
		fields = rec[4:]
	}
	in.Primary = backend.ID(binary.LittleEndian.Uint16(fields[0:]))
	in.Backup = backend.ID(binary.LittleEndian.Uint16(fields[2:]))
	in.FirstSeen = time.Unix(int64(binary.LittleEndian.Uint32(fields[4:])), 0)
	in.LastSeen = time.Unix(int64(binary.LittleEndian.Uint32(fields[8:])), 0)
	in.UDP = binary.LittleEndian.Uint64(fields[12:])
	in.TCP = binary.LittleEndian.Uint64(fields[20:])
	in.Drops = binary.LittleEndian.Uint64(fields[28:])
	if f == SnapshotV3 {
		in.NextQuery = unixTime(int64(binary.LittleEndian.Uint64(rec[recordV2Len:])))
		in.RateLimited = binary.LittleEndian.Uint64(rec[recordV2Len+8:])
	}
	return in
}

// RestoreSnapshot restores the remotes of a snapshot (see Restore) whose
// primary and backup are each none or a backend known says the
// successor has; the others are left out, to be placed afresh on their
// next packet. It returns how many it restored.
func (t *Table) RestoreSnapshot(infos []Info, known func(backend.ID) bool) int {
	n := 0
	for _, in := range infos {
		if (in.Primary == 0 || known(in.Primary)) && (in.Backup == 0 || known(in.Backup)) {
			t.Restore(in)
			n++
		}
	}
	return n
}

// Restore adds a remote as a predecessor process had it: its
// assignments, counters and times (kept to the second; times before the
// table's epoch are clamped to it). It is for a fresh table, before
// traffic; an existing remote for the address is left alone.
func (t *Table) Restore(in Info) {
	sec := func(tm time.Time) uint32 {
		if d := tm.Sub(t.epoch); d > 0 {
			return uint32(d / time.Second)
		}
		return 0
	}
	k := in.Addr.Unmap()
	if k.Is4() {
		k = t.network(k)
	}
	if !k.IsValid() {
		return
	}
	sh := t.shard(keyOf(k))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.tree.Has(key(k)) || t.Len() >= t.cfg.MaxRemotes {
		return
	}
	r := &Remote{addr: keyOf(k), first: sec(in.FirstSeen)}
	r.last.Store(sec(in.LastSeen))
	if k.Is6() && !t.standins.restore(r, in.Standin) {
		return
	}
	r.udp.Store(in.UDP)
	r.tcp.Store(in.TCP)
	r.drops.Store(in.Drops)
	if !in.NextQuery.IsZero() {
		r.tat.Store(in.NextQuery.UnixNano())
	}
	r.limited.Store(in.RateLimited)
	t.cmu.Lock()
	t.setPrimary(r, in.Primary)
	t.setBackup(r, in.Backup)
	t.cmu.Unlock()
	sh.tree.ReplaceOrInsert(entry{r.addr, r})
	t.n.Add(1)
}

// restoreStandin gives r (an IPv6 remote) the stand-in it had, if that
