package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/remotes"
	"github.com/bbal/bbal/udpproxy"
	"github.com/bbal/bbal/udpproxy/cache"
)

// A zero-downtime restart (SIGUSR2) hands the listening sockets and the
// remote→backend map to a new process, which may run a newly installed
// binary:
//
//  1. The old process starts its own executable with the UDP sockets
//     (every reader's), the TCP listeners, the debug and metrics listeners, a state pipe and a
//     ready pipe as inherited descriptors, named in InheritEnv.
//  2. It writes its state on the state pipe: the backends (ID, socket
//     path, admin setting, whether up) and every remote; and with an
//     answer cache (-c), the cache's entries on a cache pipe.
//  3. The new process restores the backends with their IDs and the
//     remotes with their assignments, connects to the backends, waits
//     until those that were up are up again, starts reading and
//     accepting, and writes on the ready pipe.
//  4. The old process then stops reading the UDP sockets (it keeps them to
//     send the replies still coming for queries it sent on) and stops
//     accepting; it waits for its TCP sessions and late replies, and
//     exits.
//
// Both processes hold the same sockets throughout: a datagram or a
// connection is taken by one or the other, and none is lost.

// InheritEnv names the environment variable that tells a new process
// which descriptors it inherited: "udp:3,udp:4,tcp:5,debug:6,metrics:7,state:8,ready:9"
// (two readers of one address).
const InheritEnv = "BBAL_INHERIT"

// Inherited is what a new process takes over.
type Inherited struct {
	// UDP is the readers' sockets, those of each listen address in a
	// run, in order; the new process may be given another number of
	// readers (-r), and binds more or retires some.
	UDP     []*net.UDPConn
	TCP     []*net.TCPListener // likewise
	Debug   *net.UnixListener  // nil when there is no debug socket
	Metrics net.Listener       // nil without -m
	// Cache is the cache pipe, nil when the old process had no answer
	// cache; the new process reads it (CacheRestoreTime at most) into
	// its own, if it has one.
	Cache *os.File
	State *State
	ready *os.File
}

// State is the old process's state. On the state pipe it is a JSON line
// with the backends and the format of the remote records, then the
// records (a remotes snapshot) until the end of the stream.
type State struct {
	Backends []backend.Saved `json:"backends"`
	// RemoteFormat is the format of the remote records that follow:
	// remotes.SnapshotV2, or 0 (remotes.SnapshotV1) for the first (IPv4
	// only, from bbal before IPv6 clients).
	RemoteFormat remotes.SnapshotFormat `json:"remote_format,omitempty"`
	remotes      []remotes.Info
}

// writeState writes the state: a JSON line with the backends, then a
// record per remote until the end of the stream.
func (b *Balancer) writeState(w io.Writer) error {
	st := State{Backends: b.Backends.Save(), RemoteFormat: remotes.SnapshotV3}
	if err := json.NewEncoder(w).Encode(st); err != nil { // one write
		return err
	}
	return b.Table.WriteSnapshot(w)
}

// ReadState reads a state written by writeState.
func ReadState(r io.Reader) (*State, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("state header: %w", err)
	}
	var st State
	if err := json.Unmarshal(line, &st); err != nil {
		return nil, fmt.Errorf("state header: %w", err)
	}
	if st.remotes, err = remotes.ReadSnapshot(br, st.RemoteFormat); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return &st, nil
}

// restore applies the old process's state, before anything starts: the
// backends with their IDs, then the remotes whose backends are among
// them.
func (b *Balancer) restore(st *State) error {
	if err := b.Backends.RestoreSaved(st.Backends); err != nil {
		return err
	}
	// The Set has not started: it has the restored backends only.
	n := b.Table.RestoreSnapshot(st.remotes, func(id backend.ID) bool { return b.Backends.Get(id) != nil })
	b.Log.Info().Int("backends", len(st.Backends)).Int("remotes", n).Msg("took over the previous process's state")
	st.remotes = nil
	return nil
}

