package backend

import (
	"github.com/rs/zerolog"

	"github.com/bbal/bbal/backend/placement"
)

// Load returns placement's record of the backend (see package
// placement): its weight, whether it is slow, and the figures of its
// queries, which the UDP proxy counts.
func (b *Backend) Load() *placement.Load { return &b.load }

// Outstanding returns the number of the backend's queries waiting for an
// answer.
func (b *Backend) Outstanding() int64 { return b.load.Outstanding() }

// Weight returns the backend's weight.
func (b *Backend) Weight() int { return b.load.Weight() }

// SetWeight sets the backend's weight, 1 to placement.MaxWeight: its
// share of remotes relative to the others'. It reports whether w was in
// range, and logs a change.
func (b *Backend) SetWeight(w int) bool {
	old, ok := b.load.SetWeight(w)
	if ok && old != w {
		b.log.Info().Int("weight", w).Int("old_weight", old).Msg("backend weight changed")
	}
	return ok
}

// Slow reports whether placement found the backend answering far slower
// than its peers at its last check.
func (b *Backend) Slow() bool { return b.load.Slow() }

// Logger returns the backend's logger (with its be_id and be_path).
func (b *Backend) Logger() *zerolog.Logger { return &b.log }
