package remotes

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/google/btree"

	"github.com/bbal/bbal/protocol"
)

// addrKey is an address as the tree orders it: the 128 bits of its IPv6
// form (an IPv4 address as IPv4-mapped), which compare faster and take
// less room than a netip.Addr.
type addrKey struct{ hi, lo uint64 }

func keyOf(ip netip.Addr) addrKey {
	if ip.Is4() {
		return addrKey{0, 0xffff<<32 | uint64(protocol.AddrToU32(ip))}
	}
	b := ip.As16()
	return addrKey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// Addr returns the address k is the key of.
func (k addrKey) Addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.AddrFrom16(b).Unmap()
}

func (k addrKey) String() string { return k.Addr().String() }

// entry is an item of the tree: the address inline, so that a search
// compares keys in the node's own memory and follows a pointer only to
// the remote it finds.
type entry struct {
	addr addrKey
	r    *Remote
}

func lessEntry(a, b entry) bool { return a.addr.less(b.addr) }

func key(ip netip.Addr) entry { return entry{addr: keyOf(ip)} }

// network returns the key of the IPv4 address ip: its network, with
// PrefixBits.
func (t *Table) network(ip netip.Addr) netip.Addr {
	if t.mask == ^uint32(0) {
		return ip
	}
	return protocol.U32ToAddr(protocol.AddrToU32(ip) & t.mask)
}

// hash mixes an address so that neighbouring addresses spread (the
// finaliser of MurmurHash3).
func hash(k uint32) uint32 {
	k ^= k >> 16
	k *= 0x85ebca6b
	k ^= k >> 13
	k *= 0xc2b2ae35
	k ^= k >> 16
	return k
}

// The table has shardCount shards: enough that the readers of many
// cores seldom meet on one lock.
const (
	shardBits  = 6
	shardCount = 1 << shardBits
)

// shard is a part of the table: the remotes whose address hashes to it,
// in a B-tree under its own lock, on cache lines of its own.
type shard struct {
	mu   sync.Mutex
	tree *btree.BTreeG[entry]
	_    [128 - 16]byte
}

// shard returns the shard of the remote with key k.
func (t *Table) shard(k addrKey) *shard {
	h := (k.hi ^ k.lo) * 0x9e3779b97f4a7c15
	return &t.shards[h>>(64-shardBits)]
}

func (k addrKey) less(o addrKey) bool { return k.hi < o.hi || k.hi == o.hi && k.lo < o.lo }
