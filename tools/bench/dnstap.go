package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	framestream "github.com/farsightsec/golang-framestream"
)

// tapCollector is a dnstap collector on a Unix socket that reads every
// frame and counts it: the reading collector of the -dnstap run.
type tapCollector struct {
	ln     *net.UnixListener
	frames atomic.Int64
}

func newTapCollector(path string) (*tapCollector, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	c := &tapCollector{ln: ln}
	go c.accept()
	return c, nil
}

func (c *tapCollector) accept() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		go c.read(conn)
	}
}

func (c *tapCollector) read(conn net.Conn) {
	defer conn.Close()
	r, err := framestream.NewReader(conn, &framestream.ReaderOptions{
		ContentTypes: [][]byte{[]byte("protobuf:dnstap.Dnstap")}, Bidirectional: true})
	if err != nil {
		return
	}
	buf := make([]byte, 1<<16)
	for {
		if _, err := r.ReadFrame(buf); err != nil {
			return
		}
		c.frames.Add(1)
	}
}

func (c *tapCollector) close() { c.ln.Close() }

// startTapped starts a second bbal on the same backends with -D to a
// reading collector, for the rotation beside bbal without it.
func startTapped(c config, dir, sockets string, logs *os.File) (target, *tapCollector, string, error) {
	tc, err := newTapCollector(filepath.Join(dir, "tap.sock"))
	if err != nil {
		return target{}, nil, "", err
	}
	port, _ := freePort()
	debug := filepath.Join(dir, "tapped.sock")
	p, err := start("bbal -D", logs, filepath.Join(c.bin, "bbal"), "-s", sockets, "-b", "127.0.0.1",
		"-p", strconv.Itoa(port), "-S", debug, "-l", "warn", "-D", "unix:"+filepath.Join(dir, "tap.sock"))
	if err != nil {
		tc.close()
		return target{}, nil, "", err
	}
	if err := answers(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		p.stop()
		tc.close()
		return target{}, nil, "", err
	}
	return target{"bbal -D", port, p, ""}, tc, debug, nil
}

// tapReport prints what dnstap cost per UDP query, from the medians of
// bbal with and without -D, and what the collector took.
func tapReport(tapped, plain sample, tc *tapCollector, debug string) {
	fmt.Printf("udp: bbal -D/bbal %.2fx qps, %.2fx CPU per query (%+.2f µs of bbal's CPU per query); latency %+.3f ms\n",
		tapped.qps/plain.qps, tapped.cpu/plain.cpu, (tapped.cpu-plain.cpu)*10, float64(tapped.latency-plain.latency)/1e6)
	st, err := bbalStats(debug)
	if err != nil {
		fmt.Printf("dnstap: stats: %v\n", err)
		return
	}
	d := st.Dnstap
	fmt.Printf("dnstap: %d messages sent, the collector read %d frames; dropped: %d queue full, %d no collector\n",
		d.Sent, tc.frames.Load(), d.QueueFull, d.NoCollector)
}
