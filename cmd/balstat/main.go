// Command balstat shows operators what a running bbal is doing, and steers
// it: the backends and their counters, the client-to-backend map, and the
// control actions (disable, drain, enable a backend; reset the counters).
// It reads bbal's debug socket.
//
//	balstat [-S PATH] [-j] [-b ID] [-r IP] [-q] [-w SECS [-n COUNT]]
//	balstat [-S PATH] disable|drain|enable ID
//	balstat [-S PATH] weight ID N
//	balstat [-S PATH] reset
//	balstat [-S PATH] health [MIN]
//	balstat [-S PATH] top [-w SECS [-n COUNT]] [-j]
//	balstat [-S PATH] cache [-j] | cache flush [NAME]
//	balstat [-S PATH] [-j] readers
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

const usage = `usage: balstat [-S PATH] [-j] [-b ID] [-r IP] [-q] [-w SECS [-n COUNT]]
       balstat [-S PATH] disable|drain|enable ID
       balstat [-S PATH] weight ID N
       balstat [-S PATH] reset
       balstat [-S PATH] health [MIN]
       balstat [-S PATH] top [-w SECS [-n COUNT]] [-j]
       balstat [-S PATH] [-j] cache
       balstat [-S PATH] cache flush [NAME]
       balstat [-S PATH] [-j] readers

  -S PATH   bbal's debug socket (default /var/run/bbal.sock)
  -j        print JSON instead of tables
  -b ID     only this backend, and its remotes
  -r IP     only this remote (IPv4 or IPv6)
  -q        only the remotes over their rate limit (bbal -q) in the last second
  -w SECS   refresh every SECS seconds, with per-backend query rates
  -n COUNT  with -w, stop after COUNT refreshes

  disable ID  the backend takes no new remotes; its remotes go to backups
  drain ID    the backend takes no new remotes; its remotes stay
  enable ID   the backend is back to normal
  weight ID N the backend's share of remotes relative to the others'
              (1 to 1000; every backend starts at 1)
  reset       every counter back to zero
  top         the busiest clients (with their backend and rate limit)
              and questions, sampled; -w refreshes, -j prints JSON
  health [MIN]
              exit 0 when bbal serves DNS with at least MIN backends ok
              (default 1), 1 when not (GET /readyz), printing why
  cache       the answer cache (bbal -c): entries, bytes, hit ratio,
              stale answers served
  cache flush [NAME]
              empty the answer cache, or only NAME's answers (every type)
  readers     the UDP readers of each listen address (bbal -r), with the
              datagrams each has read and its share of its address's
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed command line.
type options struct {
	socket  string
	json    bool
	backend uint16
	ip      string
	watch   time.Duration
	count   int
	limited bool
}

// run is balstat from the command line to the exit status: 0, 1 for an
// error, 2 for a bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("balstat", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o options
	var backendID, watch string
	fs.StringVar(&o.socket, "S", debugapi.DefaultSocket, "")
	fs.BoolVar(&o.json, "j", false, "")
	fs.StringVar(&backendID, "b", "", "")
	fs.StringVar(&o.ip, "r", "", "")
	fs.BoolVar(&o.limited, "q", false, "")
	fs.StringVar(&watch, "w", "", "")
	fs.IntVar(&o.count, "n", 0, "")
	// A bad command line gets what is wrong, and where help is.
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "balstat: "+format+"\n", a...)
		fmt.Fprintln(stderr, "balstat: run 'balstat -h' for usage")
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return usageErr("%v", err)
	}
	if backendID != "" {
		id, err := parseID(backendID)
		if err != nil {
			return usageErr("%v", err)
		}
		o.backend = id
	}
	if o.ip != "" {
		a, err := netip.ParseAddr(o.ip)
		if err != nil || a.Zone() != "" {
			return usageErr("bad IP address for -r: %q", o.ip)
		}
		o.ip = a.Unmap().String()
	}
	var err error
	if o.watch, err = parseWatch(watch, o.count); err != nil {
		return usageErr("%v", err)
	}

	rest := fs.Args()
	if len(rest) > 0 {
		if msg := checkCommand(rest); msg != "" {
			return usageErr("%s", msg)
		}
		if rest[0] == "top" {
			o, _ = topOptions(o, rest[1:])
		}
	}

	c := debugapi.NewClient(o.socket)
	defer c.Close()
	switch {
	case len(rest) == 0 && o.watch > 0:
		err = watchLoop(ctx, c, o, stdout)
	case len(rest) == 0:
		err = show(ctx, c, o, stdout)
	case rest[0] == "top":
		err = topLoop(ctx, c, o, stdout)
	case rest[0] == "health":
		return health(ctx, c, rest, stdout, stderr)
	case rest[0] == "cache":
		err = cacheCommand(ctx, c, o, rest[1:], stdout)
	case rest[0] == "readers":
		err = readersCommand(ctx, c, o, stdout)
	case rest[0] == "reset":
		if err = c.ResetCounters(ctx); err == nil {
			fmt.Fprintln(stdout, "counters reset")
		}
	case rest[0] == "weight":
		id, _ := parseID(rest[1])
		var b debugapi.Backend
		if b, err = c.Weight(ctx, id, rest[2]); err == nil {
			fmt.Fprintf(stdout, "backend %d: weight %d (%s)\n", b.ID, b.Weight, printable(b.Path))
		}
	default: // disable, drain, enable
		id, _ := parseID(rest[1])
		var b debugapi.Backend
		if b, err = c.Action(ctx, id, rest[0]); err == nil {
			fmt.Fprintf(stdout, "backend %d: %s (%s)\n", b.ID, printable(b.Admin), printable(b.Path))
		}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return 0
		}
		fmt.Fprintf(stderr, "balstat: %v\n", err)
		return 1
	}
	return 0
}

// checkCommand says what is wrong with the command and its arguments, or
// "" when nothing is.
func checkCommand(args []string) string {
	cmd, n := args[0], len(args)-1
	switch cmd {
	case "reset", "readers":
		if n != 0 {
			return fmt.Sprintf("%s takes no arguments, got %q", cmd, args[1:])
		}
	case "disable", "drain", "enable":
		if n != 1 {
			return fmt.Sprintf("%s takes one backend ID, got %d arguments", cmd, n)
		}
		if _, err := parseID(args[1]); err != nil {
			return err.Error()
		}
	case "top":
		if _, err := topOptions(options{}, args[1:]); err != nil {
			return err.Error()
		}
	case "health":
		if n > 1 {
			return fmt.Sprintf("health takes at most a minimum of backends, got %d arguments", n)
		}
		if n == 1 {
			if m, err := strconv.Atoi(args[1]); err != nil || m < 1 || m > debugapi.MaxReadyMin {
				return fmt.Sprintf("bad minimum %q (want 1 to %d)", args[1], debugapi.MaxReadyMin)
			}
		}
	case "weight":
		if n != 2 {
			return fmt.Sprintf("weight takes a backend ID and a weight, got %d arguments", n)
		}
		if _, err := parseID(args[1]); err != nil {
			return err.Error()
		}
		if w, err := strconv.Atoi(args[2]); err != nil || w < 1 || w > 1000 {
			return fmt.Sprintf("bad weight %q (want 1 to 1000)", args[2])
		}
	case "cache":
		if n > 0 && args[1] != "flush" || n > 2 {
			return fmt.Sprintf("cache takes nothing, or flush and at most a name, got %q", args[1:])
		}
	default:
		return fmt.Sprintf("unknown command %q (want disable, drain, enable, weight, reset, health, top, cache or readers)", cmd)
	}
	return ""
}

// health is balstat health [MIN]: 0 when ready, 1 when not or when bbal
// cannot be asked.
func health(ctx context.Context, c *debugapi.Client, args []string, stdout, stderr io.Writer) int {
	min := 0
	if len(args) > 1 {
		min, _ = strconv.Atoi(args[1])
	}
	h, err := c.Ready(ctx, min)
	if err != nil {
		fmt.Fprintf(stderr, "balstat: %v\n", err)
		return 1
	}
	if h.Status != "ready" {
		fmt.Fprintf(stdout, "%s: %s\n", h.Status, printable(h.Reason))
		return 1
	}
	fmt.Fprintf(stdout, "ready: %d of %d backends ok\n", h.BackendsOK, h.Backends)
	return 0
}

// parseWatch parses -w's interval (none for "") and checks -n's count
// against it.
func parseWatch(watch string, count int) (time.Duration, error) {
	var d time.Duration
	if watch != "" {
		secs, err := strconv.ParseFloat(watch, 64)
		if err != nil || secs <= 0 || secs > 86400 {
			return 0, fmt.Errorf("bad interval for -w: %q (want seconds, more than 0)", watch)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if count < 0 || count > 0 && d == 0 {
		return 0, errors.New("-n goes with -w and takes a count")
	}
	return d, nil
}

func parseID(s string) (uint16, error) {
	id, err := strconv.ParseUint(s, 10, 16)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("bad backend ID %q", s)
	}
	return uint16(id), nil
}

// printJSON writes v to out as indented JSON, as -j prints.
func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
