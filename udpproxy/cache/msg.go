package cache

import (
	"encoding/binary"
	"hash/maphash"
)

// The DNS messages the cache reads: a query, for its key, and an answer,
// for its records' TTLs. Neither is decoded into values: each is walked
// in place, with every length checked against the message, and anything
// the cache has no rule for makes the message uncacheable rather than
// guessed at.

const (
	headerLen  = 12
	maxNameLen = 255 // wire format, RFC 1035
	// MaxAnswer is the longest answer kept: a backend's datagram
	// (protocol.MaxData).
	MaxAnswer = 1500
	// maxRecords bounds the records of an answer kept: a MaxAnswer
	// message holds at most (1500-12-5)/11 = 134 (a record is at least
	// an 11-byte root-named one).
	maxRecords = 136

	typeSOA  = 6
	typeOPT  = 41
	typeIXFR = 251
	typeAXFR = 252
	typeTSIG = 250

	rcodeNoError  = 0
	rcodeNXDomain = 3
)

// The bits of Key.Feat.
const (
	featRD    = 1 << 0
	featCD    = 1 << 1
	featDO    = 1 << 2
	featEDNS  = 1 << 3
	featClass = 4 // the shift of the EDNS UDP size class (3 bits)
)

// Key is what makes an answer reusable, read from a query by KeyOf.
type Key struct {
	// Hash is of the question (its name in lower case, its type and
	// class) and Feat.
	Hash uint64
	// Feat holds the query's RD and CD bits, its DO bit, whether it has
	// EDNS, and its UDP size class.
	Feat uint16
	// QEnd is where the question ends (after QTYPE and QCLASS).
	QEnd uint16
	// MaxLen is the longest answer the client takes: 512 bytes without
	// EDNS, or its EDNS UDP size.
	MaxLen uint16
}

// sizeClass is the class of an EDNS UDP size: 1 below 1024 bytes, 2 to
// 2047, 3 to 4095, 4 from 4096 (0 is no EDNS). A backend that fits an
// answer to the client's size gives the clients of one class the same
// answer, and one that fits to no class is served within it only if it
// fits (Key.MaxLen).
func sizeClass(size int) uint16 {
	switch {
	case size < 1024:
		return 1
	case size < 2048:
		return 2
	case size < 4096:
		return 3
	}
	return 4
}

// lower maps ASCII upper case to lower case: DNS compares names so
// (RFC 4343).
var lower = func() (t [256]byte) {
	for i := range t {
		t[i] = byte(i)
		if i >= 'A' && i <= 'Z' {
			t[i] = byte(i) + 'a' - 'A'
		}
	}
	return t
}()

// questionEnd returns where the question at msg[12:] ends (after QTYPE
// and QCLASS): false for a name that NameEnd refuses, or no room for
// the type and class.
func questionEnd(msg []byte) (int, bool) {
	i, ok := NameEnd(msg, headerLen)
	if !ok || i+4 > len(msg) {
		return 0, false
	}
	return i + 4, true
}

// NameEnd returns where the name at msg[i:] ends, after its root label:
// false for one that runs past msg, is longer than 255 bytes (RFC
// 1035), or holds a pointer or a label type no query uses.
func NameEnd(msg []byte, i int) (int, bool) {
	start := i
	for {
		if i >= len(msg) {
			return 0, false
		}
		l := int(msg[i])
		if l&0xc0 != 0 {
			return 0, false
		}
		i += 1 + l
		if l == 0 {
			return i, true
		}
		if i-start >= maxNameLen { // no room left for the root label
			return 0, false
		}
	}
}

// hashQuestion hashes the question msg[12:qend] with its name in lower
// case, and feat.
func hashQuestion(seed maphash.Seed, msg []byte, qend int, feat uint16) uint64 {
	var b [maxNameLen + 4 + 2]byte
	n := copy(b[:], msg[headerLen:qend])
	for i := range n - 4 {
		b[i] = lower[b[i]]
	}
	binary.BigEndian.PutUint16(b[n:], feat)
	h := maphash.Bytes(seed, b[:n+2])
	if h == 0 {
		h = 1 // 0 is an empty way
	}
	return h
}

// KeyOf reads query's key. It is false for a query the cache does not
// serve: anything but a standard query (opcode 0, QR and TC clear) with
// one question and no records but an OPT; a zone transfer; an EDNS
// version other than 0; or EDNS options (client subnet, cookies and the
// like make an answer the client's own).
func (c *Cache) KeyOf(query []byte) (Key, bool) {
	if len(query) < headerLen || query[2]&0xfa != 0 || // QR, opcode, TC (AA ignored)
		binary.BigEndian.Uint16(query[4:]) != 1 || binary.BigEndian.Uint16(query[6:]) != 0 ||
		binary.BigEndian.Uint16(query[8:]) != 0 {
		return Key{}, false
	}
	qend, ok := questionEnd(query)
	if !ok {
		return Key{}, false
	}
	switch binary.BigEndian.Uint16(query[qend-4:]) {
	case typeAXFR, typeIXFR:
		return Key{}, false
	}
	feat := uint16(0)
	if query[2]&0x01 != 0 {
		feat |= featRD
	}
	if query[3]&0x10 != 0 {
		feat |= featCD
	}
	maxLen := 512
	switch binary.BigEndian.Uint16(query[10:]) {
	case 0:
		if qend != len(query) {
			return Key{}, false
		}
	case 1:
		// OPT: root name, TYPE 41, CLASS the UDP size, TTL the
		// extended RCODE, version and flags, RDLENGTH 0.
		o := query[qend:]
		if len(o) != 11 || o[0] != 0 || binary.BigEndian.Uint16(o[1:]) != typeOPT ||
			o[6] != 0 || binary.BigEndian.Uint16(o[9:]) != 0 {
			return Key{}, false
		}
		size := int(binary.BigEndian.Uint16(o[3:]))
		maxLen = max(size, 512)
		feat |= featEDNS | sizeClass(size)<<featClass
		if o[7]&0x80 != 0 {
			feat |= featDO
		}
	default:
		return Key{}, false
	}
	return Key{Hash: hashQuestion(c.seed, query, qend, feat), Feat: feat, QEnd: uint16(qend),
		MaxLen: uint16(min(maxLen, MaxAnswer))}, true
}

