//go:build unix

package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// openFile opens name read-only and non-blocking: a FIFO without a writer
// or a device that waits for a carrier does not hold the caller up. For a
// regular file O_NONBLOCK changes nothing.
func openFile(name string, noFollow bool) (*os.File, error) {
	flag := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if noFollow {
		flag |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		if noFollow && errors.Is(err, syscall.ELOOP) { // open(2): O_NOFOLLOW met a link
			return nil, &Error{Path: name, Err: ErrNotRegular, Detail: "a symbolic link"}
		}
		return nil, err
	}
	return f, nil
}

// CheckPrivate applies the ownership rule of [Options.Private] to fi, which
// describes name: owned by the process's effective user or root, and not
// writable by the group or others. The error says how to fix it.
func CheckPrivate(name string, fi fs.FileInfo) error {
	uid, euid, strange := stranger(fi)
	if strange {
		return &Error{Path: name, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"owned by uid %d, neither this process's user (uid %d) nor root; fix: chown %d %s", uid, euid, euid, name)}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return &Error{Path: name, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"writable by its group or others (mode %04o); fix: chmod go-w %s", perm, name)}
	}
	return nil
}

// CheckDir checks a directory that holds private keys the way OpenSSH's
// StrictModes checks ~/.ssh: the directory (after symbolic links) must pass
// [CheckPrivate], and each directory above it, up to the root, must be
// owned by root or the process's user and, if its group or others may
// write it, have the sticky bit (as /tmp has), so that nobody else can
// rename the directory away and put another in its place.
//
// The path is resolved as the kernel resolves it, one component at a time,
// and every directory it passes through is checked: those of the path as
// given, those a symbolic link on the way leads through, and those of the
// resolved path. A symbolic link on the way is as good as the directory it
// is in, with one more rule: in a directory others may write (a sticky
// one, as /tmp), the sticky bit still lets the link's owner replace the
// link, so it must be owned by root or the process's user too.
func CheckDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	real, err := resolveChecked(abs, dir)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &Error{Path: dir, Err: ErrNotRegular, Detail: "not a directory"}
	}
	return CheckPrivate(dir, fi)
}

// maxLinks bounds the symbolic links resolveChecked follows, as Linux's
// limit of 40 does.
const maxLinks = 40

// resolveChecked resolves abs (absolute and clean) as the kernel does,
// following symbolic links, and returns the path it leads to; each
// directory it looks up a name in is checked with checkAncestor, each link
// it follows with checkLink. dir names the path in errors.
func resolveChecked(abs, dir string) (string, error) {
	checked := map[string]bool{}
	rest := strings.Split(abs, "/")
	cur := "/"
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur) // a directory already passed through
			continue
		}
		if !checked[cur] {
			checked[cur] = true
			if err := checkAncestor(cur, dir); err != nil {
				return "", err
			}
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: %w", dir, syscall.ELOOP)
		}
		if err := checkLink(next, fi, cur, dir); err != nil {
			return "", err
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

// stranger reports whether fi's owner is neither the process's effective
// user nor root, with both uids for the message. A FileInfo without a
// Stat_t (not from the OS) has no stranger for owner.
func stranger(fi fs.FileInfo) (uid uint32, euid int, strange bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	euid = os.Geteuid()
	return st.Uid, euid, int(st.Uid) != euid && st.Uid != 0
}

// checkAncestor checks directory d, which the path to dir passes through.
func checkAncestor(d, dir string) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	uid, euid, strange := stranger(fi)
	if strange {
		return &Error{Path: dir, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"the directory above it, %s, is owned by uid %d, neither this process's user (uid %d) nor root, who could replace %s; fix: chown %d %s, or move it elsewhere",
			d, uid, euid, dir, euid, d)}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return &Error{Path: dir, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"the directory above it, %s, is writable by its group or others (mode %04o) without the sticky bit, so they could replace %s; fix: chmod go-w %s, or move it elsewhere",
			d, perm, dir, d)}
	}
	return nil
}

// checkLink checks the symbolic link link (fi its lstat) in directory
// parent, which checkAncestor has passed: in a directory others may write
// (it has the sticky bit, then), the link's owner may replace it, so it
// must be root or the process's user. Elsewhere only the directory's
// owner can replace a link, and a link's own target cannot be changed.
func checkLink(link string, fi fs.FileInfo, parent, dir string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	euid := os.Geteuid()
	if int(st.Uid) == euid || st.Uid == 0 {
		return nil
	}
	pfi, err := os.Lstat(parent)
	if err != nil {
		return err
	}
	if perm := pfi.Mode().Perm(); perm&0o022 != 0 {
		return &Error{Path: dir, Err: ErrNotPrivate, Detail: fmt.Sprintf(
			"the symbolic link %s on its path is owned by uid %d, neither this process's user (uid %d) nor root, in %s, which others may write (mode %04o): that user can point it elsewhere; fix: chown -h %d %s, or use the path it leads to",
			link, st.Uid, euid, parent, perm, euid, link)}
	}
	return nil
}
