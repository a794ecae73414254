package backend

import "fmt"

// Saved is a backend as a process hands it to its successor (see
// [Set.Save]); it travels as JSON.
type Saved struct {
	ID    ID     `json:"id"`
	Path  string `json:"path"`
	Admin string `json:"admin"`
	OK    bool   `json:"ok"`
	// Weight is 0 in a state from before weights: the default.
	Weight int `json:"weight,omitempty"`
}

// Save returns every backend, in ID order, for a successor process.
func (s *Set) Save() []Saved {
	var out []Saved
	for _, b := range s.All() {
		out = append(out, Saved{ID: b.ID(), Path: b.Path(), Admin: b.Admin().String(), OK: b.OK(), Weight: b.Weight()})
	}
	return out
}

// RestoreSaved restores the backends a predecessor process saved, with
// their IDs, admin settings and weights (see Restore). It is for a Set
// not started yet; it stops at the first backend it cannot restore.
func (s *Set) RestoreSaved(saved []Saved) error {
	for _, sb := range saved {
		admin, ok := ParseAdmin(sb.Admin)
		if !ok {
			return fmt.Errorf("backend %d: admin setting %q", sb.ID, sb.Admin)
		}
		if err := s.Restore(sb.ID, sb.Path, admin); err != nil {
			return err
		}
		if sb.Weight != 0 {
			if b := s.Get(sb.ID); b == nil || !b.SetWeight(sb.Weight) {
				return fmt.Errorf("backend %d: weight %d", sb.ID, sb.Weight)
			}
		}
	}
	return nil
}

// WereUp returns the IDs of the saved backends that were ok.
func WereUp(saved []Saved) []ID {
	var ids []ID
	for _, sb := range saved {
		if sb.OK {
			ids = append(ids, sb.ID)
		}
	}
	return ids
}
