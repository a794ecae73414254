package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/bbal/bbal/cmd/internal/debugapi"
)

// cacheCommand is balstat cache (the figures) and balstat cache flush
// [NAME].
func cacheCommand(ctx context.Context, c *debugapi.Client, o options, args []string, out io.Writer) error {
	if len(args) > 0 { // flush
		name := ""
		if len(args) > 1 {
			name = args[1]
		}
		f, err := c.FlushCache(ctx, name)
		if err != nil {
			return err
		}
		if f.Name != "" {
			fmt.Fprintf(out, "flushed %d answers for %s\n", f.Flushed, printable(f.Name))
		} else {
			fmt.Fprintf(out, "flushed %d answers\n", f.Flushed)
		}
		return nil
	}
	s, err := c.Cache(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, s)
	}
	if !s.Enabled {
		fmt.Fprintln(out, "no answer cache (bbal runs without -c)")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "entries\t%d of %d\n", s.Entries, s.Capacity)
	fmt.Fprintf(tw, "bytes\t%d of %d\n", s.Bytes, s.CapacityBytes)
	fmt.Fprintf(tw, "hit ratio\t%.3f\t(%d hits, %d misses)\n", s.HitRatio, s.Hits, s.Misses)
	fmt.Fprintf(tw, "stale answers\t%d\t(serve-stale limit %d s)\n", s.Stale, s.StaleLimit)
	fmt.Fprintf(tw, "bypassed\t%d\t(queries that cannot use the cache)\n", s.Bypassed)
	fmt.Fprintf(tw, "kept\t%d\t(answers not kept: %d)\n", s.Inserted, s.Rejected)
	fmt.Fprintf(tw, "put out\t%d evicted, %d expired, %d flushed\n", s.Evicted, s.Expired, s.Flushed)
	fmt.Fprintf(tw, "max TTL\t%d s\n", s.MaxTTL)
	return tw.Flush()
}
