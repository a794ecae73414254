package server

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// dropPrivileges makes the process run as the named user and its
// primary group, with no supplementary groups, after handing it the
// files it must keep using (the debug socket). Since Go 1.16 the set*id
// calls apply to every thread of the process.
func dropPrivileges(name string, owned ...string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("user %q: uid %q, gid %q are not numbers", name, u.Uid, u.Gid)
	}
	if uid == os.Getuid() && gid == os.Getgid() {
		return nil
	}
	for _, path := range owned {
		if err := os.Lchown(path, uid, gid); err != nil {
			return fmt.Errorf("handing %s to %s: %w", path, name, err)
		}
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid {
		return fmt.Errorf("still uid %d, gid %d after dropping to %s", os.Geteuid(), os.Getgid(), name)
	}
	return nil
}
