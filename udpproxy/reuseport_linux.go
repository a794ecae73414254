package udpproxy

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Several readers of one address (-r) each read a socket of their own,
// all bound with SO_REUSEPORT to the address: the kernel puts them in
// one group, in the order they were bound, and gives each datagram to
// one of them. Left to itself it chooses by a hash of the datagram's
// addresses and ports, so that one busy client port (a forwarding
// resolver's, a load generator's) would keep one reader busy and the
// others idle. SteerByID has it choose by the query's DNS ID and source
// port instead: socket (((ID xor port) mod Regions) mod n) of the group,
// so that any traffic spreads evenly, even one port's, or many ports'
// with one ID (a naive flood); a client's retransmits (the same ID and
// port) come to the same reader; and each region (ID xor port) mod
// Regions to one reader, whose queries in flight it is (flights.bucket).
// Sockets of the group beyond the first n get no datagram: that is how
// a process given fewer readers than it inherited sockets retires the
// rest without losing what they hold (Retire).

// skfNetOff is SKF_NET_OFF: a classic BPF load at this offset and on
// reads the packet from its network header.
const skfNetOff = 0xfff00000 // -0x100000

// steerProgram is the classic BPF program of SteerByID, run by the
// kernel on the datagram with its UDP payload at offset 0: X = the UDP
// source port (after the IPv4 header, of the length its IHL says, or
// the fixed IPv6 header), A = the DNS ID (the payload's first 16 bits);
// return ((A xor X) mod Regions) mod n. A load past the packet's end (a
// datagram too short to hold an ID) ends the program, which then
// returns 0: the first socket, whose reader counts the runt.
func steerProgram(n int, v6 bool) []unix.SockFilter {
	port := []unix.SockFilter{
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: skfNetOff}, // X = 4 * IHL
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: skfNetOff},  // A = the source port
	}
	if v6 {
		port = []unix.SockFilter{{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: skfNetOff + 40}}
	}
	return append(port,
		unix.SockFilter{Code: unix.BPF_MISC | unix.BPF_TAX},                  // X = A
		unix.SockFilter{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 0}, // A = the ID
		unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_XOR | unix.BPF_X},      // A ^= X
		unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: Regions - 1},
		unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_A},
	)
}

// Region returns the region of the ID space (Regions of them) of a
// query from port with DNS ID id: the steering gives each region to one
// reader, and the in-flight table keeps each in buckets of its own.
func Region(port, id uint16) int { return int((id ^ port) & (Regions - 1)) }

// ReaderOf returns the reader, of n steered to, that SteerByID gives a
// query from port with DNS ID id.
func ReaderOf(port, id uint16, n int) int { return Region(port, id) % n }

// SteerByID has the kernel give each datagram for c's address to socket
// ReaderOf(its source port, its DNS ID, n) of c's SO_REUSEPORT group, replacing any program the
// group had (a predecessor's, for another n). n must be at least 1.
func SteerByID(c *net.UDPConn, n int) error {
	if n < 1 || n > MaxListeners {
		return fmt.Errorf("steering over %d sockets", n)
	}
	a := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
	prog := steerProgram(n, a.Is6() && !a.Is4In6())
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fp)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", serr)
	}
	return nil
}