// answer is what parseAnswer finds in an answer worth keeping.
type answer struct {
	qend int
	// ttl is the entry's: the least of its records', and for a
	// negative answer (NXDOMAIN, or no records of the type) the SOA
	// minimum if that is less (RFC 2308).
	ttl uint32
	// ttls are the offsets of the records' TTLs (an OPT's is not one).
	ttls     []uint16
	negative bool
}

// parseAnswer reads msg, an answer, recording its TTLs' offsets in
// ttls[:0] (room for maxRecords). It is false for an answer not kept:
// one not well formed (a name or record past its end, bytes after its
// last record); truncated;
// other than NOERROR or NXDOMAIN; with a question other than one; a
// negative answer with no SOA; a TTL of 0, or with its top bit set (RFC
// 2181); an OPT with options; or a TSIG.
func parseAnswer(msg []byte, ttls []uint16) (answer, bool) {
	if len(msg) < headerLen || len(msg) > MaxAnswer || msg[2]&0x80 == 0 || msg[2]&0x7a != 0 || // QR; opcode, TC
		binary.BigEndian.Uint16(msg[4:]) != 1 {
		return answer{}, false
	}
	rcode := msg[3] & 0x0f
	if rcode != rcodeNoError && rcode != rcodeNXDomain {
		return answer{}, false
	}
	qend, ok := questionEnd(msg)
	if !ok {
		return answer{}, false
	}
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	if an+ns+ar > maxRecords {
		return answer{}, false
	}
	a := answer{qend: qend, ttl: ^uint32(0), ttls: ttls[:0]}
	negative := rcode == rcodeNXDomain || an == 0
	soa := false
	i := qend
	for r := range an + ns + ar {
		end, ok := skipName(msg, i)
		if !ok || end+10 > len(msg) {
			return answer{}, false
		}
		typ := binary.BigEndian.Uint16(msg[end:])
		ttl := binary.BigEndian.Uint32(msg[end+4:])
		rdlen := int(binary.BigEndian.Uint16(msg[end+8:]))
		rdata := end + 10
		next := rdata + rdlen
		if next > len(msg) {
			return answer{}, false
		}
		switch {
		case typ == typeOPT && r >= an+ns:
			if rdlen != 0 {
				return answer{}, false
			}
		case typ == typeTSIG:
			return answer{}, false
		default:
			if ttl == 0 || ttl&0x80000000 != 0 {
				return answer{}, false
			}
			a.ttl = min(a.ttl, ttl)
			if negative && typ == typeSOA && r >= an && r < an+ns {
				if rdlen < 22 { // two root names and five 32-bit fields
					return answer{}, false
				}
				a.ttl = min(a.ttl, binary.BigEndian.Uint32(msg[next-4:]))
				soa = true
			}
			a.ttls = append(a.ttls, uint16(end+4))
		}
		i = next
	}
	if i != len(msg) || (negative && !soa) || a.ttl == 0 || a.ttl == ^uint32(0) {
		return answer{}, false
	}
	a.negative = negative
	return a, true
}

// skipName returns where the name at msg[i:] ends: after its root label
// or its pointer. False for one that runs past msg, is longer than
// maxNameLen, or holds a label type other than a length or a pointer.
// A pointer is not followed, so it cannot loop.
func skipName(msg []byte, i int) (int, bool) {
	start := i
	for {
		if i >= len(msg) {
			return 0, false
		}
		l := int(msg[i])
		switch l & 0xc0 {
		case 0:
			i += 1 + l
			if l == 0 {
				return i, true
			}
			if i-start >= maxNameLen {
				return 0, false
			}
		case 0xc0:
			if i+2 > len(msg) {
				return 0, false
			}
			return i + 2, true
		default:
			return 0, false
		}
	}
}

// sameQuestion reports whether the questions a[12:qend] and b[12:qend]
// are the same, names compared without case.
func sameQuestion(a, b []byte, qend int) bool {
	if len(a) < qend || len(b) < qend {
		return false
	}
	for i := headerLen; i < qend-4; i++ {
		if a[i] != b[i] && lower[a[i]] != lower[b[i]] {
			return false
		}
	}
	return string(a[qend-4:qend]) == string(b[qend-4:qend])
}
