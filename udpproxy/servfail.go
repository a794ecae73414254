package udpproxy

import (
	"encoding/binary"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/udpproxy/cache"
)

// maxNameLen is the longest domain name in wire format (RFC 1035).
const maxNameLen = 255

// servfail builds in out the SERVFAIL answer to query: its header and
// question, with QR set, RCODE 2 and no records. It returns nil for
// anything that is not a well-formed query with at most one question.
func servfail(query, out []byte) []byte { return selfAnswer(query, out, false) }

// truncated builds in out the empty truncated answer to query (a rate
// limit's slip): its header and question, with QR and TC set, RCODE
// NOERROR and no records, which has a client retry over TCP. nil as for
// servfail.
func truncated(query, out []byte) []byte { return selfAnswer(query, out, true) }

// selfAnswer builds servfail's answer, or with tc truncated's.
func selfAnswer(query, out []byte, tc bool) []byte {
	if len(query) < protocol.DNSHeaderLen || query[2]&0x80 != 0 {
		return nil
	}
	end := protocol.DNSHeaderLen
	switch binary.BigEndian.Uint16(query[4:]) {
	case 0:
	case 1:
		i, ok := cache.NameEnd(query, protocol.DNSHeaderLen)
		if !ok {
			return nil
		}
		end = i + 4 // QTYPE, QCLASS
		if end > len(query) {
			return nil
		}
	default:
		return nil
	}
	out = append(out[:0], query[:end]...)
	out[2] = 0x80 | query[2]&0x79 // QR; the opcode and RD stay; AA and TC clear
	out[3] = query[3]&0x10 | 2    // CD stays; RCODE SERVFAIL
	if tc {
		out[2] |= 0x02           // TC
		out[3] = query[3] & 0x10 // RCODE NOERROR
	}
	clear(out[6:12]) // no answer, authority or additional records
	return out
}
