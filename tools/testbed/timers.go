package testbed

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/bbal/bbal/timeouts"
)

// RunTimeouts runs ts's timers on a goroutine of their own until the end
// of the test, and returns ts. Registered before the parts that use it,
// it stops after their own cleanups.
func RunTimeouts(t testing.TB, ts *timeouts.Set) *timeouts.Set {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ts
}

// Replies is a reply batch (a backend.ReplyBatch) that sends nothing and
// counts the replies it is given. It is safe to share between sessions
// and to read from the test.
type Replies struct{ added atomic.Int64 }

// Add counts one reply.
func (r *Replies) Add([]byte, netip.AddrPort) { r.added.Add(1) }

// Flush sends nothing, and fails nothing.
func (r *Replies) Flush() int { return 0 }

// Added returns the replies given so far.
func (r *Replies) Added() int64 { return r.added.Load() }
