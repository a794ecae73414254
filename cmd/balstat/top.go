package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// topOptions are balstat top's own flags, which may also come after the
// command: -w SECS, -n COUNT, -j.
func topOptions(o options, args []string) (options, error) {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var watch string
	fs.StringVar(&watch, "w", "", "")
	fs.IntVar(&o.count, "n", o.count, "")
	fs.BoolVar(&o.json, "j", o.json, "")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("top takes -w SECS, -n COUNT and -j, got %q", fs.Args())
	}
	if watch != "" {
		w, err := parseWatch(watch, 0)
		if err != nil {
			return o, err
		}
		o.watch = w
	}
	if o.count < 0 || o.count > 0 && o.watch == 0 {
		return o, errors.New("-n goes with -w and takes a count")
	}
	return o, nil
}

// topLoop prints the busiest clients and questions, once, or every
// o.watch in place.
func topLoop(ctx context.Context, c *debugapi.Client, o options, out io.Writer) error {
	var tick <-chan time.Time
	if o.watch > 0 {
		t := time.NewTicker(o.watch)
		defer t.Stop()
		tick = t.C
	}
	for n := 1; ; n++ {
		t, err := c.Top(ctx)
		if err != nil {
			return err
		}
		var screen bytes.Buffer
		if o.watch > 0 && !o.json {
			screen.WriteString("\x1b[H\x1b[2J") // home, clear
			fmt.Fprintf(&screen, "balstat top: %s, every %v; %s\n\n", o.socket, o.watch, t.Now.Local().Format(time.TimeOnly))
		}
		if o.json {
			printJSON(&screen, t)
		} else {
			printTop(&screen, t)
		}
		if _, err := out.Write(screen.Bytes()); err != nil {
			return err
		}
		if tick == nil || o.count > 0 && n >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		}
	}
}

func printTop(w io.Writer, t debugapi.TopReply) {
	fmt.Fprintf(w, "TOP CLIENTS (queries a second over %gs, from 1 datagram in %d: %d sampled)\n",
		t.WindowSeconds, t.SampleEvery, t.Samples)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REMOTE IP\tQPS\tBACKEND\tBACKUP\tLIMITED\tRATELIMITED\tDROPS")
	for _, c := range t.Clients {
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%d\t%d\n", c.IP, c.QPS, idOrDash(c.Backend), idOrDash(c.Backup),
			map[bool]string{false: "no", true: "yes"}[c.Limited], c.RateLimited, c.Drops)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "TOP QUESTIONS")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QPS\tTYPE\tNAME")
	for _, q := range t.Names {
		fmt.Fprintf(tw, "%.0f\t%s\t%s\n", q.QPS, printable(q.Type), printable(q.Name))
	}
	tw.Flush()
}
