package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// backends fetches the backends, in ID order, keeping only o.backend when
// it is set (and failing when it does not exist).
func backends(ctx context.Context, c *debugapi.Client, o options) (debugapi.BackendsReply, error) {
	r, err := c.Backends(ctx)
	if err != nil {
		return r, err
	}
	sort.Slice(r.Backends, func(i, j int) bool { return r.Backends[i].ID < r.Backends[j].ID })
	if o.backend != 0 {
		var keep []debugapi.Backend
		for _, b := range r.Backends {
			if b.ID == o.backend {
				keep = append(keep, b)
			}
		}
		if len(keep) == 0 {
			return r, fmt.Errorf("no backend %d", o.backend)
		}
		r.Backends = keep
	}
	return r, nil
}

// show prints the two tables, or the JSON, once.
func show(ctx context.Context, c *debugapi.Client, o options, out io.Writer) error {
	bs, err := backends(ctx, c, o)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	if o.json {
		return showJSON(ctx, c, o, bs, w)
	}
	printBackends(w, bs.Backends, nil)
	fmt.Fprintln(w)
	return printRemotes(ctx, c, o, w)
}

func showJSON(ctx context.Context, c *debugapi.Client, o options, bs debugapi.BackendsReply, w *bufio.Writer) error {
	now, _ := json.Marshal(bs.Now)
	list, _ := json.MarshalIndent(bs.Backends, "", "  ")
	fmt.Fprintf(w, "{\n\"now\": %s,\n\"backends\": %s,\n\"remotes\": [", now, list)
	n := 0
	_, err := c.Remotes(ctx, debugapi.RemoteFilter{Backend: o.backend, IP: o.ip, Limited: o.limited}, func(_ time.Time, r debugapi.Remote) error {
		if n > 0 {
			w.WriteByte(',')
		}
		n++
		j, _ := json.Marshal(r)
		w.WriteString("\n  ")
		_, err := w.Write(j)
		return err
	})
	w.WriteString("\n]\n}\n")
	return err
}

// printBackends prints the BACKENDS table; with rates (queries per second
// by backend ID), a RATE column too; with health checks by DNS, a PROBES
// column (probes answered/sent).
func printBackends(w io.Writer, bs []debugapi.Backend, rates map[uint16]float64) {
	fmt.Fprintln(w, "BACKENDS")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "ID\tSTATE\tOK\tREMOTES\tWEIGHT\tUDP\tTCP\tSTUCK\tFAULTS\tRTT\tLATENCY\tSOCKET PATH"
	if rates != nil {
		head = "ID\tSTATE\tOK\tREMOTES\tWEIGHT\tRATE\tUDP\tTCP\tSTUCK\tFAULTS\tRTT\tLATENCY\tSOCKET PATH"
	}
	probes := slices.ContainsFunc(bs, func(b debugapi.Backend) bool { return b.Probes != nil })
	if probes {
		head = strings.Replace(head, "\tSOCKET PATH", "\tPROBES\tSOCKET PATH", 1)
	}
	fmt.Fprintln(tw, head)
	for _, b := range bs {
		state := b.State
		if b.Stalled {
			state = "stalled" // its session is up, its queries unanswered
		}
		if b.Admin != "enabled" {
			state += "," + b.Admin
		}
		if b.Slow {
			state += ",slow"
		}
		ok := "no"
		if b.OK {
			ok = "yes"
		}
		rtt := "-"
		if b.Heartbeats > 0 {
			rtt = fmt.Sprintf("%.2fms", b.HeartbeatRTTSeconds*1000)
		}
		// The moving average of the backend's answer times, as bbal
		// measures them.
		lat := "-"
		if b.Answered > 0 {
			lat = fmt.Sprintf("%.2fms", b.LatencySeconds*1000)
		}
		cols := []string{fmt.Sprint(b.ID), state, ok, fmt.Sprint(b.Remotes), fmt.Sprint(b.Weight)}
		if rates != nil {
			cols = append(cols, fmt.Sprintf("%.1f/s", rates[b.ID]))
		}
		cols = append(cols, fmt.Sprint(b.UDPFrames), fmt.Sprint(b.TCPTotal), fmt.Sprint(b.StuckDrops),
			fmt.Sprint(b.FaultsTotal), rtt, lat)
		if probes {
			p := "-"
			if b.Probes != nil {
				p = fmt.Sprintf("%d/%d", b.Probes.Answered, b.Probes.Sent)
			}
			cols = append(cols, p)
		}
		cols = append(cols, b.Path)
		for i := range cols {
			cols[i] = printable(cols[i])
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	tw.Flush()
}

// printRemotes streams the REMOTE PEERS table. The server sends remotes in
// address order (numerically); a tabwriter would hold the whole table to
// align it, so the columns have fixed widths instead.
func printRemotes(ctx context.Context, c *debugapi.Client, o options, w io.Writer) error {
	fmt.Fprintln(w, "REMOTE PEERS")
	const row = "%-15s  %-15s  %-7s  %-6s  %-8s  %-8s  %-6s  %s\n"
	fmt.Fprintf(w, row, "REMOTE IP", "STAND-IN", "BACKEND", "BACKUP", "UDP", "TCP", "DROPS", "LAST SEEN")
	_, err := c.Remotes(ctx, debugapi.RemoteFilter{Backend: o.backend, IP: o.ip, Limited: o.limited}, func(now time.Time, r debugapi.Remote) error {
		standin := r.Standin
		if standin == "" {
			standin = "-"
		}
		_, err := fmt.Fprintf(w, row, printable(r.IP), printable(standin), idOrDash(r.Backend), idOrDash(r.Backup), fmt.Sprint(r.UDP),
			fmt.Sprint(r.TCP), fmt.Sprint(r.Drops), ago(now, r.LastSeen))
		return err
	})
	return err
}

// printable returns s with what a terminal would act on (control
// characters, other non-printable runes) escaped as in Go's %q. The
// server escapes paths already (backend.EscapePath); this keeps any
// other text from the socket, or a server that does not, from reaching
// the terminal raw or breaking the table.
func printable(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strconv.IsPrint(r) {
			b.WriteRune(r)
		} else {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String()
}

func idOrDash(id uint16) string {
	if id == 0 {
		return "-"
	}
	return fmt.Sprint(id)
}

// ago says how long before now t was, to the second.
func ago(now, t time.Time) string {
	d := now.Sub(t).Truncate(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}
