package remotes

import "github.com/bbal/bbal/backend"

// assign applies the assignment rules of the package comment. r's
// shard's lock is held; a remote served by its ok primary, or by its ok
// backup while the primary is down, is served without the counts' lock,
// which the rest takes.
func (t *Table) assign(r *Remote) backend.ID {
	if r.primary != 0 {
		ok, gone := t.cfg.Backends.Status(r.primary)
		switch {
		case ok && r.backup == 0:
			return r.primary
		case !ok && !gone && r.backup != 0:
			if ok, _ := t.cfg.Backends.Status(r.backup); ok {
				return r.backup
			}
		}
	}
	t.cmu.Lock()
	defer t.cmu.Unlock()
	return t.reassign(r)
}

// reassign is assign's part that changes assignments: r's shard's lock
// and the counts' are held.
func (t *Table) reassign(r *Remote) backend.ID {
	b := t.cfg.Picker
	if r.primary != 0 {
		ok, gone := t.cfg.Backends.Status(r.primary)
		switch {
		case gone:
			t.reset(r)
		case ok:
			if r.backup != 0 {
				if l := t.remoteLog(r); l != nil {
					l.Uint16("be_id", uint16(r.primary)).Msg("remote assigned to original primary backend")
				}
				t.setBackup(r, 0)
			}
			return r.primary
		default:
			if r.backup != 0 {
				if ok, _ := t.cfg.Backends.Status(r.backup); ok {
					return r.backup
				}
				t.setBackup(r, 0)
			}
			id := b.Pick(t.primaries)
			if id != 0 {
				if l := t.remoteLog(r); l != nil {
					l.Uint16("be_id", uint16(id)).Msg("remote assigned to new backup backend")
				}
				t.setBackup(r, id)
			}
			return id
		}
	}
	id := b.Pick(t.primaries)
	if id != 0 {
		if l := t.remoteLog(r); l != nil {
			l.Uint16("be_id", uint16(id)).Msg("remote assigned to new primary backend")
		}
		t.setPrimary(r, id)
	}
	t.setBackup(r, 0)
	return id
}

// The per-backend counts change only here, with the assignment they
// count. The remote's shard's lock and the counts' lock are held.

// A change to a remote's assignment once made (its primary moved or
// cleared, its backup set or cleared) ends every reader's cached route
// (RouteCache): the generation moves on.

func (t *Table) setPrimary(r *Remote, id backend.ID) {
	if r.primary != 0 && r.primary != id {
		t.gen.Add(1)
	}
	move(t.primaries, r.primary, id)
	r.primary = id
}

func (t *Table) setBackup(r *Remote, id backend.ID) {
	if r.backup != id {
		t.gen.Add(1)
	}
	move(t.backups, r.backup, id)
	r.backup = id
}

// reset clears both of r's assignments.
func (t *Table) reset(r *Remote) {
	t.setPrimary(r, 0)
	t.setBackup(r, 0)
}

func move(counts map[backend.ID]int, from, to backend.ID) {
	if from != 0 {
		if counts[from]--; counts[from] <= 0 {
			delete(counts, from)
		}
	}
	if to != 0 {
		counts[to]++
	}
}

// Counts is the number of remotes assigned to one backend.
type Counts struct {
	Primary int // remotes whose primary it is
	Backup  int // remotes it serves as a backup
}

// Counts returns the assignment counts of every backend that has any.
func (t *Table) Counts() map[backend.ID]Counts {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	out := make(map[backend.ID]Counts, len(t.primaries))
	for id, n := range t.primaries {
		c := out[id]
		c.Primary = n
		out[id] = c
	}
	for id, n := range t.backups {
		c := out[id]
		c.Backup = n
		out[id] = c
	}
	return out
}