// Inherit takes over the descriptors named in InheritEnv, reading the
// state. It returns nil when the variable is not set.
func Inherit() (*Inherited, error) {
	spec := os.Getenv(InheritEnv)
	if spec == "" {
		return nil, nil
	}
	os.Unsetenv(InheritEnv)
	in := &Inherited{}
	for _, item := range strings.Split(spec, ",") {
		name, num, _ := strings.Cut(item, ":")
		fd, err := strconv.Atoi(num)
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("%s: bad descriptor in %q", InheritEnv, item)
		}
		if name == "cache" {
			// Non-blocking, so that its read can have a deadline.
			syscall.SetNonblock(fd, true)
		}
		f := os.NewFile(uintptr(fd), name)
		switch name {
		case "udp":
			c, err := net.FilePacketConn(f)
			if err != nil {
				return nil, fmt.Errorf("inherited UDP socket: %w", err)
			}
			in.UDP = append(in.UDP, c.(*net.UDPConn))
			f.Close()
		case "tcp", "debug", "metrics":
			ln, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("inherited %s listener: %w", name, err)
			}
			f.Close()
			switch name {
			case "tcp":
				in.TCP = append(in.TCP, ln.(*net.TCPListener))
			case "debug":
				in.Debug = ln.(*net.UnixListener)
			default:
				in.Metrics = ln
			}
		case "state":
			st, err := ReadState(f)
			f.Close()
			if err != nil {
				return nil, err
			}
			in.State = st
		case "ready":
			in.ready = f
		case "cache":
			in.Cache = f
		default:
			return nil, fmt.Errorf("%s: unknown descriptor %q", InheritEnv, name)
		}
	}
	if len(in.UDP) == 0 || len(groupByAddr(in.UDP)) != len(in.TCP) || in.ready == nil {
		return nil, fmt.Errorf("%s %q: UDP sockets, a TCP listener for each of their addresses, and the ready pipe are needed", InheritEnv, spec)
	}
	return in, nil
}

