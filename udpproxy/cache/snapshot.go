package cache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A snapshot carries the cache to a successor process (a restart
// without downtime). It is a stream of records, each
//
//	length    uint16  the bytes that follow, at least recordHead
//	backend   uint16  the partition's backend ID
//	feat      uint16  the key's Feat
//	stored    int64   unix nanoseconds
//	ttl       uint32  seconds
//	answer            the answer as kept, its TTLs capped
//
// in little-endian order, ended by a record of length 0. The successor
// checks each answer as one from a backend, and gives it its backend's
// partition there.

const recordHead = 2 + 2 + 8 + 4

// ErrSnapshot is a snapshot that cannot be read.
var ErrSnapshot = errors.New("cache snapshot")

// WriteSnapshot writes the entries not past their stale limit at now to
// w, at most max of them, and the end record. One set's lock is held
// at a time, and none while w is written.
func (c *Cache) WriteSnapshot(w io.Writer, now int64, max int) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var buf [arenaLen + Ways*(2+recordHead)]byte
	n := 0
	for i := range c.sets {
		if n >= max {
			break
		}
		s := &c.sets[i]
		s.mu.Lock()
		out := buf[:0]
		for j := range Ways {
			if s.hash[j] == 0 || n >= max {
				continue
			}
			e := &s.w[j]
			if now-e.stored >= (int64(e.ttl)+int64(c.cfg.Stale))*1e9 {
				continue
			}
			ans := s.answer(j)
			out = binary.LittleEndian.AppendUint16(out, uint16(recordHead+len(ans)))
			out = binary.LittleEndian.AppendUint16(out, e.be)
			out = binary.LittleEndian.AppendUint16(out, e.feat)
			out = binary.LittleEndian.AppendUint64(out, uint64(e.stored))
			out = binary.LittleEndian.AppendUint32(out, e.ttl)
			out = append(out, ans...)
			n++
		}
		s.mu.Unlock()
		if _, err := bw.Write(out); err != nil {
			return err
		}
	}
	if _, err := bw.Write([]byte{0, 0}); err != nil {
		return err
	}
	return bw.Flush()
}

// ReadSnapshot reads a snapshot from r into the cache, at now, giving
// each entry the partition part returns for its backend (false: the
// backend is not known here, and the entry is skipped). Entries past
// their stale limit, and answers the cache would not keep, are skipped;
// so are those beyond the cache's capacity, read and discarded. It
// returns how many it kept; an error for a stream that breaks off or a
// record that cannot be one.
func (c *Cache) ReadSnapshot(r io.Reader, part func(backend uint16) (Partition, bool), now int64) (int, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var rec [recordHead + MaxAnswer]byte
	kept, read := 0, 0
	for {
		if _, err := io.ReadFull(br, rec[:2]); err != nil {
			return kept, fmt.Errorf("%w: record %d: %w", ErrSnapshot, read, err)
		}
		l := int(binary.LittleEndian.Uint16(rec[:]))
		if l == 0 {
			return kept, nil
		}
		if l < recordHead+headerLen || l > len(rec) {
			return kept, fmt.Errorf("%w: record %d: length %d", ErrSnapshot, read, l)
		}
		if _, err := io.ReadFull(br, rec[:l]); err != nil {
			return kept, fmt.Errorf("%w: record %d: %w", ErrSnapshot, read, err)
		}
		read++
		if kept >= c.cfg.Entries {
			continue
		}
		be := binary.LittleEndian.Uint16(rec[0:])
		feat := binary.LittleEndian.Uint16(rec[2:])
		stored := int64(binary.LittleEndian.Uint64(rec[4:]))
		ttl := binary.LittleEndian.Uint32(rec[12:])
		ans := rec[recordHead:l]
		if now-stored >= (int64(ttl)+int64(c.cfg.Stale))*1e9 {
			continue
		}
		p, ok := part(be)
		if !ok {
			continue
		}
		qend, ok := questionEnd(ans)
		if !ok {
			continue
		}
		k := Key{Hash: hashQuestion(c.seed, ans, qend, feat), Feat: feat, QEnd: uint16(qend)}
		if c.put(&k, p, ans, stored, min(ttl, c.cfg.MaxTTL), now) {
			kept++
		}
	}
}
