package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// watchLoop refreshes the display in place every o.watch, like top, with
// each backend's query rate (UDP frames and TCP sessions per second) since
// the refresh before. The remotes are listed only when filtered: a busy
// balancer has too many to redraw.
func watchLoop(ctx context.Context, c *debugapi.Client, o options, out io.Writer) error {
	type sample struct {
		queries uint64
		at      time.Time
	}
	prev := map[uint16]sample{}
	tick := time.NewTicker(o.watch)
	defer tick.Stop()
	for n := 1; ; n++ {
		bs, err := backends(ctx, c, o)
		if err != nil {
			return err
		}
		now := time.Now()
		rates := map[uint16]float64{}
		for _, b := range bs.Backends {
			q := b.UDPFrames + b.TCPTotal
			if p, ok := prev[b.ID]; ok && q >= p.queries {
				rates[b.ID] = float64(q-p.queries) / now.Sub(p.at).Seconds()
			}
			prev[b.ID] = sample{q, now}
		}
		var screen bytes.Buffer
		screen.WriteString("\x1b[H\x1b[2J") // home, clear
		fmt.Fprintf(&screen, "balstat: %s, every %v; %s\n\n", o.socket, o.watch, bs.Now.Local().Format(time.TimeOnly))
		printBackends(&screen, bs.Backends, rates)
		fmt.Fprintln(&screen)
		if o.backend != 0 || o.ip != "" || o.limited {
			if err := printRemotes(ctx, c, o, &screen); err != nil {
				return err
			}
		} else if st, err := c.Stats(ctx); err == nil {
			fmt.Fprintf(&screen, "%d remote peers (-b ID or -r IP lists them)\n", st.Remotes)
		}
		if _, err := out.Write(screen.Bytes()); err != nil {
			return err
		}
		if o.count > 0 && n >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