// TakeOver completes a new process's start: it waits (up to limit) for
// the backends that were up in the old process to be up here, starts
// serving, and tells the old process it may go.
func (b *Balancer) TakeOver(limit time.Duration) {
	in := b.cfg.Inherited
	var want []backend.ID
	if in.State != nil {
		want = backend.WereUp(in.State.Backends)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	b.Backends.WaitUp(ctx, want)
	cancel()
	b.Serve()
	up := 0
	for _, id := range want {
		if be := b.Backends.Get(id); be != nil && be.OK() {
			up++
		}
	}
	b.Log.Info().Int("backends_up", up).Int("backends_were_up", len(want)).Msg("serving: took over from the previous process")
	in.ready.Write([]byte("ready\n"))
	in.ready.Close()
	notifySystemd(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
}

// Handover starts a successor process and, once it serves, steps aside:
// it stops reading and accepting, then waits for its TCP sessions (up to
// drain) and for replies still due. It returns nil when the successor has
// taken over, and then the caller exits; on an error the successor is
// gone and this process carries on serving.
func (b *Balancer) Handover(args []string, drain time.Duration) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var spec []string
	add := func(name string, f *os.File) {
		files = append(files, f)
		spec = append(spec, fmt.Sprintf("%s:%d", name, 2+len(files)))
	}
	for _, c := range b.UDP.Conns() {
		f, err := c.File()
		if err != nil {
			return err
		}
		add("udp", f)
	}
	for _, ln := range b.TCP.Listeners() {
		f, err := ln.File()
		if err != nil {
			return err
		}
		add("tcp", f)
	}
	if b.debug != nil {
		f, err := b.debug.File()
		if err != nil {
			return err
		}
		add("debug", f)
	}
	if b.metricsLn != nil {
		f, err := b.metricsLn.(*net.TCPListener).File()
		if err != nil {
			return err
		}
		add("metrics", f)
	}
	var cacheW *os.File
	if c := b.UDP.Cache(); c != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		add("cache", r)
		cacheW = w
		defer func() {
			if cacheW != nil {
				cacheW.Close()
			}
		}()
	}
	stateR, stateW, err := os.Pipe()
	if err != nil {
		return err
	}
	add("state", stateR)
	readyR, readyW, err := os.Pipe()
	if err != nil {
		stateW.Close()
		return err
	}
	defer readyR.Close()
	add("ready", readyW)

	env := append(os.Environ(), InheritEnv+"="+strings.Join(spec, ","))
	proc, err := os.StartProcess(exe, args, &os.ProcAttr{
		Env:   env,
		Files: append([]*os.File{os.Stdin, os.Stdout, os.Stderr}, files...),
	})
	if err != nil {
		stateW.Close()
		return fmt.Errorf("starting %s: %w", exe, err)
	}
	b.Log.Info().Int("new_pid", proc.Pid).Str("executable", exe).Msg("handing over to a new process")
	for _, f := range files {
		f.Close()
	}
	files = nil
	exited := make(chan error, 1)
	go func() {
		st, err := proc.Wait()
		if err == nil {
			err = fmt.Errorf("new process exited: %v", st)
		}
		exited <- err
	}()
	go func() {
		b.writeState(stateW)
		stateW.Close()
	}()
	if cacheW != nil {
		w := cacheW
		cacheW = nil
		go func() {
			// Ends when written, or when the successor closes its
			// end (at its deadline, or when it exits).
			c := b.UDP.Cache()
			c.WriteSnapshot(w, b.Clock.Now().UnixNano(), c.Config().Entries)
			w.Close()
		}()
	}

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(readyR).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("new process said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			proc.Kill()
			return fmt.Errorf("new process did not take over: %w", err)
		}
	case err := <-exited:
		return err
	case <-time.After(time.Minute):
		proc.Kill()
		return errors.New("new process not ready after a minute")
	}

	// The successor serves. Step aside, and let what is under way end.
	b.UDP.StopReading()
	b.TCP.StopAccepting()
	if b.debug != nil {
		b.debug.CloseKeepSocket()
		b.debug = nil
	}
	if b.metrics != nil {
		b.metrics.Close()
		b.metrics = nil
	}
	b.Log.Info().Int("new_pid", proc.Pid).Msg("handed over: finishing what is under way")
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	if !b.TCP.Wait(ctx) {
		b.Log.Warn().Dur("drain", drain).Msg("TCP sessions still open after the drain; closing them")
	}
	cancel()
	time.Sleep(lateReplies) // replies to queries already sent on
	proc.Release()
	return nil
}

// CacheRestoreTime bounds a new process's read of the old one's answer
// cache: what has not come by then is left, and the new process goes on
// to serve.
const CacheRestoreTime = 5 * time.Second

// restoreCache reads the old process's answer cache from f into this
// one's, each entry in its backend's partition here (the backends were
// restored first), and closes f.
func (b *Balancer) restoreCache(f *os.File) {
	defer f.Close()
	c := b.UDP.Cache()
	if c == nil {
		b.Log.Info().Msg("the previous process's answer cache is not taken over: this one has none (-c)")
		return
	}
	f.SetReadDeadline(time.Now().Add(CacheRestoreTime))
	n, err := c.ReadSnapshot(f, func(id uint16) (cache.Partition, bool) {
		be := b.Backends.Get(backend.ID(id))
		if be == nil {
			return cache.Partition{}, false
		}
		return udpproxy.CachePartition(be), true
	}, b.Clock.Now().UnixNano())
	if err != nil {
		b.Log.Warn().Err(err).Int("entries", n).Msg("took over part of the previous process's answer cache")
		return
	}
	b.Log.Info().Int("entries", n).Msg("took over the previous process's answer cache")
}

// lateReplies is how long a process that has handed over keeps its
// backend sessions for the replies to queries it sent on: a client has
// given up on a later one.
const lateReplies = time.Second

// notifySystemd sends state to systemd's notification socket, when there
// is one (Type=notify; NotifyAccess=all lets a successor send MAINPID).
func notifySystemd(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// NotifyReady tells systemd, when there is one, that bbal serves.
func NotifyReady() { notifySystemd("READY=1") }
