package counter

import (
	"sync"
	"testing"
)

func TestStripedSumsItsStripes(t *testing.T) {
	var c Striped
	var wg sync.WaitGroup
	// More writers than stripes: stripe numbers wrap.
	for i := range Stripes + 3 {
		wg.Go(func() {
			for range 1000 {
				c.Add(i, 2)
			}
		})
	}
	wg.Wait()
	if got, want := c.Load(), uint64((Stripes+3)*2000); got != want {
		t.Fatalf("Load %d, want %d", got, want)
	}
	if got := c.Stripe(1); got != 4000 {
		t.Fatalf("stripe 1 (writers 1 and %d): %d, want 4000", Stripes+1, got)
	}
	c.Store(7)
	if c.Load() != 7 || c.Stripe(1) != 0 {
		t.Fatalf("after Store(7): Load %d, stripe 1 %d", c.Load(), c.Stripe(1))
	}
}
