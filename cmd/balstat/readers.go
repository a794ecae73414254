package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// readersCommand is balstat readers: the UDP readers of each listen
// address, with their datagrams and share (from GET /v1/stats).
func readersCommand(ctx context.Context, c *debugapi.Client, o options, out io.Writer) error {
	s, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, s.Readers)
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tREADER\tDATAGRAMS\tPER READ\tSHARE\t")
	for _, r := range s.Readers {
		note := ""
		switch {
		case r.Retired:
			note = "retired"
		case !r.Active:
			note = "idle"
		}
		per := 0.0
		if r.Reads > 0 {
			per = float64(r.Datagrams) / float64(r.Reads)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f%%\t%s\n", printable(r.Address), r.Number, r.Datagrams, per, 100*r.Share, note)
	}
	return tw.Flush()
}
