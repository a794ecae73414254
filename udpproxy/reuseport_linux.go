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
// others idle. SteerByID has it choose by the query's DNS ID instead:
// socket ((ID mod Regions) mod n) of the group, so that any traffic
// spreads evenly, a client's retransmits (the same ID) come to the same
// reader, and each region of the ID space (ID mod Regions) to one
// reader, whose queries in flight it is (flights.bucket).
// Sockets of the group beyond the first n get no datagram: that is how
// a process given fewer readers than it inherited sockets retires the
// rest without losing what they hold (Retire).

// steerProgram is the classic BPF program of SteerByID, run by the
// kernel on the datagram's UDP payload: A = the 16 bits at offset 0 (a
// datagram too short to have them ends the program, which then returns
// 0: the first socket, whose reader counts it as a runt); return
// (A mod Regions) mod n.
func steerProgram(n int) []unix.SockFilter {
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 0},
		{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: Regions - 1},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
}

// ReaderOf returns the reader, of n steered to, that SteerByID gives a
// query with DNS ID id.
func ReaderOf(id uint16, n int) int { return int(id&(Regions-1)) % n }

// SteerByID has the kernel give each datagram for c's address to socket
// ReaderOf(its DNS ID, n) of c's SO_REUSEPORT group, replacing any program the
// group had (a predecessor's, for another n). n must be at least 1.
func SteerByID(c *net.UDPConn, n int) error {
	if n < 1 || n > MaxListeners {
		return fmt.Errorf("steering over %d sockets", n)
	}
	prog := steerProgram(n)
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
