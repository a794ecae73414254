package backend

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"github.com/rs/zerolog"
)

// connectFailed logs a failed connect attempt (at debug level when the
// attempt is quiet: see connect). A refusal for want of permission says
// so plainly, with what decides it: the socket's owner, group and mode,
// and the user and groups bbal runs as (connecting takes write
// permission on the socket file).
func (b *Backend) connectFailed(err error) {
	ev := b.logAt(zerolog.ErrorLevel).Err(err).Int64("suppressed", b.held)
	if !errors.Is(err, syscall.EACCES) {
		ev.Msg("failed to connect")
		return
	}
	if fi, serr := os.Stat(b.path); serr == nil {
		ev = ev.Str("socket_mode", fmt.Sprintf("%#o", fi.Mode().Perm()))
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ev = ev.Str("socket_owner", userName(int(st.Uid))).Str("socket_group", groupName(int(st.Gid)))
		}
	}
	groups, _ := os.Getgroups()
	names := make([]string, len(groups))
	for i, g := range groups {
		names[i] = groupName(g)
	}
	ev.Str("bbal_user", userName(os.Geteuid())).Str("bbal_group", groupName(os.Getegid())).
		Strs("bbal_groups", names).
		Msg("permission denied connecting to backend socket (bbal's user cannot write to it)")
}

// userName is "name(uid)", or the bare uid when the user is unknown.
func userName(uid int) string {
	id := strconv.Itoa(uid)
	if u, err := user.LookupId(id); err == nil {
		return u.Username + "(" + id + ")"
	}
	return id
}

// groupName is "name(gid)", or the bare gid when the group is unknown.
func groupName(gid int) string {
	id := strconv.Itoa(gid)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name + "(" + id + ")"
	}
	return id
}
