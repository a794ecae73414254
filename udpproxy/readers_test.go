package udpproxy

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/tools/testbed"
)

func TestNextActive(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name      string
		active, n int
		work      []readerLoad
		elapsed   time.Duration
		want      int
	}{
		{"idle stays at one", 1, 4, []readerLoad{{}, {}, {}, {}}, 500 * ms, 1},
		{"a quarter of reads full: twice as many", 1, 4, []readerLoad{{reads: 100, full: 25, busy: 400 * ms}, {}, {}, {}}, 500 * ms, 2},
		{"full reads on the second of two", 2, 4, []readerLoad{{reads: 100}, {reads: 100, full: 50}, {}, {}}, 500 * ms, 4},
		{"never past n", 2, 3, []readerLoad{{reads: 10, full: 10}, {}, {}}, 500 * ms, 3},
		{"an idle reader's full reads do not count", 1, 2, []readerLoad{{reads: 10}, {reads: 10, full: 10}}, 500 * ms, 1},
		{"busy but not behind: stays", 2, 2, []readerLoad{{reads: 1000, busy: 200 * ms}, {reads: 1000, busy: 200 * ms}}, 500 * ms, 2},
		{"half as many would be under half busy: halves", 4, 4, []readerLoad{{reads: 1000, busy: 100 * ms}, {reads: 1000, busy: 100 * ms}, {reads: 1000, busy: 100 * ms}, {reads: 1000, busy: 90 * ms}}, 500 * ms, 2},
		{"three round up to two", 3, 4, []readerLoad{{reads: 10, busy: ms}, {reads: 10, busy: ms}, {reads: 10, busy: ms}, {}}, 500 * ms, 2},
	}
	for _, tt := range tests {
		if got := nextActive(tt.active, tt.n, tt.work, tt.elapsed); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

// reuseportConns binds n UDP sockets to one loopback port with
// SO_REUSEPORT, in the order of their group.
func reuseportConns(t *testing.T, n int) []*net.UDPConn { return reuseportOn(t, "127.0.0.1", n) }

func reuseportOn(t *testing.T, host string, n int) []*net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	}}
	addr := net.JoinHostPort(host, "0")
	var out []*net.UDPConn
	for range n {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		out = append(out, pc.(*net.UDPConn))
	}
	return out
}

// The readers' check on the fake clock: one reader is given datagrams
// at first, even for IDs the steering would give another; when it reads
// full batches, both are; when they are idle, one again. Each step is
// seen in where datagrams with IDs 0 to 9 are read.
func TestReadersFollowTheLoad(t *testing.T) {
	clock := timeouts.NewFake(testbed.Epoch)
	conns := reuseportConns(t, 2)
	p := newBedOn(t, zerolog.Nop(), conns, clock, func(p *Proxy) { p.SteerReaders(true) }).p
	addr := conns[0].LocalAddr().(*net.UDPAddr).AddrPort()
	client, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// send sends IDs 0 to 9 and returns the datagrams each reader read
	// of them.
	var seen [2]uint64
	send := func() [2]uint64 {
		t.Helper()
		for id := range 10 {
			client.Write([]byte{0, byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1})
		}
		var got [2]uint64
		testbed.Eventually(t, "ten read", func() bool {
			rs := p.Readers()
			got = [2]uint64{rs[0].Datagrams - seen[0], rs[1].Datagrams - seen[1]}
			return got[0]+got[1] == 10
		})
		seen[0] += got[0]
		seen[1] += got[1]
		return got
	}
	if got := send(); got != [2]uint64{10, 0} {
		t.Fatalf("at first: readers read %v, want all on the first", got)
	}
	if rs := p.Readers(); !rs[0].Active || rs[1].Active {
		t.Fatalf("at first: %+v, want the first active", rs)
	}
	// The first reader falls behind: its reads are full.
	p.ls[0].reads.Add(8)
	p.ls[0].fullReads.Add(4)
	checks := p.readerChecks.Load()
	clock.Advance(ReaderCheckInterval)
	testbed.Eventually(t, "readers checked", func() bool { return p.readerChecks.Load() > checks })
	if got := send(); got != [2]uint64{5, 5} {
		t.Fatalf("after full reads: readers read %v, want even IDs on the first, odd on the second", got)
	}
	if rs := p.Readers(); !rs[0].Active || !rs[1].Active {
		t.Fatalf("after full reads: %+v, want both active", rs)
	}
	// Idle: one again.
	checks = p.readerChecks.Load()
	clock.Advance(ReaderCheckInterval)
	testbed.Eventually(t, "readers checked", func() bool { return p.readerChecks.Load() > checks })
	if got := send(); got != [2]uint64{10, 0} {
		t.Fatalf("idle: readers read %v, want all on the first", got)
	}
}

// The kernel runs the steering program as ReaderOf says, over IPv4 and
// IPv6: from several ports, with several IDs, each datagram is read on
// the socket ReaderOf names; a datagram too short for an ID, on the
// first.
func TestSteerByIDAsReaderOfSays(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			const n = 3
			conns := reuseportOn(t, host, n)
			for _, c := range conns {
				defer c.Close()
			}
			if err := SteerByID(conns[0], n); err != nil {
				t.Fatal(err)
			}
			addr := conns[0].LocalAddr().(*net.UDPAddr)
			want := make([]map[[2]uint16]bool, n)
			for i := range want {
				want[i] = map[[2]uint16]bool{}
			}
			for range 4 {
				cl, err := net.DialUDP("udp", nil, addr)
				if err != nil {
					t.Fatal(err)
				}
				port := uint16(cl.LocalAddr().(*net.UDPAddr).Port)
				for id := range uint16(6) {
					cl.Write([]byte{byte(id >> 8), byte(id), byte(port >> 8), byte(port)})
					want[ReaderOf(port, id, n)][[2]uint16{port, id}] = true
				}
				cl.Write([]byte{1}) // a runt: the first socket's
				cl.Close()
			}
			for i, c := range conns {
				got := map[[2]uint16]bool{}
				runts := 0
				buf := make([]byte, 16)
				for {
					c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					m, err := c.Read(buf)
					if err != nil {
						break
					}
					if m < 4 {
						runts++
						continue
					}
					got[[2]uint16{uint16(buf[2])<<8 | uint16(buf[3]), uint16(buf[0])<<8 | uint16(buf[1])}] = true
				}
				if len(got) != len(want[i]) || (i == 0) != (runts == 4) {
					t.Fatalf("socket %d read %v and %d runts, want %v", i, got, runts, want[i])
				}
				for k := range want[i] {
					if !got[k] {
						t.Fatalf("socket %d did not read port %d ID %d", i, k[0], k[1])
					}
				}
			}
		})
	}
}
